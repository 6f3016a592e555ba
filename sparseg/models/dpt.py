"""DPT head on a DINOv2 encoder (UniMatch V2's model, depmatch.md §2 "V2 model").

The encoder is a ``transformers`` ``Dinov2Model`` (optional extra ``hf``; imported only when a model is
built). Four transformer blocks are tapped; each tap is layer-normed, its patch tokens reshaped to a
[B, D, h, w] map on the patch grid, and the DPT head reassembles them at 4x, 2x, 1x and 1/2x the grid,
fuses them coarse to fine, and predicts at 8x the grid (``path_1``, returned as ``fts``).

Input sizes: images are resized (bilinear, align_corners=True) to the nearest multiple of the patch size
(14) inside ``encode``, as UniMatch V2 does at evaluation; training crops of 518 or 798 are already
multiples. ``pred`` is therefore at 8/14 of the (resized) input: callers upsample it to the label size,
as for DeepLabV3+ (use ``pred.shape[-2:]``, never a fixed stride).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from sparseg.models.deeplabv3plus import SegmentationModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dinov2Preset:
    """Backbone shape and DPT head widths of one UniMatch V2 model size."""

    hub_id: str
    hidden_size: int
    depth: int
    heads: int
    layers: tuple[int, int, int, int]  # tapped blocks (0-based)
    features: int  # fusion width
    out_channels: tuple[int, int, int, int]  # reassembled widths, shallow to deep


DINOV2_PRESETS: dict[str, Dinov2Preset] = {
    "dinov2_small": Dinov2Preset("facebook/dinov2-small", 384, 12, 6, (2, 5, 8, 11), 64, (48, 96, 192, 384)),
    "dinov2_base": Dinov2Preset("facebook/dinov2-base", 768, 12, 12, (2, 5, 8, 11), 128, (96, 192, 384, 768)),
    "dinov2_large": Dinov2Preset(
        "facebook/dinov2-large", 1024, 24, 16, (4, 11, 17, 23), 256, (256, 512, 1024, 1024)
    ),
}


def dinov2_encoder(encoder: str, pretrained: str | None = None) -> nn.Module:
    """A ``Dinov2Model``: loaded from ``pretrained`` (a local directory or a hub id, which needs network
    access or the Hugging Face cache), else randomly initialised with the preset's shape (518 px, patch 14)."""
    try:
        from transformers import Dinov2Config, Dinov2Model
    except ImportError:
        raise ImportError("model.name=dpt needs transformers: pip install 'sparseg[hf]'") from None
    preset = DINOV2_PRESETS[encoder]
    if pretrained:
        model = Dinov2Model.from_pretrained(pretrained)
        if model.config.hidden_size != preset.hidden_size:
            logger.warning(
                "%s has hidden size %d but model.encoder %s expects %d; the head keeps the %s widths",
                pretrained, model.config.hidden_size, encoder, preset.hidden_size, encoder,
            )
        return model
    config = Dinov2Config(
        hidden_size=preset.hidden_size, num_hidden_layers=preset.depth, num_attention_heads=preset.heads,
        patch_size=14, image_size=518, layerscale_value=1.0,
    )
    return Dinov2Model(config)


def _upsample(x: Tensor, size: Sequence[int] | None) -> Tensor:
    if size is None:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class ResidualConvUnit(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convolutions with bias, no normalisation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """DPT fusion: add the refined skip (if any), refine, upsample (x2 or to ``size``), 1x1 conv."""

    def __init__(self, channels: int, has_skip: bool = True) -> None:
        super().__init__()
        self.skip_unit = ResidualConvUnit(channels) if has_skip else None
        self.unit = ResidualConvUnit(channels)
        self.out_conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, skip: Tensor | None = None, size: Sequence[int] | None = None) -> Tensor:
        if skip is not None:
            x = x + self.skip_unit(skip)
        return self.out_conv(_upsample(self.unit(x), size))


class DPT(SegmentationModel):
    """DINOv2 + DPT returning ``{pred, fts}`` at 8x the patch grid (module docstring).

    ``encode``/``decode`` split the forward at the tapped token maps, so a method can perturb them
    (``forward(x) == decode(encode(x))``). Blocks after the last tap are removed, and the mask token
    (masked-image pre-training only) is frozen: every remaining parameter gets a gradient.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        layers: Sequence[int] = (2, 5, 8, 11),
        features: int = 64,
        out_channels: Sequence[int] = (48, 96, 192, 384),
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        depth = len(encoder.encoder.layer)
        layers = tuple(layers)
        if len(layers) != 4 or list(layers) != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= depth:
            raise ValueError(f"model.dpt_layers must be 4 increasing block indices below {depth}, got {list(layers)}")
        del encoder.encoder.layer[layers[-1] + 1 :]
        encoder.embeddings.mask_token.requires_grad_(False)
        self.encoder = encoder
        self.layers = layers
        self.patch_size = encoder.config.patch_size
        self.num_classes = num_classes
        dim = encoder.config.hidden_size
        c = list(out_channels)
        self.projects = nn.ModuleList([nn.Conv2d(dim, ch, 1) for ch in c])
        self.resize = nn.ModuleList([
            nn.ConvTranspose2d(c[0], c[0], 4, stride=4),
            nn.ConvTranspose2d(c[1], c[1], 2, stride=2),
            nn.Identity(),
            nn.Conv2d(c[3], c[3], 3, stride=2, padding=1),
        ])
        self.layer_rn = nn.ModuleList([nn.Conv2d(ch, features, 3, padding=1, bias=False) for ch in c])
        # fusion[0] is the finest (reference refinenet1); the deepest block has no skip input
        self.fusion = nn.ModuleList([FusionBlock(features, has_skip=i < 3) for i in range(4)])
        self.classifier = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(features, num_classes, 1)
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.decode(self.encode(x))

    def encode(self, x: Tensor) -> dict[str, Tensor]:
        """Layer-normed patch tokens of the tapped blocks as maps [B, D, h, w]: ``{"block<i>": ...}``."""
        x = self.normalize(x)
        p = self.patch_size
        size = tuple(max(int(s / p + 0.5), 1) * p for s in x.shape[-2:])
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        grid = (size[0] // p, size[1] // p)
        hidden = self.encoder.embeddings(x)
        taps = {}
        for index, block in enumerate(self.encoder.encoder.layer):
            hidden = block(hidden)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden  # transformers 4.x returns tuples
            if index in self.layers:
                tokens = self.encoder.layernorm(hidden)[:, 1:]  # drop the class token
                taps[f"block{index}"] = tokens.transpose(1, 2).reshape(len(x), -1, *grid)
        return taps

    def decode(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Reassemble, fuse coarse to fine, classify: ``pred`` [B,K,8h,8w] and ``fts`` (``path_1``)."""
        maps = [
            rn(resize(project(features[f"block{i}"])))
            for i, project, resize, rn in zip(self.layers, self.projects, self.resize, self.layer_rn)
        ]
        path = self.fusion[3](maps[3], size=maps[2].shape[-2:])
        path = self.fusion[2](path, maps[2], size=maps[1].shape[-2:])
        path = self.fusion[1](path, maps[1], size=maps[0].shape[-2:])
        path = self.fusion[0](path, maps[0])
        return {"pred": self.classifier(path), "fts": path}
