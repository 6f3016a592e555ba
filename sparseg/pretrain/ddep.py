"""Denoising pretraining of encoder and decoder (DDeP; Brempong et al., TMLR 2022), docs/methods/pretrain.md.

One view, no labels, no momentum encoder: corrupt the image with scaled additive Gaussian noise and train the
whole segmentation network (encoder + decoder, through the decoder feature ``fts``) to predict that noise.
The paper's UNet predicts full-resolution noise; DeepLabV3+ decodes at stride 4, so by default the noise is
drawn on the decoder's grid and spread over each cell (pretrain.md §2), and a 1x1 head predicts it there.
``noise_grid: input`` draws it per pixel, predicted through a pixel-shuffle head. Heads are dropped afterwards.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from typing import Literal

from pydantic import Field, field_validator
from torch import Tensor, nn

from sparseg.methods import register_method
from sparseg.methods.base import Method, MethodConfig, Step, step_generator

PROBE_SIZE = 112  # a multiple of 14 and 16: the input used once to find the model's feature stride


class DDePConfig(MethodConfig):
    sigma: float = Field(0.2, gt=0)  # σ, noise scale on images in [-1, 1] (pretrain.md §1)
    gamma: tuple[float, float] = (0.0, 1.0)  # γ ~ U[γ_min, γ_max] per image: signal share of x̃
    noise_grid: Literal["features", "input"] = "features"  # where ε lives: the decoder's grid, or every pixel
    monitor_pixels: int = Field(4096, ge=16)  # pixels sampled for the collapse monitor

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


def denoising_loss(predicted: Tensor, noise: Tensor, valid: Tensor) -> Tensor:
    """Mean squared error ||ε̂ − ε||² over valid pixels (crop padding excluded), averaged over channels."""
    error = (predicted.float() - noise).pow(2).mean(1)
    return (error * valid).sum() / valid.sum().clamp(min=1)


def embedding_spread(features: Tensor, generator: torch.Generator, pixels: int) -> Tensor:
    """Collapse monitor: mean per-dimension std of L2-normalised pixel features, x √C.

    About 1 for features spread over the sphere, 0 when every pixel maps to one vector (collapse).
    """
    flat = F.normalize(features.detach().float().permute(0, 2, 3, 1).reshape(-1, features.shape[1]), dim=1)
    pick = torch.randperm(flat.shape[0], generator=generator)[:pixels].to(flat.device)
    return flat[pick].std(0).mean() * math.sqrt(flat.shape[1])


class GridHead(nn.Module):
    """1x1 conv to C_out·r² channels and pixel shuffle: ``fts`` [B,C,h,w] -> [B,C_out,r·h,r·w], resized to ``size``."""

    def __init__(self, channels: int, out_channels: int, upscale: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels * upscale**2, 1)
        self.shuffle = nn.PixelShuffle(upscale)

    def forward(self, fts: Tensor, size: tuple[int, int]) -> Tensor:
        out = self.shuffle(self.conv(fts))
        return out if out.shape[-2:] == size else F.interpolate(out, size=size, mode="bilinear", align_corners=False)


@register_method("ddep")
class DDeP(Method):
    Config = DDePConfig
    streams = ("unlabeled",)
    pretraining = True
    evaluation = "linear_probe"
    unused_parameters = True  # the class heads (classifier, aux) get no gradient while pretraining

    def __init__(self, model: nn.Module, cfg: DDePConfig, context) -> None:
        super().__init__(model, cfg, context)
        was_training = model.training
        with torch.no_grad():
            fts = model.eval()(torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE))["fts"]
        model.train(was_training)
        self.stride = max(1, round(PROBE_SIZE / fts.shape[-1]))  # input pixels per decoder cell
        self.head = GridHead(fts.shape[1], 3, 1 if cfg.noise_grid == "features" else self.stride)
        self._spread = float("nan")

    def forward(self, batch: dict[str, dict[str, Tensor]], step: Step) -> dict[str, Tensor]:
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
        self._spread = float(embedding_spread(fts, generator, self.cfg.monitor_pixels))
        cell_valid = F.interpolate(valid[:, None], size=grid, mode="nearest")[:, 0]
        loss = denoising_loss(predicted, noise, cell_valid)
        return {"loss": loss, "denoise": loss.detach()}

    def extra_logs(self) -> dict[str, float]:
        return {"embed_spread": self._spread}
