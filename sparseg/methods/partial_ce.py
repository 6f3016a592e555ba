"""Partial cross-entropy: training from sparse labels on the labeled pixels only (agmm.md §5 (a)).

The baseline of every sparse-label method: softmax CE, flat mean over the batch's labeled pixels;
unlabeled (254) and ignore (255) pixels enter nothing. On dense labels it is plain CE.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from sparseg.data.transforms import strong_photometric
from sparseg.labels import IGNORE, UNLABELED
from sparseg.methods import register_method
from sparseg.methods.base import Method, MethodConfig, Step, step_generator
from sparseg.methods.losses import cross_entropy, upsample


def partial_cross_entropy(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean CE over labeled pixels of ``mask`` [B,S,S]; logits are upsampled to S x S
    (align_corners=True) when smaller. 0, graph-connected, without labeled pixels (agmm.md §9 trap 10)."""
    return cross_entropy(logits, mask.masked_fill(mask == UNLABELED, IGNORE))


def reference_photometric(images: Tensor, generator: torch.Generator) -> Tensor:
    """AGMM's VOC photometric augmentation (agmm.md §6) on a batch in [0, 1]: ColorJitter(0.5, 0.5, 0.5,
    0.25) p 0.5, grayscale p 0.1, blur sigma U(0.1, 2) p 0.5, then a brightness shift U(-10, 10)/255 p 0.5."""
    x = strong_photometric(images, generator, p_jitter=0.5, p_gray=0.1, p_blur=0.5, sigma=(0.1, 2.0))
    b = len(x)
    shift = (torch.rand(b, generator=generator) * 20 - 10) / 255 * (torch.rand(b, generator=generator) < 0.5)
    return (x + shift.to(x.device, x.dtype).view(b, 1, 1, 1)).clamp(0, 1)


class PartialCEConfig(MethodConfig):
    """``method:`` keys of ``partial_ce`` (and of the methods built on it)."""

    photometric: bool = False  # reference_photometric on the training images (AGMM's VOC recipe)


@register_method("partial_ce")
class PartialCE(Method):
    """pCE on sparse labels. Subclasses add terms through ``sparse_terms`` and ``loss_weights``."""

    Config = PartialCEConfig
    label_kind: ClassVar[str] = "points"  # the demo trains on points synthesised from its dense masks
    demo_overrides: ClassVar[dict[str, Any]] = {"iters": 300}

    def loss_terms(self, batch, step: Step):
        labeled = batch["labeled"]
        image = labeled["image"]
        if self.cfg.photometric:  # per (seed, iteration, rank): resumable, different on every process
            image = reference_photometric(image, step_generator(self.context.seed, step.iteration, "photometric",
                                                                self.context.rank))
        out = self.model(image)
        logits = upsample(out["pred"], labeled["mask"].shape[-2:])  # S x S: P of agmm.md §5
        return self.sparse_terms(out, logits, labeled)

    def sparse_terms(self, out: dict[str, Tensor], logits: Tensor, labeled: dict[str, Tensor]) -> dict[str, Tensor]:
        """Unweighted loss terms from model outputs, S x S logits and the labeled batch."""
        return {"pce": partial_cross_entropy(logits, labeled["mask"])}
