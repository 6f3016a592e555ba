"""Hostile inputs end in one clear error naming the file or key, and nothing is written over."""

import shutil

import numpy as np
import pytest
from PIL import Image

from sparseg.cli import main
from sparseg.data import make_synthetic_dataset


@pytest.fixture()
def setup(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=2, size=32, seed=0)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""
out: {tmp_path / 'run'}
data: {{dataset: synthetic, root: {root}, train_list: train.txt, val_list: val.txt,
        crop_size: 32, batch_size: 4, workers: 0}}
model: {{encoder: resnet18, stem: plain, width: 8, output_stride: 16, decoder_channels: 16}}
train: {{iters: 4, eval_every: 2, log_every: 1, device: cpu}}
""")
    # a first run: its checkpoint must survive every failure below
    assert main(["train", str(cfg)]) == 0
    last = tmp_path / "run" / "last.pt"
    shutil.copy(last, tmp_path / "good.pt")
    return root, cfg, last, tmp_path / "good.pt"


def first_train_image(root):
    return root / (root / "train.txt").read_text().split()[0]


def first_train_mask(root):
    return root / (root / "train.txt").read_text().split()[1]


def corrupt_truncated(root):
    path = first_train_image(root)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path.name


def corrupt_mask_size(root):
    path = first_train_mask(root)
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(path)
    return path.name


def corrupt_label_values(root):
    path = first_train_mask(root)
    mask = np.zeros((32, 32), np.uint8)
    mask[0, 0] = 9
    Image.fromarray(mask).save(path)
    return "9"


def corrupt_empty_split(root):
    (root / "train.txt").write_text("")
    return "train.txt"


def corrupt_duplicate_line(root):
    lines = (root / "train.txt").read_text().splitlines()
    (root / "train.txt").write_text("\n".join(lines + [lines[0]]))
    return f"train.txt:{len(lines) + 1}"


@pytest.mark.parametrize("corrupt", [corrupt_truncated, corrupt_mask_size, corrupt_label_values,
                                     corrupt_empty_split, corrupt_duplicate_line])
def test_bad_data_stops_training_without_touching_checkpoint(setup, capsys, corrupt):
    root, cfg, last, good = setup
    named = corrupt(root)
    capsys.readouterr()
    # a loader worker process too: its errors must arrive as the same one line
    assert main(["train", str(cfg), "--overwrite", "--set", "train.iters=8", "data.workers=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and named in err and "Traceback" not in err
    assert last.read_bytes() == good.read_bytes()


def test_unknown_config_key(setup, capsys):
    _, cfg, last, good = setup
    assert main(["train", str(cfg), "--resume", "--set", "optim.lr=0.1"]) == 2
    assert "unknown config key 'optim.lr'" in capsys.readouterr().err
    assert last.read_bytes() == good.read_bytes()


def test_checkpoint_from_another_model_or_class_count(setup, capsys, tmp_path):
    _root, cfg, last, good = setup
    assert main(["train", str(cfg), "--resume", "--set", "train.iters=4", "model.width=16"]) == 2
    assert "another model or class count" in capsys.readouterr().err
    assert main(["train", str(cfg), "--resume", "--set", "data.dataset=folder", "data.num_classes=3"]) == 2
    assert "another model or class count" in capsys.readouterr().err
    assert last.read_bytes() == good.read_bytes()
    # scoring a dataset with another class count
    assert main(["eval", str(last), "--set", "data.dataset=camvid"]) == 2
    assert "classes" in capsys.readouterr().err


def test_nonfinite_loss_stops_or_skips(setup, capsys, monkeypatch):
    _, cfg, last, good = setup
    from sparseg.methods import supervised

    real = supervised.cross_entropy
    monkeypatch.setattr(supervised, "cross_entropy", lambda logits, target: real(logits, target) * float("nan"))
    assert main(["train", str(cfg), "--resume", "--set", "train.iters=6"]) == 2
    err = capsys.readouterr().err
    assert "written for 4 iterations" in err  # resuming needs the same schedule: start a longer one
    assert main(["train", str(cfg), "--overwrite", "--set", "train.iters=4"]) == 2
    err = capsys.readouterr().err
    assert "non-finite loss at iteration 0: loss = nan, sup = nan" in err
    assert last.read_bytes() == good.read_bytes()
    assert main(["train", str(cfg), "--overwrite", "--set", "train.iters=4", "train.on_nonfinite=skip"]) == 0
    import torch

    assert torch.load(last, weights_only=False)["skipped_steps"] == 4
