"""Loss functions shared by methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparseg.labels import IGNORE


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of stride-4 logits to label size (align_corners=True, as the references)."""
    if logits.shape[-2:] == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def resize_nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of integer or bool maps [B,H,W] (class ids and 255 preserved)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    resized = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0]
    return resized.to(labels.dtype)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean CE over pixels whose target is not IGNORE (0 when there are none, graph-connected)."""
    logits = upsample(logits, target.shape[-2:]).float()
    if not (target != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=IGNORE)


def ohem_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7, min_kept: int = 100_000
) -> torch.Tensor:
    """Online hard example mining CE (U2PL/DGCL Cityscapes): keep pixels whose true-class
    probability is below ``thresh``, and at least the ``min_kept`` hardest ones."""
    logits = upsample(logits, target.shape[-2:]).float()
    pixel_loss = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none").flatten()
    valid = (target != IGNORE).flatten()
    n_valid = int(valid.sum())
    if n_valid == 0:
        return logits.sum() * 0.0
    with torch.no_grad():
        prob = torch.softmax(logits, dim=1).gather(1, target.clamp_max(logits.shape[1] - 1).unsqueeze(1))
        prob = prob.flatten().masked_fill(~valid, 1.0)
        kth = min(n_valid, min_kept)
        threshold = max(torch.kthvalue(prob, kth).values.item(), thresh) if kth > 0 else thresh
        keep = valid & (prob <= threshold)
    return pixel_loss[keep].mean()
