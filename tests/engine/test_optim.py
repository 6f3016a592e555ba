import pytest
from torch import nn

from sparseg.config import OptimConfig
from sparseg.engine.optim import build_optimizer, poly_factor, scaled_lr, set_lr


class TwoPart(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(2, 2)
        self.decoder = nn.Linear(2, 2)

    def param_groups(self):
        return {"backbone": list(self.encoder.parameters()), "head": list(self.decoder.parameters())}


def test_linear_scaling_rule():
    cfg = OptimConfig(base_lr=1e-3, reference_batch=16)
    assert scaled_lr(cfg, 8) == pytest.approx(5e-4)
    assert scaled_lr(OptimConfig(base_lr=1e-3), 8) == pytest.approx(1e-3)


def test_poly_schedule_and_head_multiplier():
    opt = build_optimizer(TwoPart(), OptimConfig(head_lr_mult=10, momentum=0.9, weight_decay=1e-4), lr=0.01)
    assert poly_factor(0, 100, 0.9) == 1.0
    set_lr(opt, poly_factor(50, 100, 0.9))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**0.9)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * 0.5**0.9)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 1e-4


def test_lr_schedule_shift_is_the_references_order():
    """UniMatch/DepMatch loops: step i runs at the current LR, then set lr(i) = lr0 (1 - i/T)^0.9 for the next
    step; so step 0 and step 1 both run at lr0 and step i at lr(i - 1). Shift 0 (sparseg's default) runs step i
    at lr(i)."""
    total, lr0, current, used = 10, 0.01, 0.01, []
    for i in range(total):
        used.append(current)
        current = lr0 * (1 - i / total) ** 0.9
    assert [lr0 * poly_factor(i, total, 0.9, shift=1) for i in range(total)] == pytest.approx(used, rel=1e-12)
    assert [lr0 * poly_factor(i, total, 0.9) for i in range(total)] != pytest.approx(used)


def test_trainer_applies_the_lr_schedule_shift(tmp_path):
    import json

    from sparseg.build import resolve
    from sparseg.config import config_from_dict
    from sparseg.data import make_synthetic_dataset
    from sparseg.engine.trainer import train

    root = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=1, size=16)
    train(*resolve(config_from_dict({
        "out": str(tmp_path / "run"),
        "data": {"dataset": "synthetic", "root": str(root), "train_list": "train.txt", "crop_size": 16,
                 "batch_size": 2, "workers": 0},
        "model": {"encoder": "resnet18", "stem": "plain", "width": 4, "decoder_channels": 8},
        "optim": {"base_lr": 0.01, "lr_schedule_shift": 1},
        "train": {"iters": 3, "log_every": 1, "device": "cpu"},
    })))
    logged = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"lr"' in line]
    assert logged == pytest.approx([0.01, 0.01, 0.01 * (1 - 1 / 3) ** 0.9])
