"""Feature clustering analysis: scores, sampling, plot, and the checkpoint entry point."""

import json

import numpy as np
import pytest
import torch

from sparseg.build import resolve
from sparseg.config import config_from_dict
from sparseg.engine.trainer import train
from sparseg.eval.analyze import cluster_scores, sample_features


def test_scores_prefer_separated_clusters():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 100)
    centres = np.eye(3, 8) * 5
    separated = centres[labels] + rng.normal(size=(300, 8))
    mixed = rng.normal(size=(300, 8))
    s_sep, ch_sep, db_sep = cluster_scores(separated, labels)
    s_mix, ch_mix, db_mix = cluster_scores(mixed, labels)
    assert s_sep > s_mix and ch_sep > ch_mix and db_sep < db_mix
    with pytest.raises(ValueError, match="two classes"):
        cluster_scores(separated, np.zeros(300, dtype=int))


class StubModel(torch.nn.Module):
    """``fts`` at stride 4 whose channels one-hot encode the label under each pixel."""

    def forward(self, x):
        fts = torch.nn.functional.avg_pool2d(x, 4)  # channel c = 1 where the image shows class c
        return {"fts": fts, "pred": fts}


def test_sampling_ignores_255_and_reads_labels_at_feature_resolution():
    items = []
    for i in range(3):
        mask = torch.full((16, 16), 255)
        mask[:, :8] = i % 2
        image = torch.nn.functional.one_hot(mask.clamp_max(2), 3).permute(2, 0, 1).float()
        items.append({"image": image, "mask": mask})
    eval_cfg = config_from_dict({}).eval
    features, labels = sample_features(StubModel(), items, eval_cfg, samples=20, seed=0, device="cpu")
    assert len(labels) == 20 and set(labels.tolist()) <= {0, 1}
    assert np.allclose(features.argmax(1), labels)  # each feature sits on its own label
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0)


def test_run_analyze_on_a_checkpoint(tmp_path, capsys):
    from sparseg.data import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=4, size=32)
    raw = {
        "out": str(tmp_path / "run"),
        "data": {"dataset": "synthetic", "root": str(root), "train_list": "train.txt", "val_list": "val.txt",
                 "crop_size": 32, "batch_size": 4, "workers": 0},
        "model": {"encoder": "resnet18", "stem": "plain", "width": 8, "decoder_channels": 16},
        "train": {"iters": 2, "log_every": 1, "device": "cpu"},
    }
    train(*resolve(config_from_dict(raw)))
    capsys.readouterr()
    from sparseg.cli import main

    assert main(["analyze", str(tmp_path / "run" / "last.pt"), "--samples", "200",
                 "--out", str(tmp_path / "analysis")]) == 0
    printed = capsys.readouterr().out
    for name in ("silhouette", "calinski_harabasz", "davies_bouldin"):
        assert f"{name}: " in printed
    saved = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    assert f"silhouette: {saved['silhouette']:.4f}" in printed and -1 <= saved["silhouette"] <= 1
    assert saved["num_pixels"] == 200 and sum(saved["pixels_per_class"].values()) == 200
    assert (tmp_path / "analysis" / "embedding.png").stat().st_size > 1000
