"""Loading a checkpoint or an encoder weights file never runs code from it; files are replaced atomically."""

import io
import os
import pickle
import stat
import warnings

import pytest
import torch

from sparseg.cli import main
from sparseg.engine.checkpoint import FORMAT_VERSION
from sparseg.serialization import REFUSED, safe_torch_load, write_atomic


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


@pytest.mark.parametrize("content, kind", [
    (bytes(range(256)) * 16, "neither a zip archive nor a pickle"),
    (pickle.dumps({"w": [1.0, 2.0]}), "a plain Python pickle"),
])
def test_a_file_torch_did_not_write_is_not_a_checkpoint_in_one_line(tmp_path, capsys, content, kind):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: not a checkpoint: {kind}, not a file written by torch.save; not loaded"]


def test_a_crafted_pickle_protocol_draws_no_torch_warning(tmp_path, capsys):
    path = tmp_path / "p4.pt"
    torch.save({"w": CreatesFile(tmp_path / "marker")}, path, _use_new_zipfile_serialization=False,
               pickle_protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["eval", str(path)]) == 2
    assert [str(w.message) for w in caught if "pickle protocol" in str(w.message)] == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and REFUSED in err[0] and not (tmp_path / "marker").exists()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "x.bin", b"new", durable=False)
        (tmp_path / "plain.bin").write_bytes(b"plain")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "x.bin").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode)
