"""`sparseg pseudo-label`: the offline bias fit, the written labels and lists, and the refusals before any work."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sparseg.cli import main
from sparseg.data import make_synthetic_dataset
from sparseg.labels import IGNORE
from sparseg.pseudo_label import fit_bias, fit_thresholds, pseudo_labels


def test_hard_share_fit_brings_the_argmax_shares_to_the_prior():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 3, generator=g)
    logits[:, 2] -= 2.5  # class 2 almost never wins
    log_probs = logits.log_softmax(1)
    prior = torch.tensor([0.4, 0.4, 0.2])
    before = torch.bincount(log_probs.argmax(1), minlength=3) / 4000
    bias = fit_bias(log_probs, prior, "hard_share", updates=30)
    after = torch.bincount((log_probs + bias).argmax(1), minlength=3) / 4000
    assert before[2] < 0.05 and abs(after[2] - 0.2) < 0.03
    assert torch.equal(fit_bias(log_probs, prior, "none"), torch.zeros(3))


def test_pseudo_labels_ignore_unsure_pixels():
    probs = torch.tensor([[0.9, 0.5], [0.1, 0.5]])[:, None, :]  # [K=2, H=1, W=2]
    labels = pseudo_labels(probs, torch.zeros(2), torch.tensor([0.6, 0.6]))
    assert labels.tolist() == [[0, IGNORE]]
    shifted = pseudo_labels(probs, torch.tensor([0.0, 3.0]), torch.zeros(2))  # b favours class 1
    assert shifted.tolist() == [[1, 1]]
    assert pseudo_labels(probs, torch.zeros(2), torch.tensor([0.4, 0.6])).tolist() == [[0, 0]]  # per class


def test_per_class_thresholds_keep_an_unsure_class_at_the_kept_share():
    confidence = torch.cat([torch.linspace(0.8, 0.99, 90), torch.linspace(0.55, 0.65, 10)])
    second = torch.where(torch.arange(100) < 90, 1.0, 0.0)  # classes 0 (sure) and 1 (unsure) win in turn
    probs = torch.stack([torch.where(second.bool(), confidence, 1 - confidence),
                         torch.where(second.bool(), 1 - confidence, confidence), torch.full((100,), 1e-9)], 1)
    log_probs = probs.log()
    bias = torch.zeros(3)
    assert fit_thresholds(log_probs, bias, 0.7, per_class=False).tolist() == pytest.approx([0.7] * 3)
    thresholds = fit_thresholds(log_probs, bias, 0.7, per_class=True)  # 90 % pass τ overall
    assert thresholds[0] == pytest.approx(0.7) and thresholds[2] == pytest.approx(0.7)  # no class-2 pixel
    kept = (probs.max(1).values >= thresholds[probs.argmax(1)]) & (probs.argmax(1) == 1)
    assert int(kept.sum()) == 9  # the 9 most confident of the 10 class-1 pixels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pl")
    root = make_synthetic_dataset(tmp / "data", n_train=8, n_val=2, size=32, seed=0)
    lines = (root / "train.txt").read_text().splitlines()
    (root / "labeled.txt").write_text("\n".join(lines[:4]) + "\n")
    (root / "unlabeled.txt").write_text("\n".join(line.split()[0] for line in lines[4:]) + "\n")
    cfg = tmp / "cfg.yaml"
    cfg.write_text(f"""
out: {tmp / 'run'}
data: {{dataset: synthetic, root: {root}, train_list: labeled.txt, val_list: val.txt, crop_size: 32,
        batch_size: 4, workers: 0}}
model: {{encoder: resnet18, stem: plain, width: 8, output_stride: 16, decoder_channels: 16}}
train: {{iters: 2, device: cpu}}
""")
    assert main(["train", str(cfg)]) == 0
    return root, tmp / "run" / "last.pt"


def test_command_writes_labels_lists_and_manifest_that_train(trained, tmp_path, capsys):
    root, checkpoint = trained
    out = tmp_path / "pl"
    assert main(["pseudo-label", str(checkpoint), "unlabeled.txt", "--out", str(out), "--threshold", "0.2",
                 "--per-class"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["per_class"] and all(t <= 0.2 + 1e-6 for t in manifest["class_thresholds"])
    assert manifest["align"] == "hard_share" and manifest["num_images"] == 4 and manifest["labeled"] == "labeled.txt"
    assert abs(sum(manifest["prior"]) - 1) < 1e-6
    pairs = [line.split() for line in (out / "pseudo.txt").read_text().splitlines()]
    assert len(pairs) == 4
    for image, mask in pairs:
        labels = np.asarray(Image.open(mask))
        assert labels.shape == np.asarray(Image.open(image)).shape[:2]
        assert set(np.unique(labels)) <= {*range(manifest["prior"].__len__()), IGNORE}
    assert len((out / "train.txt").read_text().splitlines()) == 8  # the 4 labeled pairs, then the 4 pseudo ones
    assert "data.train_list=" in capsys.readouterr().out
    run_cfg = tmp_path / "student.yaml"
    run_cfg.write_text(f"""
out: {tmp_path / 'student'}
data: {{dataset: synthetic, root: {root}, train_list: {out / 'train.txt'}, crop_size: 32, batch_size: 4,
        workers: 0}}
model: {{encoder: resnet18, stem: plain, width: 8, output_stride: 16, decoder_channels: 16}}
train: {{iters: 1, device: cpu}}
""")
    assert main(["train", str(run_cfg)]) == 0


def test_command_refuses_to_overwrite_inputs_or_outputs(trained, tmp_path, capsys):
    root, checkpoint = trained
    before = {p: p.read_bytes() for p in root.rglob("*.png")}
    # --out = the data root: each image's pseudo-label would replace the image itself
    assert main(["pseudo-label", str(checkpoint), "unlabeled.txt", "--out", str(root)]) == 2
    assert "is an input" in capsys.readouterr().err
    assert all(p.read_bytes() == data for p, data in before.items())
    out = tmp_path / "pl"
    assert main(["pseudo-label", str(checkpoint), "unlabeled.txt", "--out", str(out), "--align", "none"]) == 0
    capsys.readouterr()
    assert main(["pseudo-label", str(checkpoint), "unlabeled.txt", "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["pseudo-label", str(checkpoint), "unlabeled.txt", "--out", str(out), "--overwrite"]) == 0
    assert main(["pseudo-label", str(checkpoint), "unlabeled.txt", "--out", str(out), "--threshold", "2"]) == 2
