"""Class-mix alignment of pseudo-labels (docs/methods/alignment.md): per-class logit biases b added to the
teacher's logits before the argmax and the confidence or entropy filters, so that the pseudo-labels' class mix
follows the labeled class prior π instead of erasing the classes an early teacher never predicts.

- ``hard_share`` (docs/methods/alignment.md, "Hard-share alignment"): s is an EMA of each class's share of the
  argmax of the biased logits over valid unlabeled pixels; every step b_c ← b_c + η · clip(log π_c − log s_c, −δ, δ).
- ``mean_prob`` (ReMixMatch's distribution alignment, DebiasPL): p̄ is an EMA of the mean softmax of the unbiased
  logits; b_c = log π_c − log p̄_c, i.e. p ← normalise(p · π / p̄).
- ``none``: logits pass unchanged and nothing is updated (every reference preset).

Classes absent from the labels (π_c = 0) keep b_c = 0. Under torch.distributed the per-class statistics are
summed over processes, so every process holds the same b. b, s (or p̄) and π are buffers: saved and resumed.

``filter: per_class`` (docs/methods/alignment.md, "Per-class filter") keeps a class's pixels past the confidence
or entropy filter at the share the filter keeps overall (``class_thresholds``; the entropy form in
sparseg/methods/selftrain.py), so the pixels the bias turns to a rare class are not dropped again.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from sparseg.labels import IGNORE
from sparseg.methods.base import MethodConfig
from sparseg.methods.losses import resize_nearest
from sparseg.stats import all_reduce_sum, quantile

_EPS = 1e-6  # floor of a measured share or mean probability inside the log


class PseudoLabelConfig(MethodConfig):
    """``method.pseudo_label:`` keys of the pseudo-labelling methods."""

    align: Literal["none", "hard_share", "mean_prob"] = "none"
    momentum: float = Field(0.9, ge=0, lt=1)  # EMA momentum of the measured shares s (hard_share) or p̄ (mean_prob)
    rate: float = Field(0.1, gt=0)  # η, hard_share's bias step per iteration
    clip: float = Field(1.0, gt=0)  # δ, bound of one step's log-ratio
    # global: one entropy or confidence threshold for all pixels (the reference); per_class: a pixel the global
    # threshold drops is kept when its class's own threshold at the same kept share keeps it (docs/methods/
    # alignment.md, "Per-class filter"), so a class the bias just made win the argmax is not filtered away
    filter: Literal["global", "per_class"] = "global"


def hard_share_step(prior: Tensor, share: Tensor, rate: float, clip: float) -> Tensor:
    """Δb = η · clip(log π − log s, −δ, δ) for the classes with π > 0; 0 for the others."""
    known = prior > 0
    step = torch.zeros_like(prior)
    step[known] = rate * (prior[known].log() - share[known].clamp_min(_EPS).log()).clamp(-clip, clip)
    return step


def class_thresholds(conf: Tensor, label: Tensor, threshold: float, num_classes: int) -> Tensor:
    """Per-class confidence thresholds min(τ, τ_c) [K] for pixels with confidences ``conf`` and labels ``label``
    (1-D): τ_c is the quantile of class c's confidences at 1 − r, r the share of all pixels with c ≥ τ, so every
    class keeps at least the share r of its pixels (τ for a class without pixels, and for all when r = 0)
    (docs/methods/alignment.md, "Per-class filter")."""
    thresholds = torch.full((num_classes,), float(threshold), device=conf.device)
    kept_share = float((conf >= threshold).float().mean()) if conf.numel() else 0.0
    if kept_share > 0:
        for c in label.unique().tolist():
            thresholds[c] = min(threshold, float(quantile(conf[label == c], 1.0 - kept_share)))
    return thresholds


def mean_prob_bias(prior: Tensor, mean_probs: Tensor) -> Tensor:
    """b = log π − log p̄ for the classes with π > 0 (p ← normalise(p · π / p̄)); 0 for the others."""
    known = prior > 0
    bias = torch.zeros_like(prior)
    bias[known] = prior[known].log() - mean_probs[known].clamp_min(_EPS).log()
    return bias


class ClassMixAlignment(nn.Module):
    """The biases of one method's pseudo-labels; ``forward(logits, valid)`` returns the logits to label with."""

    def __init__(self, cfg: PseudoLabelConfig, num_classes: int, prior: Tensor | None) -> None:
        """``prior``: the labeled class counts (None: π comes from a checkpoint's state, e.g. to evaluate it)."""
        super().__init__()
        self.cfg = cfg
        prior = torch.zeros(num_classes) if prior is None else prior.float()
        saved = self.active  # with align none the method's checkpoint holds nothing of it
        self.register_buffer("prior", prior / prior.sum().clamp_min(1e-12), persistent=saved)  # π
        self.register_buffer("bias", torch.zeros(num_classes), persistent=saved)  # b
        self.register_buffer("share", torch.zeros(num_classes), persistent=saved)  # s or p̄, EMA
        self.register_buffer("updates", torch.zeros((), dtype=torch.long), persistent=saved)

    @property
    def active(self) -> bool:
        return self.cfg.align != "none"

    @torch.no_grad()
    def forward(self, logits: Tensor, valid: Tensor) -> Tensor:
        """``logits`` [B, K, h, w] (float) shifted by b; ``valid`` [B, H, W] bool marks the pixels measured (resized
        to h x w, nearest).

        hard_share labels with the bias before this step's update; mean_prob with p̄ including this batch."""
        if not self.active:
            return logits
        if not self.prior.any():
            raise ValueError(f"method.pseudo_label.align={self.cfg.align} needs the labeled class prior")
        valid = resize_nearest(valid, tuple(logits.shape[-2:]))
        if self.cfg.align == "hard_share":
            biased = logits + self.bias[:, None, None]
            counts = torch.bincount(biased.argmax(1)[valid], minlength=len(self.bias)).float()
            self._update_ema(all_reduce_sum(counts))
            self.bias += hard_share_step(self.prior, self.share, self.cfg.rate, self.cfg.clip)
            return biased
        probs = logits.softmax(1).permute(0, 2, 3, 1)[valid]  # [N, K]
        self._update_ema(all_reduce_sum(torch.cat([probs.sum(0), probs.new_tensor([len(probs)])]))[:-1])
        self.bias.copy_(mean_prob_bias(self.prior, self.share))
        return logits + self.bias[:, None, None]

    def _update_ema(self, totals: Tensor) -> None:
        """s ← m·s + (1 − m)·totals / Σ totals (the first batch sets s); a batch without valid pixels is skipped."""
        if totals.sum() <= 0:
            return
        measured = totals / totals.sum()
        if self.updates == 0:
            self.share.copy_(measured)
        else:
            self.share.mul_(self.cfg.momentum).add_(measured, alpha=1 - self.cfg.momentum)
        self.updates += 1

    def logs(self) -> dict[str, list[float]]:
        """Per-class b, the measured s (or p̄) and π, for metrics.jsonl and TensorBoard."""
        if not self.active:
            return {}
        return {name: [round(v, 5) for v in getattr(self, buffer).tolist()]
                for name, buffer in (("align_bias", "bias"), ("align_measured_share", "share"),
                                     ("class_prior", "prior"))}


class ClassShares:
    """Each class's share of the pseudo-labels a method kept and of the labeled pixels, over the steps since the
    last ``logs()`` (this process's batches): the collapse monitor, logged beside π (docs/methods/alignment.md)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self._counts: dict[str, Tensor] = {}

    def count(self, name: str, labels: Tensor) -> None:
        """Add the classes of ``labels`` (255 = not counted) to the counts logged as ``name``."""
        counts = torch.bincount(labels[labels != IGNORE], minlength=self.num_classes)[: self.num_classes]
        self._counts[name] = self._counts[name] + counts if name in self._counts else counts

    def logs(self) -> dict[str, list[float]]:
        logs = {name: [round(v, 5) for v in (c / c.sum().clamp_min(1)).tolist()] for name, c in self._counts.items()}
        self._counts = {}
        return logs
