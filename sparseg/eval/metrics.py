"""Confusion-matrix segmentation metrics, accumulated over a whole dataset.

IoU is computed from dataset-wide sums: I_c = sum of #{pred = c and gt = c}, U_c = sum of
#{pred = c or gt = c} over every pixel whose label is not ignore; per-image IoUs are never averaged.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist

from sparseg.labels import IGNORE


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` in place across processes when torch.distributed is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class ConfusionMatrix:
    """K x K int64 counts, rows = ground truth, columns = prediction, kept on ``device``."""

    def __init__(
        self, num_classes: int, ignore_index: int = IGNORE, device: torch.device | str | None = None
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count predicted vs. ground-truth class pairs; ``target == ignore_index`` is skipped."""
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        k = self.num_classes
        pred = pred.reshape(-1).to(self.matrix.device, torch.int64)
        target = target.reshape(-1).to(self.matrix.device, torch.int64)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        bad_target = (target < 0) | (target >= k)
        bad_pred = (pred < 0) | (pred >= k)
        if bad_target.any():
            values = torch.unique(target[bad_target]).tolist()
            raise ValueError(
                f"label values {values} are outside 0..{k - 1} and not the ignore index "
                f"{self.ignore_index}"
            )
        if bad_pred.any():
            values = torch.unique(pred[bad_pred]).tolist()
            raise ValueError(f"predicted classes {values} are outside 0..{k - 1}")
        counts = torch.bincount(target * k + pred, minlength=k * k)
        self.matrix += counts.view(k, k)

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix across processes (no-op without torch.distributed)."""
        all_reduce_sum(self.matrix)
        return self

    def iou(self) -> torch.Tensor:
        """Per-class I_c / U_c (float64, CPU), NaN where the union is empty."""
        m = self.matrix.double().cpu()
        intersection = m.diag()
        union = m.sum(0) + m.sum(1) - intersection
        return torch.where(union > 0, intersection / union.clamp(min=1), torch.nan)

    def miou(self, over: Literal["all", "present"] = "all") -> float:
        """Mean IoU x 100; ``all``: empty-union classes count 0, ``present``: they are skipped."""
        iou = self.iou()
        if over == "all":
            return iou.nan_to_num(0.0).mean().item() * 100
        if over == "present":
            return iou[~iou.isnan()].mean().item() * 100  # NaN when no class is present
        raise ValueError(f"miou over must be 'all' or 'present', got {over!r}")

    def class_accuracy(self) -> torch.Tensor:
        """Per-class recall: correct / ground-truth pixels (float64, CPU), NaN for classes absent from the labels."""
        m = self.matrix.double().cpu()
        total = m.sum(1)
        return torch.where(total > 0, m.diag() / total.clamp(min=1), torch.nan)

    def mean_accuracy(self) -> float:
        """Mean class accuracy x 100 over the classes present in the labels (mmseg's mAcc; NaN if none)."""
        accuracy = self.class_accuracy()
        present = accuracy[~accuracy.isnan()]
        return present.mean().item() * 100 if present.numel() else float("nan")

    def pixel_accuracy(self) -> float:
        """Correct pixels / counted pixels x 100 (NaN when nothing was counted)."""
        m = self.matrix.double().cpu()
        total = m.sum()
        return (m.diag().sum() / total).item() * 100 if total > 0 else float("nan")
