"""FixMatch with the DepMatch plug-in, end to end on tiny synthetic data with its procedural depth."""

import json
import math

import pytest
import yaml

from sparseg.build import resolve
from sparseg.config import ConfigError, config_from_dict
from sparseg.data import create_dataset_spec, make_synthetic_dataset, write_splits
from sparseg.demo import DEMO_RECIPES, DemoRecipe, run_demo
from sparseg.engine.trainer import train


def test_fixmatch_with_depmatch_trains(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", n_train=16, n_val=2, size=32)
    raw = {
        "out": str(tmp_path / "run"),
        "data": {"dataset": "synthetic", "root": str(root), "labeled_list": "split/labeled.txt",
                 "unlabeled_list": "split/unlabeled.txt", "val_list": "val.txt", "crop_size": 32, "batch_size": 2,
                 "workers": 0, "depth_dir": "depth"},
        "model": {"encoder": "resnet18", "stem": "plain", "width": 8, "decoder_channels": 16},
        "train": {"iters": 1, "log_every": 1, "device": "cpu"},
        "method": {"name": "fixmatch", "depmatch": {"unit": 7.0}},
    }
    write_splits(root / "train.txt", root, create_dataset_spec(config_from_dict(raw).data), "1/4", 0, root / "split")
    train(*resolve(config_from_dict(raw)))
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(logged["loss"]) and logged["cddp"] > 0 and logged["uldr"] > 0


def test_fixmatch_with_online_depth_trains_without_depth_maps(tmp_path, tiny_estimator):
    """depth_source: online runs the estimator in the loop; no data.depth_dir, and nothing of it is checkpointed."""
    import torch

    root = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=1, size=28)
    raw = {
        "out": str(tmp_path / "run"),
        "data": {"dataset": "synthetic", "root": str(root), "labeled_list": "split/labeled.txt",
                 "unlabeled_list": "split/unlabeled.txt", "val_list": "val.txt", "crop_size": 28, "batch_size": 2,
                 "workers": 0},
        "model": {"encoder": "resnet18", "stem": "plain", "width": 8, "decoder_channels": 16},
        "train": {"iters": 1, "log_every": 1, "device": "cpu", "amp": "bf16"},
        "method": {"name": "fixmatch", "depmatch": {
            "depth_source": "online", "estimator": str(tiny_estimator), "unit": 7.0,
            "cddp": {"grid_stride": 4}, "uldr": {"grid_stride": 4}}},
    }
    write_splits(root / "train.txt", root, create_dataset_spec(config_from_dict(raw).data), "1/4", 0, root / "split")
    train(*resolve(config_from_dict(raw)))
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(logged["loss"]) and logged["cddp"] > 0 and logged["uldr"] > 0
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["method"]
    assert state and not any("estimator" in key or "backbone.embeddings" in key for key in state)


def test_demo_rejects_an_unknown_plugin():
    with pytest.raises(ConfigError, match="unknown plug-in 'depth'"):
        run_demo("fixmatch+depth")


@pytest.mark.slow
def test_demo_fixmatch_with_depmatch(tmp_path, monkeypatch):
    monkeypatch.setitem(DEMO_RECIPES, "semi", DemoRecipe({"n_train": 64, "n_val": 2, "size": 32}, 1))
    results = run_demo("fixmatch+depmatch", out=tmp_path / "demo", iters=1)
    assert set(results) == {"supervised", "fixmatch+depmatch"}
    logged = json.loads((tmp_path / "demo" / "fixmatch+depmatch" / "metrics.jsonl").read_text().splitlines()[0])
    assert "cddp" in logged and "uldr" in logged
    config = yaml.safe_load((tmp_path / "demo" / "fixmatch+depmatch" / "config.yaml").read_text())
    assert config["method"]["depmatch"]["cddp"]["feat_norm"] == "l2"  # measured choice for DeepLabV3+
