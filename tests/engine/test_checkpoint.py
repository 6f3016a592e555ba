import os
import re
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from sparseg.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip_and_no_temp_left(tmp_path):
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, {"config": {"a": 1}, "w": torch.arange(3)})
    state = load_checkpoint(path)
    assert state["config"] == {"a": 1} and torch.equal(state["w"], torch.arange(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"config": {}, "w": torch.randn(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not a sparseg checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_failed_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"config": {}, "step": 1})

    def broken_save(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"config": {}, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_random_states_round_trip_through_a_plain_checkpoint(tmp_path):
    """RNG states are stored as tensors and plain data (weights_only loads them) and restore exactly."""
    import random

    import numpy as np

    from sparseg.engine.trainer import rng_state, set_rng_state

    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    np.random.normal()  # numpy caches the second gaussian: part of the state too
    save_checkpoint(tmp_path / "last.pt", {"config": {}, "rng": rng_state()})
    expected = (random.random(), np.random.normal(), torch.rand(1))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    set_rng_state(torch.load(tmp_path / "last.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.normal()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def _rename_numpy_core(path: Path, numpy_core: str) -> None:
    """Rewrite a torch file's pickle as a numpy whose array module is ``numpy_core`` (numpy 1: ``numpy.core``,
    numpy 2: ``numpy._core``) would have written it."""
    with zipfile.ZipFile(path) as source:
        members = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w") as target:
        for info, data in members:
            if info.filename.endswith("/data.pkl"):
                data = re.sub(rb"numpy\._?core\.multiarray", numpy_core.encode() + b".multiarray", data)
            target.writestr(info, data)


@pytest.mark.parametrize("numpy_core", ["numpy.core", "numpy._core"])
def test_format_1_checkpoint_with_numpy_random_state_still_loads(tmp_path, numpy_core):
    """Checkpoints written before format 2 held numpy's RNG state as an array: only that is allowed extra,
    under the name numpy 1 gives it as well as numpy 2's (a file outlives a numpy upgrade)."""
    import random

    import numpy as np

    from sparseg.engine.trainer import set_rng_state

    np.random.seed(5)
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    expected = np.random.rand()
    path = tmp_path / "old.pt"
    torch.save({"format_version": 1, "config": {}, "rng": rng}, path)
    _rename_numpy_core(path, numpy_core)
    assert f"{numpy_core}.multiarray".encode() in zipfile.ZipFile(path).read("old/data.pkl")
    np.random.seed(0)
    set_rng_state(load_checkpoint(path)["rng"])
    assert np.random.rand() == expected


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    """RLIMIT_FSIZE makes writes fail as a full disk does (torch: 'PytorchStreamWriter failed writing')."""
    import resource
    import signal

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"config": {}, "step": 1})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(CheckpointError) as err:
            save_checkpoint(path, {"config": {}, "step": 2, "w": torch.zeros(100_000)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    message = str(err.value)
    assert message.startswith(f"cannot write the checkpoint {path} (") and "MiB free on its disk" in message
    assert "\n" not in message and "enforce fail" not in message
    assert load_checkpoint(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoints_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "last.pt", {"config": {}})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "last.pt").stat().st_mode) == 0o644
