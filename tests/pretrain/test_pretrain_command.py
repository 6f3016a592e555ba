"""`sparseg pretrain` then `sparseg train` from its file, through the CLI on tiny generated data."""

import os
import subprocess
import sys

import torch
import yaml

from sparseg.cli import main
from sparseg.data import make_synthetic_dataset

TINY = {"encoder": "resnet18", "stem": "plain", "width": 8, "decoder_channels": 16}


def write_config(path, root, method, out, **model):
    path.write_text(yaml.safe_dump({
        "seed": 0, "out": str(out),
        "data": {"dataset": "synthetic", "root": str(root), "train_list": "train.txt", "val_list": "val.txt",
                 "crop_size": 32, "batch_size": 4, "workers": 0},
        "model": {**TINY, **model}, "optim": {"base_lr": 0.001},
        "train": {"iters": 2, "eval_every": 0, "log_every": 1, "device": "cpu"},
        "method": {"name": method},
    }))
    return str(path)


def test_pretrain_then_train_from_its_file(tmp_path, capsys):
    root = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=2, size=32)
    pretrain = write_config(tmp_path / "pretrain.yaml", root, "ddep", tmp_path / "pre")
    assert main(["pretrain", pretrain]) == 0
    out = capsys.readouterr().out
    assert "probe mIoU:" in out and str(tmp_path / "pre" / "pretrained.pt") in out
    pretrained = torch.load(tmp_path / "pre" / "pretrained.pt", weights_only=True)["state_dict"]

    finetune = write_config(tmp_path / "train.yaml", root, "supervised", tmp_path / "ft",
                            pretrained=str(tmp_path / "pre" / "pretrained.pt"), pretrained_rescale=False)
    assert main(["train", finetune, "--set", "train.iters=1", "optim.base_lr=1e-12"]) == 0
    tuned = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)["method"]
    # one step at a vanishing learning rate: the weights are still the pretrained ones
    assert torch.allclose(tuned["model.encoder.conv1.weight"], pretrained["encoder.conv1.weight"], atol=1e-9)
    assert torch.allclose(tuned["model.fuse.0.weight"], pretrained["fuse.0.weight"], atol=1e-9)


def test_each_command_refuses_the_other_kind_of_method(tmp_path, capsys):
    root = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=2, size=32)
    assert main(["train", write_config(tmp_path / "a.yaml", root, "ddep", tmp_path / "a")]) == 2
    assert "use `sparseg pretrain`" in capsys.readouterr().err
    assert main(["pretrain", write_config(tmp_path / "b.yaml", root, "supervised", tmp_path / "b")]) == 2
    assert "pretraining methods" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_pretrain_runs_under_torchrun_with_unused_class_heads(tmp_path):
    """Two gloo processes: DDP must be told that the class heads get no gradient while pretraining."""
    root = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=2, size=32)
    config = write_config(tmp_path / "pretrain.yaml", root, "ddep", tmp_path / "pre")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "sparseg", "pretrain", config],
        check=False, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 process(es)" in run.stderr
    assert torch.load(tmp_path / "pre" / "pretrained.pt", weights_only=True)["iteration"] == 2


def test_pretrain_on_a_plain_image_folder(tmp_path, monkeypatch):
    """No list and no masks: ``data.train_list`` names the folder (``.``: the root, not the working folder)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.png", "street/c.png", "street/d.jpg"):
        (tmp_path / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "photos" / name)
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump({
        "seed": 0, "out": str(tmp_path / "pre"),
        "data": {"dataset": "folder", "num_classes": 2, "root": str(tmp_path / "photos"), "train_list": ".",
                 "crop_size": 32, "batch_size": 4, "workers": 0},
        "model": TINY, "optim": {"base_lr": 0.001},
        "train": {"iters": 1, "eval_every": 0, "log_every": 1, "device": "cpu"},
        "method": {"name": "mim", "patch": 8},
    }))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # an empty working folder: "." must not mean it
    assert main(["pretrain", str(config)]) == 0
    assert torch.load(tmp_path / "pre" / "pretrained.pt", weights_only=True)["iteration"] == 1
