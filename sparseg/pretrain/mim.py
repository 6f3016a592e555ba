"""Masked image modelling for a convolutional encoder-decoder (MAE-style, He et al. CVPR 2022; for convnets
see SparK, Tian et al. ICLR 2023), docs/methods/pretrain.md §4.

Square patches of the image are replaced by the dataset-mean colour and the network reconstructs their
pixels from the context: to fill a patch it has to recognise what surrounds it, which is closer to what
segmentation needs than denoising. One view, no momentum encoder. The per-cell head (pixel shuffle on the
decoder feature ``fts``) predicts every pixel of its cell; the loss is on masked pixels only, against
per-patch normalised targets (MAE's ``norm_pix_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from sparseg.methods import register_method
from sparseg.methods.base import Step, step_generator
from sparseg.models.deeplabv3plus import IMAGENET_MEAN
from sparseg.pretrain.base import GridHead, PretrainingConfig, PretrainingMethod, embedding_spread, weighted_mse


class MIMConfig(PretrainingConfig):
    patch: int = Field(16, ge=1)  # side of a masked square in input pixels (a multiple of the decoder stride)
    mask_ratio: float = Field(0.6, gt=0, lt=1)  # share of patches masked per image
    norm_targets: bool = True  # targets normalised per patch (mean 0, std 1), MAE's norm_pix_loss


def patch_mask(shape: tuple[int, int, int], patch: int, ratio: float, generator: torch.Generator) -> Tensor:
    """[B, H, W] bool, True on masked pixels: round(ratio · patches) random patches per image."""
    b, h, w = shape
    ph, pw = -(-h // patch), -(-w // patch)
    count = round(ratio * ph * pw)
    order = torch.rand(b, ph * pw, generator=generator).argsort(1)
    cells = torch.zeros(b, ph * pw, dtype=torch.bool)
    cells.scatter_(1, order[:, :count], True)
    grid = cells.view(b, 1, ph, pw).float()
    return F.interpolate(grid, scale_factor=patch, mode="nearest")[:, 0, :h, :w].bool()


def normalised_targets(images: Tensor, patch: int) -> Tensor:
    """Each patch of each channel shifted to mean 0 and scaled to std 1 (MAE's norm_pix_loss)."""
    mean = F.avg_pool2d(images, patch, ceil_mode=True)
    var = F.avg_pool2d(images.pow(2), patch, ceil_mode=True) - mean.pow(2)
    size = images.shape[-2:]
    mean = F.interpolate(mean, scale_factor=patch, mode="nearest")[..., : size[0], : size[1]]
    std = F.interpolate(var.clamp(min=0).add(1e-6).sqrt(), scale_factor=patch, mode="nearest")[..., : size[0], : size[1]]
    return (images - mean) / std


@register_method("mim")
class MaskedImageModelling(PretrainingMethod):
    Config = MIMConfig

    def __init__(self, model: nn.Module, cfg: MIMConfig, context) -> None:
        super().__init__(model, cfg, context)
        self.head = GridHead(self.fts_channels, 3, self.stride)
        self.register_buffer("fill", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)

    def loss_terms(self, batch: dict[str, dict[str, Tensor]], step: Step) -> dict[str, Tensor]:
        images = batch["unlabeled"]["image"]
        valid = batch["unlabeled"]["valid"]
        generator = step_generator(self.context.seed, step.iteration, "mim", self.context.rank)
        b, _, h, w = images.shape
        masked = patch_mask((b, h, w), self.cfg.patch, self.cfg.mask_ratio, generator).to(images.device)
        corrupted = torch.where(masked[:, None], self.fill.to(images.dtype), images)
        fts = self.model(corrupted)["fts"]
        predicted = self.head(fts, (h, w))
        target = normalised_targets(images, self.cfg.patch) if self.cfg.norm_targets else images
        self.spread = float(embedding_spread(fts, generator, self.cfg.monitor_pixels))
        return {"reconstruct": weighted_mse(predicted, target, (masked & valid).float())}  # masked pixels only
