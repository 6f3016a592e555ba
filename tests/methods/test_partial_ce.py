"""Partial CE, and end-to-end training of ``partial_ce`` and ``agmm`` from synthesised points via the CLI."""

import json

import pytest
import torch
import torch.nn.functional as F

from sparseg.cli import main
from sparseg.config import DataConfig
from sparseg.data import create_dataset_spec, make_synthetic_dataset, sparsify_list
from sparseg.labels import IGNORE, UNLABELED
from sparseg.methods.base import step_generator
from sparseg.methods.partial_ce import partial_cross_entropy, reference_photometric


def test_partial_ce_ignores_unlabeled_and_padding_and_upsamples():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    mask = torch.tensor([[[0, UNLABELED, UNLABELED, 2]] * 4])[..., :4].expand(1, 4, 4).clone()
    mask[0, 3] = IGNORE
    full = F.interpolate(logits, size=(4, 4), mode="bilinear", align_corners=True)
    labeled = mask < 3
    expected = F.cross_entropy(full.permute(0, 2, 3, 1)[labeled], mask[labeled])
    assert torch.allclose(partial_cross_entropy(logits, mask), expected)
    nothing = partial_cross_entropy(logits, torch.full((1, 4, 4), UNLABELED))
    assert nothing.item() == 0 and nothing.requires_grad


def test_reference_photometric_is_seeded_and_stays_in_range():
    images = torch.rand(6, 3, 16, 16)
    a = reference_photometric(images, step_generator(0, 5, "photometric"))
    b = reference_photometric(images, step_generator(0, 5, "photometric"))
    c = reference_photometric(images, step_generator(0, 6, "photometric"))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, images)
    assert a.min() >= 0 and a.max() <= 1


@pytest.fixture(scope="module")
def sparse_data(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("data"), n_train=8, n_val=2, size=32)
    spec = create_dataset_spec(DataConfig(dataset="synthetic", root=str(root)))
    sparsify_list(root / "train.txt", root, spec, "points", 0, root / "points")
    return root


@pytest.mark.parametrize("method", ["partial_ce", "agmm"])
def test_train_eval_predict_from_points(tmp_path, sparse_data, method, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""
out: {tmp_path / 'run'}
data: {{dataset: synthetic, root: {sparse_data}, train_list: points/train.txt, label_format: sparse,
        val_list: val.txt, crop_size: 32, batch_size: 4, workers: 0}}
model: {{encoder: resnet18, stem: plain, width: 8, output_stride: 16, decoder_channels: 16}}
optim: {{base_lr: 0.01}}
train: {{iters: 3, log_every: 1, device: cpu}}
method: {{name: {method}, photometric: {str(method == "agmm").lower()}}}
""")
    assert main(["train", str(cfg)]) == 0
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_keys = set().union(*(r for r in logged if r.get("split", r.get("phase")) != "val"))
    expected = {"pce"} | ({"g2p", "y2g", "proto", "absent"} if method == "agmm" else set())
    assert expected <= train_keys
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run" / "last.pt")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("mIoU: ")
    assert main(["predict", str(tmp_path / "run" / "last.pt"), str(sparse_data / "images" / "val_0000.png"),
                 "--out", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "val_0000.png.png").exists()
