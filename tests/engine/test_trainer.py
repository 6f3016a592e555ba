"""Checkpoints around evaluation: last.pt before it, best.pt never replaced by a worse model on resume."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from sparseg.build import resolve
from sparseg.data import DataError, make_synthetic_dataset
from sparseg.engine import trainer
from sparseg.engine.trainer import Trainer


class Crash(Exception):
    pass


def scripted_evaluation(monkeypatch, scores):
    """Evaluation returns ``scores[iteration]`` as the mIoU (a stand-in for real validation results)."""

    def evaluate(self):
        if scores[self.iteration] is None:
            raise Crash
        return {"student": SimpleNamespace(miou=scores[self.iteration])}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)


def test_resume_after_an_improvement_keeps_best(tiny_config, monkeypatch):
    """Evaluations 10, 30, 20: interrupted after the 30 and resumed, best.pt stays the iteration-4 model."""
    scripted_evaluation(monkeypatch, {2: 10.0, 4: 30.0, 6: 20.0})
    cfg = tiny_config(iters=6)

    class StopAfterFour(Trainer):
        def _evaluate_and_checkpoint(self):
            result = super()._evaluate_and_checkpoint()
            if self.iteration == 4:
                raise Crash
            return result

    with pytest.raises(Crash):
        StopAfterFour(*resolve(cfg), quiet=True).fit()
    run = Path(cfg.out)
    last = torch.load(run / "last.pt", weights_only=True)
    assert (last["iteration"], last["best_miou"]) == (4, 30.0)  # the best including its own evaluation
    best = (run / "best.pt").read_bytes()

    Trainer(*resolve(cfg), resume=True, quiet=True).fit()
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 6
    assert (run / "best.pt").read_bytes() == best
    assert torch.load(run / "best.pt", weights_only=True)["iteration"] == 4


def test_last_checkpoint_is_written_before_evaluation(tiny_config, monkeypatch):
    """A crash inside the evaluation at iteration 2 leaves that iteration's last.pt, and resume continues it."""
    scripted_evaluation(monkeypatch, {2: None, 4: 5.0})
    cfg = tiny_config()
    with pytest.raises(Crash):
        Trainer(*resolve(cfg), quiet=True).fit()
    assert torch.load(Path(cfg.out) / "last.pt", weights_only=True)["iteration"] == 2
    scripted_evaluation(monkeypatch, {4: 5.0})
    resumed = Trainer(*resolve(cfg), resume=True, quiet=True)
    assert resumed.iteration == 2
    resumed.fit()
    assert torch.load(Path(cfg.out) / "best.pt", weights_only=True)["iteration"] == 4


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_list_is_checked_before_the_model_is_built(tiny_config, tmp_path, monkeypatch, split):
    root = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=2, size=32, seed=0)
    mask = root / (root / f"{split}.txt").read_text().splitlines()[-1].split()[1]
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(mask)  # the last file of the list: a header check finds it

    def build_method(*args, **kwargs):
        raise AssertionError("the model was built before the lists were checked")

    monkeypatch.setattr(trainer, "build_method", build_method)
    with pytest.raises(DataError, match=f"{mask.name}: mask size 24x20 differs from image"):
        Trainer(*resolve(tiny_config(root=root)), quiet=True)


def test_resume_refuses_config_edits_unless_allowed_and_records_them(tiny_config, monkeypatch):
    import yaml

    from sparseg.config import ConfigError

    scripted_evaluation(monkeypatch, {2: None, 4: 5.0})
    with pytest.raises(Crash):
        Trainer(*resolve(tiny_config()), quiet=True).fit()  # last.pt at iteration 2
    edited = tiny_config()
    edited.optim.base_lr, edited.data.flip = 0.02, False
    with pytest.raises(ConfigError) as err:
        Trainer(*resolve(edited), resume=True, quiet=True)
    message = str(err.value)
    assert "data.flip True -> False, optim.base_lr 0.01 -> 0.02; resume with that config" in message
    assert "pass --allow-config-change" in message and "train.eval_every" in message
    history = Path(edited.out) / "config_history.yaml"
    assert not history.exists()
    cadence = tiny_config(eval_every=1)  # evaluation cadence: no flag needed
    Trainer(*resolve(cadence), resume=True, quiet=True).close()
    Trainer(*resolve(edited), resume=True, quiet=True, allow_config_change=True).close()
    entries = yaml.safe_load(history.read_text())
    assert [e["changes"] for e in entries] == [
        {"train.eval_every": {"old": 2, "new": 1}},
        {"data.flip": {"old": True, "new": False}, "optim.base_lr": {"old": 0.01, "new": 0.02}},
    ] and entries[1]["iteration"] == 2


def test_train_log_states_the_loss_weights(tiny_config):
    cfg = tiny_config(iters=1, eval_every=0)
    Trainer(*resolve(cfg)).fit()
    log = (Path(cfg.out) / "train.log").read_text()
    assert "loss = Σ weight · term (logged terms are unweighted); weights: aux 0.4, others 1" in log


def test_ctrl_c_writes_curves_and_says_interrupted_in_train_log(tiny_config, monkeypatch):
    cfg = tiny_config(iters=6)
    step = Trainer._train_step

    def interrupted_at_3(self, batch, epoch):
        if self.iteration == 3:
            raise KeyboardInterrupt
        step(self, batch, epoch)

    monkeypatch.setattr(Trainer, "_train_step", interrupted_at_3)
    with pytest.raises(KeyboardInterrupt):
        Trainer(*resolve(cfg)).fit()
    run = Path(cfg.out)
    assert (run / "train.log").read_text().splitlines()[-1].endswith(
        f"interrupted at iteration 3; --resume continues from {run / 'last.pt'}")
    assert (run / "curves.png").stat().st_size > 0 and not (run / "train.lock").exists()


def test_a_finished_run_stops_its_persistent_loader_workers(tiny_config):
    cfg = tiny_config(iters=2, eval_every=0)
    cfg.data.workers = 1
    run = Trainer(*resolve(cfg), quiet=True)
    run.fit()
    assert all(stream.loader._iterator is None for stream in run.streams)
