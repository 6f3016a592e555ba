"""Checkpoints around evaluation: last.pt before it, best.pt never replaced by a worse model on resume."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

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
        StopAfterFour(cfg, quiet=True).fit()
    run = Path(cfg.out)
    last = torch.load(run / "last.pt", weights_only=True)
    assert (last["iteration"], last["best_miou"]) == (4, 30.0)  # the best including its own evaluation
    best = (run / "best.pt").read_bytes()

    Trainer(cfg, resume=True, quiet=True).fit()
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 6
    assert (run / "best.pt").read_bytes() == best
    assert torch.load(run / "best.pt", weights_only=True)["iteration"] == 4


def test_last_checkpoint_is_written_before_evaluation(tiny_config, monkeypatch):
    """A crash inside the evaluation at iteration 2 leaves that iteration's last.pt, and resume continues it."""
    scripted_evaluation(monkeypatch, {2: None, 4: 5.0})
    cfg = tiny_config()
    with pytest.raises(Crash):
        Trainer(cfg, quiet=True).fit()
    assert torch.load(Path(cfg.out) / "last.pt", weights_only=True)["iteration"] == 2
    scripted_evaluation(monkeypatch, {4: 5.0})
    resumed = Trainer(cfg, resume=True, quiet=True)
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
        Trainer(tiny_config(root=root), quiet=True)
