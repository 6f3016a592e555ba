"""``sparseg depth`` on a tiny random-initialised Depth Anything model saved locally (no downloads)."""

import json

import numpy as np
import pytest

from sparseg.cli import main
from sparseg.config import DataConfig
from sparseg.data import EvalTransform, build_dataset, make_synthetic_dataset

transformers = pytest.importorskip("transformers")


def test_depth_command_writes_maps_manifest_and_calibration(tmp_path, tiny_estimator, capsys):
    root = make_synthetic_dataset(tmp_path / "data", n_train=3, n_val=1, size=32)
    out = root / "estimated"
    args = ["depth", str(root / "train.txt"), "--model", str(tiny_estimator), "--out", str(out), "--input-size", "28",
            "--device", "cpu"]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["estimator"] == str(tiny_estimator) and manifest["input_size"] == 28
    assert sorted(manifest["images"]) == [f"images/train_000{i}" for i in range(3)]
    record = manifest["images"]["images/train_0000"]
    assert record["size"] == [32, 32] and record["q_hi"] >= record["q_lo"]
    assert "wrote 3 depth maps" in capsys.readouterr().out

    cfg = DataConfig(dataset="synthetic", root=str(root), train_list="train.txt", depth_dir="estimated")
    item = build_dataset(cfg, "train_list", labeled=True, transform=EvalTransform())[0]
    assert item["depth"].shape == (32, 32) and 0 <= item["depth"].min() <= item["depth"].max() <= 1

    assert main(args[:-4] + ["--input-size", "42", "--device", "cpu"]) == 2  # other settings, same folder
    assert "written with {'input_size': 28}" in capsys.readouterr().err

    calibration_dir = tmp_path / "calibration"
    assert main([*args[:5], str(calibration_dir), "--input-size", "28", "--device", "cpu", "--calibrate"]) == 0
    calibration = json.loads((calibration_dir / "calibration.json").read_text())
    assert calibration["unit"] == pytest.approx(float(np.median(list(calibration["ranges"].values()))))
    assert not list(calibration_dir.rglob("*.png"))  # calibration writes no maps
    assert "depmatch.unit:" in capsys.readouterr().out


def test_16_bit_images_reach_the_estimator_scaled_as_in_training(tmp_path, monkeypatch):
    from PIL import Image

    from sparseg import depth_estimation

    Image.fromarray(np.full((6, 8), 32896, np.uint16)).save(tmp_path / "d.png")  # 32896 * 255/65535 = 128
    (tmp_path / "list.txt").write_text("d.png\n")
    seen = []
    monkeypatch.setattr(depth_estimation, "load_estimator", lambda model, device: (None, None))
    monkeypatch.setattr(depth_estimation, "predict_disparity",
                        lambda processor, estimator, image, size, kind: seen.append(np.asarray(image)) or
                        np.ones((image.height, image.width), np.float32))
    assert main(["depth", str(tmp_path / "list.txt"), "--model", "stub", "--out", str(tmp_path / "out")]) == 0
    assert seen[0].shape == (6, 8, 3) and (seen[0] == 128).all()  # not clipped to 255
