"""Rare-class copy-paste (docs/methods/copy_paste.md): the labeled pixels of classes the student does poorly on,
with their true labels, pasted into the training views, after AEL's adaptive copy-paste.

A confidence ĉ_c per class (EMA of the student's mean softmax probability of the true class over the labeled
pixels of class c) gives each class the weight w_c = (1 − ĉ_c)^γ. For every target image a source labeled image is
chosen; ``classes`` of the classes present in its mask are drawn without replacement with probabilities ∝ w_c,
and the source pixels of those classes replace the target's image and label at the same positions.

Under torch.distributed the per-class sums are summed over processes, so every process holds the same ĉ.
ĉ is a buffer: saved and resumed. ``classes: 0`` (the default) turns the component off and saves nothing.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from sparseg.labels import IGNORE
from sparseg.methods.base import MethodConfig
from sparseg.methods.losses import upsample
from sparseg.stats import all_reduce_sum


class CopyPasteConfig(MethodConfig):
    """``method.copy_paste:`` keys of the self-training and weak-to-strong methods."""

    classes: int = Field(0, ge=0)  # classes pasted into each target image; 0: off
    momentum: float = Field(0.99, ge=0, lt=1)  # EMA momentum of the per-class confidence ĉ
    power: float = Field(1.0, ge=0)  # γ in w_c = (1 − ĉ_c)^γ; 0: uniform over the classes present


class Pasted:
    """Where one batch of targets received pixels: ``label`` [B,H,W] is the pasted class, IGNORE elsewhere;
    ``source`` [B] the labeled image each target took its pixels from."""

    def __init__(self, label: Tensor, source: Tensor) -> None:
        self.label, self.source = label, source

    @property
    def mask(self) -> Tensor:
        return self.label != IGNORE

    def images(self, targets: Tensor, sources: Tensor) -> Tensor:
        return torch.where(self.mask[:, None], sources[self.source], targets)

    def labels(self, targets: Tensor) -> Tensor:
        return torch.where(self.mask, self.label, targets)


class RareClassCopyPaste(nn.Module):
    """The class confidences of one method and the sampling of what to paste."""

    def __init__(self, cfg: CopyPasteConfig, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        saved = self.active  # with classes 0 the method's checkpoint holds nothing of it
        self.register_buffer("confidence", torch.zeros(num_classes), persistent=saved)  # ĉ
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool), persistent=saved)

    @property
    def active(self) -> bool:
        return self.cfg.classes > 0

    def weights(self) -> Tensor:
        """w_c = (1 − ĉ_c)^γ; a class not seen yet counts as ĉ = 0 (weight 1)."""
        return (1.0 - self.confidence).clamp_min(0).pow(self.cfg.power)

    @torch.no_grad()
    def update(self, logits: Tensor, mask: Tensor) -> None:
        """ĉ_c ← m·ĉ_c + (1 − m)·mean_{pixels of class c} p_c, from the student's labeled logits and true masks
        (the first batch with class c sets ĉ_c)."""
        if not self.active:
            return
        probs = upsample(logits.detach().float(), tuple(mask.shape[-2:])).softmax(1)
        labeled = mask != IGNORE
        target = mask[labeled]
        p_true = probs.permute(0, 2, 3, 1)[labeled].gather(1, target[:, None])[:, 0]
        k = len(self.confidence)
        totals = torch.stack([
            torch.zeros(k, device=p_true.device).index_add_(0, target, p_true),
            torch.bincount(target, minlength=k).float(),
        ])
        total, count = all_reduce_sum(totals).to(self.confidence.device)
        present = count > 0
        mean = total[present] / count[present]
        m = self.cfg.momentum
        self.confidence[present] = torch.where(self.seen[present], m * self.confidence[present] + (1 - m) * mean, mean)
        self.seen |= present

    def sample(self, source_masks: Tensor, sources: Tensor, generator: torch.Generator) -> Pasted:
        """For target t, source labeled image ``sources[t]``: ``classes`` classes of its mask drawn ∝ w_c without
        replacement; their pixels form the pasted label map."""
        weights = self.weights().cpu()
        labels = []
        for s in sources.tolist():
            mask = source_masks[s]
            present = torch.bincount(mask[mask != IGNORE].flatten().cpu(), minlength=len(weights)) > 0
            w = weights * present
            n = min(self.cfg.classes, int((w > 0).sum()))
            chosen = torch.multinomial(w, n, generator=generator) if n else torch.zeros(0, dtype=torch.long)
            picked = torch.isin(mask, chosen.to(mask.device))
            labels.append(mask.masked_fill(~picked, IGNORE))
        return Pasted(torch.stack(labels), sources)

    def logs(self) -> dict[str, list[float]]:
        """Per-class ĉ, for metrics.jsonl and TensorBoard."""
        if not self.active:
            return {}
        return {"copy_paste_confidence": [round(v, 5) for v in self.confidence.tolist()]}
