"""What every pretraining method shares (docs/methods/pretrain.md): one image stream, the probe as evaluation,
a per-cell head on the decoder feature, and the collapse monitor."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from sparseg.eval import EvalResult
from sparseg.eval.probe import linear_probe
from sparseg.methods.base import EvalRequest, Method, MethodConfig, MethodContext
from sparseg.models import probe_forward
from sparseg.models.weights import pretrained_file

PROBE_SIZE = 112  # a multiple of 14 and 16: the input used once to find the model's feature grid


class PretrainingConfig(MethodConfig):
    monitor_pixels: int = Field(4096, ge=16)  # pixels sampled per step for the collapse monitor


def embedding_spread(features: Tensor, generator: torch.Generator, pixels: int) -> Tensor:
    """Collapse monitor: mean per-dimension std of L2-normalised pixel features, x √C.

    About 1 for features spread over the sphere, 0 when every pixel maps to one vector (collapse).
    """
    flat = F.normalize(features.detach().float().permute(0, 2, 3, 1).reshape(-1, features.shape[1]), dim=1)
    pick = torch.randperm(flat.shape[0], generator=generator)[:pixels].to(flat.device)
    return flat[pick].std(0).mean() * math.sqrt(flat.shape[1])


def weighted_mse(predicted: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Squared error averaged over channels, then over pixels with weight 1 (``weight`` [B,H,W] in {0, 1}):
    the loss of both pretraining methods (DDeP: valid decoder cells, MIM: masked pixels inside the crop)."""
    error = (predicted.float() - target).pow(2).mean(1)
    return (error * weight).sum() / weight.sum().clamp(min=1)


class GridHead(nn.Module):
    """1x1 conv to C_out·r² channels and pixel shuffle: ``fts`` [B,C,h,w] -> [B,C_out,r·h,r·w], resized to ``size``."""

    def __init__(self, channels: int, out_channels: int, upscale: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels * upscale**2, 1)
        self.shuffle = nn.PixelShuffle(upscale)

    def forward(self, fts: Tensor, size: tuple[int, int]) -> Tensor:
        out = self.shuffle(self.conv(fts))
        return out if out.shape[-2:] == size else F.interpolate(out, size=size, mode="bilinear", align_corners=False)


class PretrainingMethod(Method):
    """Base of the pretraining methods: images only, scored by the linear probe, class heads unused, the
    transferable weights written to ``pretrained.pt`` at every checkpoint.

    Sets ``stride`` (input pixels per decoder cell) and ``fts_channels`` from one forward pass; subclasses
    record ``spread`` (``embedding_spread`` of their step's features) for the logs.
    """

    streams = ("unlabeled",)
    pretraining = True
    score_name = "probe"
    unused_parameters = True  # the class heads (classifier, aux) get no gradient while pretraining

    def __init__(self, model: nn.Module, cfg: PretrainingConfig, context: MethodContext) -> None:
        super().__init__(model, cfg, context)
        fts = probe_forward(model, PROBE_SIZE)["fts"]
        self.stride = max(1, round(PROBE_SIZE / fts.shape[-1]))
        self.fts_channels = fts.shape[1]
        self.spread = float("nan")

    def extra_logs(self) -> dict[str, float]:
        return {"embed_spread": self.spread}

    def evaluate(self, model: nn.Module, dataset, request: EvalRequest) -> EvalResult:
        """The linear probe on frozen features (sparseg/eval/probe.py); every process probes the whole list."""
        return linear_probe(model, dataset, self.num_classes, request.device, class_names=request.class_names,
                            max_images=request.max_images, seed=request.seed, scale=request.cfg.scales[0])

    def checkpoint_files(self, state):
        """``pretrained.pt``: what ``model.pretrained`` loads, the model without its task heads (pretrain.md §3)."""
        return {"pretrained.pt": pretrained_file(self.model, state["config"], state["iteration"])}
