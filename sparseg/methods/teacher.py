"""EMA teacher helpers (dgcl.md §2, §6.9).

``copy_parameters`` and ``ema_update`` touch parameters only: a teacher that runs in train mode keeps
BN running statistics from its own forward passes (selftrain, dgcl). ``ema_update_buffers`` is for
teachers that never do. Copies are explicit ``copy_`` into the teacher's own storage, never aliases.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def create_teacher(student: nn.Module) -> nn.Module:
    """An independent deep copy of ``student`` that takes no gradients."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher


def _parameter_pairs(teacher: nn.Module, student: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    t_named, s_named = dict(teacher.named_parameters()), dict(student.named_parameters())
    if t_named.keys() != s_named.keys():
        raise ValueError("teacher and student have different parameters")
    return [t_named[k] for k in t_named], [s_named[k].detach() for k in t_named]


@torch.no_grad()
def copy_parameters(teacher: nn.Module, student: nn.Module) -> None:
    """θ_t ← θ_s, copied into the teacher's storage (§6.9: never aliased)."""
    t_params, s_params = _parameter_pairs(teacher, student)
    torch._foreach_copy_(t_params, s_params)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """θ_t ← d θ_t + (1 − d) θ_s for parameters only."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    t_params, s_params = _parameter_pairs(teacher, student)
    torch._foreach_mul_(t_params, decay)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - decay)


def ema_decay(iteration: int, start_iteration: int, momentum: float) -> float:
    """d_i = min(1 − 1/(i − i_0 + 1), μ) with i_0 the first semi-supervised iteration (dgcl.md §2)."""
    if iteration < start_iteration:
        raise ValueError(f"iteration {iteration} is before the EMA start {start_iteration}")
    return min(1.0 - 1.0 / (iteration - start_iteration + 1), momentum)


@torch.no_grad()
def ema_update_buffers(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """b_t ← d b_t + (1 − d) b_s for floating buffers, integer ones (BN counters) copied.

    For teachers that never run in train mode and so never update their own BN statistics
    (UniMatch V2 averages parameters and buffers; depmatch.md §2).
    """
    t_named, s_named = dict(teacher.named_buffers()), dict(student.named_buffers())
    if t_named.keys() != s_named.keys():
        raise ValueError("teacher and student have different buffers")
    floating = [k for k in t_named if t_named[k].is_floating_point()]
    if floating:  # lerp leaves equal buffers (the normalisation constants) exactly unchanged
        torch._foreach_lerp_([t_named[k] for k in floating], [s_named[k] for k in floating], 1.0 - decay)
    for k in t_named.keys() - set(floating):
        t_named[k].copy_(s_named[k])
