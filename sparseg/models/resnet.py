"""ResNet-18/34/50/101 encoders with a deep or plain stem, output stride 8/16/32 and multi-grid.

Parameter names follow torchvision (``layerN.M.conv1/bn1/...``, ``downsample.0/.1``); the deep stem
follows the community ``resnet101.pth`` / timm ``resnetXXs`` layout (protocols.md §5).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

# depth -> (block type, blocks per stage)
_STAGES: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}

# output stride -> dilate (replace stride by dilation) in layer2, layer3, layer4
_DILATE: dict[int, tuple[bool, bool, bool]] = {
    32: (False, False, False),
    16: (False, False, True),
    8: (False, True, True),
}


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self, in_ch: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 x4 with a residual connection (ResNet-50/101, v1.5)."""

    expansion = 4

    def __init__(
        self, in_ch: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(in_ch, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _make_stage(
    block: type[BasicBlock | Bottleneck],
    in_ch: int,
    planes: int,
    stride: int,
    dilations: list[int],
) -> nn.Sequential:
    """One ResNet stage; the first block takes the stride and a 1x1 projection shortcut."""
    out_ch = planes * block.expansion
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(_conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))
    layers = [block(in_ch, planes, stride, dilations[0], downsample)]
    layers += [block(out_ch, planes, 1, d, None) for d in dilations[1:]]
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """ResNet encoder returning ``{"layer1": ..., "layer4": ...}`` (no classifier).

    ``stem="deep"``: three 3x3 convs (w, w, 2w) and a ceil-mode max-pool, as in the community
    ``resnet101.pth`` (protocols.md §5, dgcl.md §3); ``"plain"``: torchvision's 7x7 conv.
    ``output_stride`` replaces strides by dilation as torchvision's ``replace_stride_with_dilation``
    (the first block of a dilated stage keeps the previous dilation); ``multi_grid`` multiplies the
    dilation of layer4 block i by ``multi_grid[i % len]``.
    """

    def __init__(
        self,
        depth: int = 101,
        stem: str = "deep",
        width: int = 64,
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if depth not in _STAGES:
            raise ValueError(f"ResNet depth must be one of {sorted(_STAGES)}, got {depth}")
        if stem not in ("deep", "plain"):
            raise ValueError(f"ResNet stem must be 'deep' or 'plain', got {stem!r}")
        if output_stride not in _DILATE:
            raise ValueError(f"output_stride must be one of {sorted(_DILATE)}, got {output_stride}")
        if width < 1:
            raise ValueError(f"ResNet width must be positive, got {width}")
        if multi_grid is not None and (len(multi_grid) == 0 or min(multi_grid) < 1):
            raise ValueError(f"multi_grid must be positive integers, got {multi_grid}")
        self.depth = depth
        self.stem = stem
        self.width = width
        self.output_stride = output_stride
        self.multi_grid = tuple(multi_grid) if multi_grid is not None else None

        if stem == "deep":
            # protocols.md §5: conv1.{0,1,3,4,6} + bn1 (2w); max-pool with ceil mode (U2PL/DGCL)
            self.conv1 = nn.Sequential(
                _conv3x3(3, width, stride=2),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                _conv3x3(width, width),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                _conv3x3(width, 2 * width),
            )
            stem_channels = 2 * width
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        else:
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            stem_channels = width
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)

        kind, blocks = _STAGES[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        in_ch, dilation = stem_channels, 1
        self.channels: dict[str, int] = {}
        for i, (num_blocks, dilate) in enumerate(zip(blocks, (False,) + _DILATE[output_stride])):
            name, planes, stride = f"layer{i + 1}", width * 2**i, 1 if i == 0 else 2
            previous_dilation = dilation
            if dilate:  # torchvision replace_stride_with_dilation
                dilation, stride = dilation * stride, 1
            # first block keeps the previous dilation; multi-grid scales layer4's blocks
            grid = self.multi_grid if name == "layer4" and self.multi_grid else (1,)
            block_dilations = [
                (previous_dilation if j == 0 else dilation) * grid[j % len(grid)]
                for j in range(num_blocks)
            ]
            setattr(self, name, _make_stage(block, in_ch, planes, stride, block_dilations))
            in_ch = self.channels[name] = planes * block.expansion
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = {}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            features[name] = x
        return features

    def block_dilations(self, layer: str) -> list[int]:
        """Dilation of each block's 3x3 conv in ``layer`` (e.g. ``"layer4"``)."""
        stage: nn.Sequential = getattr(self, layer)
        return [int((b.conv2 if isinstance(b, Bottleneck) else b.conv1).dilation[0]) for b in stage]
