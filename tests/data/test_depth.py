"""Depth input: lookup, manifest checks, normalisation, storage and augmentation alignment (depmatch.md §3)."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from sparseg.config import DataConfig
from sparseg.data import DataError, EvalTransform, TrainTransform, build_dataset, cutmix, make_synthetic_dataset
from sparseg.data.depth import (
    FORMAT_VERSION,
    load_depth_file,
    robust_normalise,
    robust_normalise_array,
    save_depth,
    to_disparity,
)

H, W = 20, 30


def position_dataset(root, depth_format="png16", manifest=True, names=("a", "b")):
    """Images whose red channel is the column (x) ramp and whose stored depth is the same ramp."""
    (root / "images").mkdir(parents=True)
    ramp = np.tile(np.linspace(0, 1, W, dtype=np.float32), (H, 1))
    image = np.stack([np.rint(ramp * 255), np.tile(np.linspace(0, 255, H)[:, None], (1, W)), np.zeros((H, W))], -1)
    records = {}
    for name in names:
        Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"{name}.png")
        suffix = ".png" if depth_format == "png16" else ".npy"
        save_depth(root / "depth" / "images" / f"{name}{suffix}", ramp, depth_format)
        records[f"images/{name}"] = {"q_lo": 2.0, "q_hi": 6.0, "size": [H, W]}
    if manifest:
        (root / "depth" / "manifest.json").write_text(json.dumps({
            "format_version": FORMAT_VERSION, "estimator": "test", "input_size": 518, "kind": "disparity",
            "format": depth_format, "percentiles": [1.0, 99.0], "normalised": True, "images": records,
        }))
    (root / "train.txt").write_text("".join(f"images/{n}.png\n" for n in names))
    return root


def dataset(root, transform=None, **data):
    cfg = DataConfig(dataset="folder", num_classes=2, root=str(root), train_list="train.txt", depth_dir="depth", **data)
    return build_dataset(cfg, "train_list", labeled=False, transform=transform or EvalTransform())


def test_depth_follows_the_image_geometry(tmp_path):
    root = position_dataset(tmp_path)
    data = dataset(root, TrainTransform((16, 16), scale_range=(0.5, 1.5), flip=True))
    flipped = 0
    for seed in range(12):
        item = data[(0, seed)]
        valid = item["valid"]
        assert item["depth"].dtype == torch.float32 and torch.equal(item["depth_valid"], valid)
        red = item["image"][0]
        assert (item["depth"] - red)[valid].abs().max() < 0.02  # depth encodes the column like the image
        row = red[valid.all(1)][0] if valid.all(1).any() else red[0, valid[0]]
        flipped += bool(row[0] > row[-1])
    assert 0 < flipped < 12  # both orientations were drawn


def test_cutmix_pastes_depth_with_the_image_box(tmp_path):
    root = position_dataset(tmp_path)
    items = [dataset(root)[i] for i in range(2)]
    image = torch.stack([it["image"] for it in items])
    image[1] = image[1].flip(-1)  # partner differs
    depth = torch.stack([it["depth"] for it in items])
    depth[1] = depth[1].flip(-1)
    boxes = torch.zeros(2, H, W, dtype=torch.bool)
    boxes[:, 5:12, 3:20] = True
    assert (cutmix(depth, boxes) - cutmix(image, boxes)[:, 0]).abs().max() < 0.01


def test_synthetic_depth_through_the_basename_rule_and_val_without_depth(tmp_path):
    root = make_synthetic_dataset(tmp_path / "syn", n_train=3, n_val=1, size=32)
    cfg = DataConfig(dataset="synthetic", root=str(root), train_list="train.txt", val_list="val.txt", depth_dir="depth")
    item = build_dataset(cfg, "train_list", labeled=True, transform=EvalTransform())[0]
    assert item["depth"].shape == (32, 32) and item["depth_valid"].all()
    assert item["depth"].min() == 0 and item["depth"].max() == 1  # robust-normalised on load (no manifest)
    assert "depth" not in build_dataset(cfg, "val_list", labeled=True, transform=EvalTransform())[0]


def test_missing_depth_is_an_error_naming_the_image_unless_skipped(tmp_path, caplog):
    root = position_dataset(tmp_path, manifest=False)
    (root / "depth" / "images" / "b.png").unlink()
    with pytest.raises(DataError, match=r"images/b\.png: depth map not found .*depth/images/b\.png"):
        dataset(root)
    with caplog.at_level(logging.WARNING):
        data = dataset(root, depth_missing="skip")
    assert "1 image(s) have no depth map" in caplog.text
    assert not data[1]["depth_valid"].any() and data[0]["depth_valid"].all()


def test_manifest_mismatches_name_the_file(tmp_path):
    root = position_dataset(tmp_path)
    manifest_path = root / "depth" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["images"]["images/b"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"depth/images/b\.png: not listed in .*manifest\.json"):
        dataset(root)
    manifest["images"]["images/b"] = {"q_lo": 0.0, "q_hi": 1.0, "size": [H + 1, W]}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"depth/images/b\.png: .*records size"):
        dataset(root)[1]
    manifest_path.write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(DataError, match=r"manifest\.json: depth manifest format_version 99"):
        dataset(root)


@pytest.mark.parametrize("fmt", ["png16", "npy"])
def test_storage_round_trip_and_raw_units(tmp_path, fmt):
    root = position_dataset(tmp_path, depth_format=fmt)
    ramp = np.tile(np.linspace(0, 1, W, dtype=np.float32), (H, 1))
    stored = load_depth_file(root / "depth" / "images" / ("a.png" if fmt == "png16" else "a.npy"))
    assert np.abs(stored - ramp).max() <= 0.5 / 65535 + 1e-7
    raw = dataset(root, depth_norm="raw")[0]["depth"].numpy()  # q_lo + d̃ (q_hi − q_lo) from the manifest
    assert np.abs(raw - (2.0 + 4.0 * ramp)).max() <= 4.0 / 65535


def test_robust_normalisation_removes_the_estimator_scale():
    d = np.random.default_rng(0).gamma(2.0, 1.5, (40, 50))
    base, q_lo, q_hi = robust_normalise_array(d)
    np.testing.assert_allclose((q_lo, q_hi), np.percentile(d, [1, 99]), rtol=1e-12)
    assert base.min() == 0 and base.max() == 1
    np.testing.assert_allclose(robust_normalise_array(10 * d + 3)[0], base, atol=1e-6)
    np.testing.assert_allclose(robust_normalise_array(-0.1 * d + 3)[0], 1 - base, atol=1e-6)  # |Δd̃| unchanged
    # only the valid pixels set the range: a far outlier outside them changes nothing inside
    valid = torch.ones(d.shape, dtype=torch.bool)
    valid[0, 0] = False
    spiked = torch.from_numpy(d).clone()
    spiked[0, 0] = 1e6
    inside = robust_normalise(spiked, valid)[0][valid]
    np.testing.assert_allclose(inside, robust_normalise(torch.from_numpy(d), valid)[0][valid], atol=1e-12)
    near, far = np.array([[0.5]]), np.array([[20.0]])
    assert to_disparity(near, "depth") > to_disparity(far, "depth")  # --kind depth reverses the order
    assert to_disparity(near, "disparity") < to_disparity(far, "disparity")
