"""Tensor statistics used on several floors (data, methods, plug-ins): quantile, entropy and a sum over processes."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def quantile(values: Tensor, q: float) -> Tensor:
    """Linear-interpolation quantile of a 1-D tensor, as ``torch.quantile`` without its 2^24 limit (dgcl.md §6.11)."""
    n = values.numel()
    position = q * (n - 1)
    low = int(position)
    high = min(low + 1, n - 1)
    v_low = values.kthvalue(low + 1).values
    v_high = values.kthvalue(high + 1).values if high != low else v_low
    return v_low + (position - low) * (v_high - v_low)


def entropy(probs: Tensor, eps: float = 1e-10) -> Tensor:
    """ε = −Σ_c p_c log(p_c + eps) over dim 1 (the class dimension)."""
    return -(probs * torch.log(probs + eps)).sum(1)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """``tensor`` summed over the processes of torch.distributed, in place (unchanged in one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor
