"""Synthetic dataset: layout, determinism, idempotence, depth."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from sparseg.config import DataConfig
from sparseg.data import SYNTHETIC_CLASSES, EvalTransform, build_dataset, make_synthetic_dataset

SMALL = {"n_train": 6, "n_val": 2, "size": 32}


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def test_layout_and_loadable(tmp_path: Path):
    root = make_synthetic_dataset(tmp_path / "syn", **SMALL)
    train = (root / "train.txt").read_text().splitlines()
    assert len(train) == 6 and len((root / "val.txt").read_text().splitlines()) == 2
    assert train[0] == "images/train_0000.png masks/train_0000.png"
    assert json.loads((root / "manifest.json").read_text())["classes"] == list(SYNTHETIC_CLASSES)
    assert read(root / "masks/train_0000.png").dtype == np.uint8
    assert read(root / "depth/train_0000.png").dtype == np.uint16
    cfg = DataConfig(dataset="synthetic", root=str(root), train_list="train.txt")
    item = build_dataset(cfg, "train_list", True, EvalTransform())[0]
    assert item["image"].shape == (3, 32, 32) and int(item["mask"].max()) < len(SYNTHETIC_CLASSES)


def test_deterministic_and_idempotent(tmp_path: Path):
    a = make_synthetic_dataset(tmp_path / "a", **SMALL)
    b = make_synthetic_dataset(tmp_path / "b", **SMALL)
    assert files(a) == files(b)
    stamp = (a / "images/train_0000.png").stat().st_mtime_ns
    make_synthetic_dataset(a, **SMALL)
    assert (a / "images/train_0000.png").stat().st_mtime_ns == stamp
    make_synthetic_dataset(a, **{**SMALL, "seed": 1})
    assert json.loads((a / "manifest.json").read_text())["seed"] == 1
    assert files(a)["images/train_0000.png"] != files(b)["images/train_0000.png"]


def test_depth_is_nearer_on_objects_and_classes_vary(tmp_path: Path):
    root = make_synthetic_dataset(tmp_path / "syn", n_train=12, n_val=1, size=32)
    seen = set()
    for i in range(12):
        mask = read(root / f"masks/train_{i:04d}.png")
        depth = read(root / f"depth/train_{i:04d}.png").astype(np.int64)
        objects = mask > 0
        assert objects.any()
        ground = np.rint((0.1 + 0.7 * np.arange(32) / 31) * 65535)[:, None].repeat(32, 1)  # near at the bottom
        assert np.abs(depth[~objects] - ground[~objects]).max() <= 1
        assert (depth[objects] > ground[objects]).all()
        seen |= set(np.unique(mask).tolist())
    assert seen == set(range(len(SYNTHETIC_CLASSES)))
