"""ResNet encoder: shapes, torchvision/deep-stem key layout, dilation and multi-grid."""

import pytest
import torch

from sparseg.models import ResNet

# torchvision parameter counts minus the fc layer (resnetN: total - (C*1000 + 1000))
TORCHVISION_PARAMS_WITHOUT_FC = {18: 11_176_512, 34: 21_284_672, 50: 23_508_032, 101: 42_500_160}


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_plain_stem_matches_torchvision_parameter_count(depth):
    with torch.device("meta"):
        encoder = ResNet(depth, stem="plain", width=64)
    assert sum(p.numel() for p in encoder.parameters()) == TORCHVISION_PARAMS_WITHOUT_FC[depth]
    assert not any(k.startswith("fc.") for k in encoder.state_dict())


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_feature_shapes_odd_input(depth, output_stride):
    encoder = ResNet(depth, stem="deep", width=4, output_stride=output_stride).eval()
    with torch.no_grad():
        features = encoder(torch.rand(1, 3, 65, 65))
    expansion = 1 if depth < 50 else 4
    # 65 -> stem 33 -> pool 17 (stride 4) -> 9 (stride 8) -> 5 (stride 16) -> 3 (stride 32)
    sizes = {8: (17, 9, 9, 9), 16: (17, 9, 5, 5)}[output_stride]
    for i, (name, size) in enumerate(zip(("layer1", "layer2", "layer3", "layer4"), sizes)):
        assert features[name].shape == (1, 4 * 2**i * expansion, size, size), name
        assert encoder.channels[name] == 4 * 2**i * expansion


def test_output_stride_32():
    features = ResNet(18, width=4, output_stride=32).eval()(torch.rand(1, 3, 65, 65))
    assert features["layer4"].shape[-1] == 3


def test_stride4_size_plain_vs_deep_on_even_input():
    # plain stem: ceil(64/4) = 16; deep stem's ceil-mode max-pool (protocols.md §5) gives 17
    x = torch.rand(1, 3, 64, 64)
    assert ResNet(18, stem="plain", width=4).eval()(x)["layer1"].shape[-1] == 16
    assert ResNet(18, stem="deep", width=4).eval()(x)["layer1"].shape[-1] == 17


def test_deep_stem_key_layout():
    w = 8
    shapes = {k: tuple(v.shape) for k, v in ResNet(50, stem="deep", width=w).state_dict().items()}
    # protocols.md §5: conv1.{0,1,3,4,6} + bn1 (2w); layer1 in-channels 2w
    assert shapes["conv1.0.weight"] == (w, 3, 3, 3)
    assert shapes["conv1.1.weight"] == (w,)
    assert shapes["conv1.3.weight"] == (w, w, 3, 3)
    assert shapes["conv1.4.running_var"] == (w,)
    assert shapes["conv1.6.weight"] == (2 * w, w, 3, 3)
    assert shapes["bn1.weight"] == (2 * w,)
    assert shapes["layer1.0.conv1.weight"] == (w, 2 * w, 1, 1)
    assert shapes["layer1.0.downsample.0.weight"] == (4 * w, 2 * w, 1, 1)
    assert shapes["layer1.0.downsample.1.weight"] == (4 * w,)
    assert shapes["layer4.2.conv3.weight"] == (32 * w, 8 * w, 1, 1)
    assert "conv1.weight" not in shapes


def test_plain_stem_key_layout():
    w = 8
    shapes = {k: tuple(v.shape) for k, v in ResNet(18, stem="plain", width=w).state_dict().items()}
    assert shapes["conv1.weight"] == (w, 3, 7, 7)
    assert shapes["bn1.weight"] == (w,)
    assert shapes["layer1.0.conv1.weight"] == (w, w, 3, 3)
    assert shapes["layer2.0.downsample.0.weight"] == (2 * w, w, 1, 1)
    assert "layer1.0.downsample.0.weight" not in shapes  # BasicBlock layer1 keeps its width
    assert not any(".conv3." in k for k in shapes)


@pytest.mark.parametrize(
    "output_stride, multi_grid, layer3, layer4",
    [
        (32, None, [1] * 6, [1, 1, 1]),
        (16, None, [1] * 6, [1, 2, 2]),  # torchvision: the first dilated block keeps dilation 1
        (16, (2, 2, 4), [1] * 6, [2, 4, 8]),  # DGCL VOC (dgcl.md §3)
        (8, None, [1, 2, 2, 2, 2, 2], [2, 4, 4]),  # AGMM VOC layer4 dilations (agmm.md §4)
        (8, (2, 2, 4), [1, 2, 2, 2, 2, 2], [4, 8, 16]),  # AGMM Cityscapes multi-grid (4, 8, 16)
        (16, (1, 2), [1] * 6, [1, 4, 2]),  # a shorter grid cycles
    ],
)
def test_dilations_and_multi_grid(output_stride, multi_grid, layer3, layer4):
    encoder = ResNet(50, width=4, output_stride=output_stride, multi_grid=multi_grid)
    assert encoder.block_dilations("layer3") == layer3
    assert encoder.block_dilations("layer4") == layer4
    assert all(b.conv2.padding[0] == b.conv2.dilation[0] for b in encoder.layer4)


def test_init_kaiming_and_batchnorm():
    encoder = ResNet(50, width=16)
    conv = encoder.layer3[1].conv2.weight  # fan_out = 64 * 9
    assert abs(conv.std().item() - (2 / (64 * 9)) ** 0.5) < 0.01
    bns = [m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)


@pytest.mark.parametrize(
    "kwargs", [{"depth": 152}, {"stem": "7x7"}, {"output_stride": 4}, {"multi_grid": (0, 1, 2)}]
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        ResNet(**{"depth": 18, "width": 4, **kwargs})
