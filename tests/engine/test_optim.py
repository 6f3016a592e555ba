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
