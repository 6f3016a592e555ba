"""Optimiser, learning-rate scaling rule and poly schedule."""

from __future__ import annotations

import logging

import torch
from torch import nn

from sparseg.config import OptimConfig

log = logging.getLogger(__name__)


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """Linear scaling rule (protocols.md §6): base_lr x global_batch / reference_batch."""
    if cfg.reference_batch is None:
        return cfg.base_lr
    return cfg.base_lr * global_batch / cfg.reference_batch


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """SGD or AdamW with the two groups of ``model.param_groups()`` (a model's, or a method's: its model's plus
    its own parameters): the encoder at ``lr``, the rest at ``lr x head_lr_mult``."""
    groups = model.param_groups()
    param_groups = [
        {"params": [p for p in groups["backbone"] if p.requires_grad], "lr": lr, "base_lr": lr},
        {
            "params": [p for p in groups["head"] if p.requires_grad],
            "lr": lr * cfg.head_lr_mult,
            "base_lr": lr * cfg.head_lr_mult,
        },
    ]
    if cfg.name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(param_groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def poly_factor(iteration: int, total_iters: int, power: float, shift: int = 0) -> float:
    """lr_i = lr0 (1 - max(i - shift, 0)/T)^power; iteration 0 uses lr0 (dgcl.md §2). ``shift`` 1 is the
    references' order: they set lr(i) after step i, so step i runs at lr(i - 1) (``optim.lr_schedule_shift``)."""
    return (1.0 - max(iteration - shift, 0) / total_iters) ** power


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
