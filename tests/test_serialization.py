"""Loading a checkpoint or an encoder weights file never runs code from it; files are replaced atomically."""

import io
import os

import pytest
import torch

from sparseg.cli import main
from sparseg.engine.checkpoint import FORMAT_VERSION
from sparseg.serialization import safe_torch_load, write_atomic


class CreatesFile:
    """Unpickling this object creates ``path``: the stand-in for any code an attacker could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (io.open, (self.path, "w"))


def evil_file(path, marker, **contents):
    torch.save({**contents, "payload": CreatesFile(marker)}, path)
    return path


def assert_would_run_code(path, marker):
    """The crafted file really is hostile: an unrestricted load creates the marker."""
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()


def test_safe_torch_load_refuses_without_unpickling(tmp_path):
    marker = tmp_path / "marker"
    path = evil_file(tmp_path / "evil.pt", marker, w=torch.zeros(2))
    with pytest.raises(KeyError) as err:
        safe_torch_load(path, KeyError, "why")
    assert str(err.value) == (f"'{path}: refused to load: it contains objects other than tensors and plain data "
                              "(why); not loaded'")
    assert not marker.exists()
    assert_would_run_code(path, marker)
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(2), "t": (1, "a", None, 2.5), "l": [1]}, plain)
    assert safe_torch_load(plain, KeyError)["t"] == (1, "a", None, 2.5)


def test_eval_refuses_a_checkpoint_that_would_run_code(tmp_path, capsys):
    marker = tmp_path / "marker"
    path = evil_file(tmp_path / "evil.pt", marker, format_version=FORMAT_VERSION, config={}, num_classes=2)
    assert main(["eval", str(path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [(
        f"error: {path}: refused to load: it contains objects other than tensors and plain data "
        "(a sparseg checkpoint never does); not loaded"
    )]
    assert not marker.exists()
    assert_would_run_code(path, marker)


def test_training_refuses_encoder_weights_that_would_run_code(tmp_path, capsys):
    from sparseg.data import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, size=32, seed=0)
    marker = tmp_path / "marker"
    weights = evil_file(tmp_path / "encoder.pth", marker, **{"conv1.weight": torch.zeros(8, 3, 7, 7)})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""
out: {tmp_path / 'run'}
data: {{dataset: synthetic, root: {root}, train_list: train.txt, crop_size: 32, batch_size: 2, workers: 0}}
model: {{encoder: resnet18, stem: plain, width: 8, decoder_channels: 16, pretrained: {weights}}}
train: {{iters: 1, device: cpu}}
""")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: {weights}: refused to load: it contains objects other than tensors and plain data"), err
    assert err[0].endswith("; not loaded")
    assert not marker.exists() and not (tmp_path / "run" / "last.pt").exists()
    assert_would_run_code(weights, marker)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "x.png"
    target.write_bytes(b"old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.png"]


def test_write_atomic_takes_a_writer_and_replaces_the_file(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    write_atomic(target, lambda file: file.write(b"new"), durable=False)
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["x.bin"]
