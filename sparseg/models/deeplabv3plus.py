"""DeepLabV3+ on a ResNet encoder: ASPP, low-level fusion, and optional projection / aux heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseg.models.resnet import ResNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> list[nn.Module]:
    padding = dilation * (kernel - 1) // 2
    return [
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    # dgcl.md §3, agmm.md §4: bilinear with align_corners=True throughout the decoder
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class SegmentationModel(nn.Module):
    """Base of sparseg segmentation models (docs/architecture.md, "Model").

    Holds ``encoder``; takes images in [0, 1] and normalises them with ImageNet statistics.
    """

    encoder: nn.Module
    task_heads: tuple[str, ...] = ("classifier", "aux", "projection")  # trained per task, never pretrained

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: Tensor) -> Tensor:
        """Check ``x`` is a [B, 3, H, W] float batch in [0, 1] and apply ImageNet normalisation."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            hint = ""
            if isinstance(x, Tensor) and x.dim() == 3 and x.shape[0] == 3:
                hint = "; add a batch dimension with x.unsqueeze(0)"
            elif isinstance(x, Tensor) and x.dim() == 4 and x.shape[-1] == 3:
                hint = "; channels-last input? use x.permute(0, 3, 1, 2)"
            raise ValueError(f"expected images [B, 3, H, W] of RGB in [0, 1], got {got}{hint}")
        if not x.is_floating_point():
            raise ValueError(
                f"expected float images in [0, 1], got {x.dtype}; convert with x.float() / 255"
            )
        return (x - self.mean) / self.std

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"backbone": encoder parameters, "head": all other parameters}``."""
        backbone = list(self.encoder.parameters())
        backbone_ids = {id(p) for p in backbone}
        head = [p for p in self.parameters() if id(p) not in backbone_ids]
        return {"backbone": backbone, "head": head}

    @torch.inference_mode()
    def predict(self, x: Tensor) -> Tensor:
        """Logits [B, K, H, W] at input size (current train/eval mode; call ``eval()`` first)."""
        return _resize(self(x)["pred"], x.shape[-2:])


class ASPP(nn.Module):
    """Image pooling, 1x1 and three atrous 3x3 branches, fused by a 3x3 conv (dgcl.md §3)."""

    def __init__(self, in_ch: int, out_ch: int, rates: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_ch, out_ch))
        self.branches = nn.ModuleList(
            [nn.Sequential(*_conv_bn_relu(in_ch, out_ch))]
            + [nn.Sequential(*_conv_bn_relu(in_ch, out_ch, 3, rate)) for rate in rates]
        )
        self.project = nn.Sequential(
            *_conv_bn_relu(out_ch * (len(rates) + 2), out_ch, 3), nn.Dropout2d(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        pooled = _resize(self.pool(x), x.shape[-2:])
        return self.project(torch.cat([pooled] + [branch(x) for branch in self.branches], dim=1))


class DeepLabV3Plus(SegmentationModel):
    """DeepLabV3+ returning ``{pred, fts[, rep][, aux]}``, all at layer1 (stride-4) resolution.

    dgcl.md §3: ``fts`` is the post-ReLU fused decoder feature, ``pred`` a 1x1 conv on it,
    ``rep`` (when ``proj_dim > 0``) an unnormalised per-pixel MLP on ``fts``, ``aux`` (when
    ``aux_head``) a head on layer3, upsampled to the same size.
    """

    def __init__(
        self,
        encoder: ResNet,
        num_classes: int,
        aspp_rates: Sequence[int] = (6, 12, 18),
        decoder_channels: int = 256,
        dropout: float = 0.1,
        proj_dim: int = 0,
        aux_head: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.encoder = encoder
        self.num_classes = num_classes
        ch = decoder_channels
        self.aspp = ASPP(encoder.channels["layer4"], ch, aspp_rates, dropout)
        self.reduce = nn.Sequential(*_conv_bn_relu(encoder.channels["layer1"], 48))
        self.fuse = nn.Sequential(
            *_conv_bn_relu(ch + 48, ch, 3),
            nn.Dropout2d(dropout),
            *_conv_bn_relu(ch, ch, 3),
            nn.Dropout2d(dropout),
        )
        self.classifier = nn.Conv2d(ch, num_classes, 1)
        self.projection = None
        if proj_dim > 0:
            # dgcl.md §3: per-pixel Linear-BN-ReLU-Linear (BatchNorm2d = BatchNorm1d over pixels)
            self.projection = nn.Sequential(
                *_conv_bn_relu(ch, proj_dim), nn.Conv2d(proj_dim, proj_dim, 1)
            )
        self.aux = None
        if aux_head:
            self.aux = nn.Sequential(
                *_conv_bn_relu(encoder.channels["layer3"], ch, 3),
                nn.Dropout2d(dropout),
                nn.Conv2d(ch, num_classes, 1),
            )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.decode(self.encode(x))

    def encode(self, x: Tensor) -> dict[str, Tensor]:
        """Encoder maps ``layer1..layer4`` of images ``x`` in [0, 1]: the input of ``decode``."""
        return self.encoder(self.normalize(x))

    def decode(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """The heads on (possibly perturbed) encoder maps: ``forward(x) == decode(encode(x))``."""
        size = features["layer1"].shape[-2:]
        context = _resize(self.aspp(features["layer4"]), size)
        fts = self.fuse(torch.cat([context, self.reduce(features["layer1"])], dim=1))
        out = {"pred": self.classifier(fts), "fts": fts}
        if self.projection is not None:
            out["rep"] = self.projection(fts)
        if self.aux is not None:
            out["aux"] = _resize(self.aux(features["layer3"]), size)
        return out
