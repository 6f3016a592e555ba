"""Denoising pretraining of encoder and decoder (DDeP; Brempong et al., TMLR 2022), docs/methods/pretrain.md.

One view, no labels, no momentum encoder: corrupt the image with scaled additive Gaussian noise and train the
whole segmentation network (encoder + decoder, through the decoder feature ``fts``) to predict that noise.
The paper's UNet predicts full-resolution noise; DeepLabV3+ decodes at stride 4, so by default the noise is
drawn on the decoder's grid and spread over each cell (pretrain.md §2), and a 1x1 head predicts it there.
``noise_grid: input`` draws it per pixel, predicted through a pixel-shuffle head. Heads are dropped afterwards.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from sparseg.methods import register_method
from sparseg.methods.base import Step, step_generator
from sparseg.pretrain.base import GridHead, PretrainingConfig, PretrainingMethod, embedding_spread, weighted_mse


class DDePConfig(PretrainingConfig):
    sigma: float = Field(0.2, gt=0)  # σ, noise scale on images in [-1, 1] (pretrain.md §1)
    gamma: tuple[float, float] = (0.0, 1.0)  # γ ~ U[γ_min, γ_max] per image: signal share of x̃
    noise_grid: Literal["features", "input"] = "features"  # where ε lives: the decoder's grid, or every pixel

    @field_validator("gamma")
    @classmethod
    def _gamma_ok(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= v[0] <= v[1] <= 1.0:
            raise ValueError("need 0 <= gamma_min <= gamma_max <= 1")
        return v


def corrupt(x: Tensor, noise: Tensor, gamma: Tensor, sigma: float) -> Tensor:
    """x̃ = √γ·u + √(1−γ)·σ·ε on u = 2x − 1, returned on the [0, 1] scale the model expects (pretrain.md §1)."""
    gamma = gamma.view(-1, 1, 1, 1)
    u = 2 * x - 1
    return (gamma.sqrt() * u + (1 - gamma).sqrt() * sigma * noise + 1) / 2


@register_method("ddep")
class DDeP(PretrainingMethod):
    Config = DDePConfig

    def __init__(self, model: nn.Module, cfg: DDePConfig, context) -> None:
        super().__init__(model, cfg, context)
        self.head = GridHead(self.fts_channels, 3, 1 if cfg.noise_grid == "features" else self.stride)

    def loss_terms(self, batch: dict[str, dict[str, Tensor]], step: Step) -> dict[str, Tensor]:
        images = batch["unlabeled"]["image"]
        valid = batch["unlabeled"]["valid"].float()
        generator = step_generator(self.context.seed, step.iteration, "ddep", self.context.rank)
        b, _, h, w = images.shape
        grid = (h, w) if self.cfg.noise_grid == "input" else (-(-h // self.stride), -(-w // self.stride))
        noise = torch.randn((b, 3, *grid), generator=generator).to(images.device)
        low, high = self.cfg.gamma
        gamma = (low + (high - low) * torch.rand(b, generator=generator)).to(images.device)
        # smooth (bilinear) noise: blocky noise has edges on the cell borders, a shortcut (pretrain.md §2)
        pixel_noise = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)
        fts = self.model(corrupt(images, pixel_noise, gamma, self.cfg.sigma))["fts"]
        predicted = self.head(fts, grid)
        self.spread = float(embedding_spread(fts, generator, self.cfg.monitor_pixels))
        cell_valid = F.interpolate(valid[:, None], size=grid, mode="nearest")[:, 0]
        return {"denoise": weighted_mse(predicted, noise, cell_valid)}  # L = ‖ε̂ − ε‖² over valid cells (§1)
