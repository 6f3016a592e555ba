"""Encoder weight loading: layouts, containers and refusals (protocols.md §5). No downloads."""

import logging

import pytest
import torch

from sparseg.config import ModelConfig
from sparseg.models import DeepLabV3Plus, ResNet, WeightsError, create_model, load_encoder_weights

W = 8  # encoder width for every test


def random_state(encoder, seed=0):
    """A state dict with the encoder's keys and shapes but values unlike its initialisation."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in encoder.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 1000, (), generator=gen)
        else:
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
    return state


def assert_loaded(encoder, state):
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, state[key]), key


def snapshot(encoder):
    return {k: v.clone() for k, v in encoder.state_dict().items()}


def to_mmseg(state):
    names = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3", "conv1.4": "stem.4",
             "conv1.6": "stem.6", "bn1": "stem.7"}
    renamed = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        renamed[f"{names.get(module, module)}.{param}"] = value
    return renamed


@pytest.mark.parametrize("depth", [50, 101])
def test_deep_stem_file_round_trips_exactly(tmp_path, depth):
    state = random_state(ResNet(depth, width=W))
    path = tmp_path / "resnet.pth"
    torch.save(state, path)
    encoder = ResNet(depth, width=W)
    report = load_encoder_weights(encoder, path)
    assert report.layout == "deepstem"
    assert report.missing == [] and report.unexpected == [] and report.dropped == []
    assert sorted(report.loaded) == sorted(state)
    assert_loaded(encoder, state)


@pytest.mark.parametrize("layout", ["torchvision", "auto"])
def test_torchvision_layout_drops_fc_and_tolerates_missing_batch_counters(layout):
    encoder = ResNet(18, stem="plain", width=W)
    state = random_state(encoder)
    file_state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    file_state |= {"fc.weight": torch.rand(10, 8 * W), "fc.bias": torch.rand(10)}
    before = snapshot(encoder)
    report = load_encoder_weights(encoder, file_state, layout=layout)
    assert report.layout == "torchvision"
    assert report.dropped == ["fc.weight", "fc.bias"]
    assert report.missing and all(k.endswith("num_batches_tracked") for k in report.missing)
    for key, value in encoder.state_dict().items():
        expected = before[key] if key.endswith("num_batches_tracked") else state[key]
        assert torch.equal(value, expected), key


@pytest.mark.parametrize("stem", ["deep", "plain"])  # timm resnet50s / resnet50
def test_timm_layout_loads_both_stems(stem):
    encoder = ResNet(50, stem=stem, width=W)
    state = random_state(encoder)
    report = load_encoder_weights(encoder, state | {"fc.weight": torch.rand(3, 32 * W)}, "timm")
    assert report.layout == "timm" and report.dropped == ["fc.weight"]
    assert_loaded(encoder, state)


def test_mmseg_checkpoint_stem_is_renamed(tmp_path):
    state = random_state(ResNet(50, width=W))
    checkpoint = {
        "meta": {"mmseg_version": "1.2.2", "epoch": 4},
        "state_dict": {f"backbone.{k}": v for k, v in to_mmseg(state).items()}
        | {"decode_head.conv_seg.weight": torch.rand(19, 16, 1, 1)},
    }
    torch.save(checkpoint, tmp_path / "mmseg.pth")
    encoder = ResNet(50, width=W)
    report = load_encoder_weights(encoder, tmp_path / "mmseg.pth")
    assert report.layout == "mmseg" and report.container == "state_dict"
    assert report.dropped == ["decode_head.conv_seg.weight"]
    assert_loaded(encoder, state)


@pytest.mark.parametrize(
    "container, prefix",
    [("model", "module.backbone."), ("model_state", "module.encoder.")],  # UniMatch, U2PL/DGCL
)
def test_module_prefixed_whole_model_checkpoint(tmp_path, container, prefix):
    state = random_state(ResNet(101, width=W))
    model_state = {prefix + k: v for k, v in state.items()}
    model_state["module.head.b0.0.weight"] = torch.rand(4, 4, 1, 1)
    optimizer = {"state": {}, "param_groups": []}
    checkpoint = {container: model_state, "optimizer": optimizer, "epoch": 7}
    torch.save(checkpoint, tmp_path / "latest.pth")
    encoder = ResNet(101, width=W)
    report = load_encoder_weights(encoder, str(tmp_path / "latest.pth"))
    assert report.container == container and report.dropped == ["head.b0.0.weight"]
    assert_loaded(encoder, state)


def test_sparseg_model_state_dict_loads_into_an_encoder():
    source = DeepLabV3Plus(ResNet(18, width=W), num_classes=3, decoder_channels=8)
    encoder = ResNet(18, width=W)
    report = load_encoder_weights(encoder, source.state_dict())
    assert report.dropped and all(not k.startswith("encoder.") for k in report.dropped)
    assert_loaded(encoder, source.encoder.state_dict())


def test_shape_mismatch_names_key_and_shapes_and_loads_nothing():
    encoder = ResNet(50, width=W)
    state = random_state(encoder)
    state["layer2.0.conv1.weight"] = torch.rand(2 * W, 4 * W + 1, 1, 1)
    before = snapshot(encoder)
    with pytest.raises(WeightsError) as err:
        load_encoder_weights(encoder, state)
    message = str(err.value)
    assert "layer2.0.conv1.weight" in message
    assert f"[{2 * W}, {4 * W + 1}, 1, 1] in the file vs [{2 * W}, {4 * W}, 1, 1] in the model" in message
    assert "\n" not in message
    assert_loaded(encoder, before)


def test_half_width_deep_stem_gets_a_hint():
    encoder = ResNet(50, width=W)
    state = random_state(encoder)
    state["conv1.0.weight"] = torch.rand(W // 2, 3, 3, 3)
    with pytest.raises(WeightsError, match="resnetXXc"):
        load_encoder_weights(encoder, state)


def test_missing_backbone_keys_are_listed():
    encoder = ResNet(50, width=W)
    state = random_state(encoder)
    del state["layer3.1.conv2.weight"], state["layer4.0.downsample.1.running_var"]
    before = snapshot(encoder)
    with pytest.raises(WeightsError, match=r"lacks 2 .*layer3.1.conv2.weight, layer4.0.downsample"):
        load_encoder_weights(encoder, state)
    assert_loaded(encoder, before)


def test_file_for_a_deeper_resnet_is_refused():
    blocks = r"17 blocks .*\(layer3.6, layer3.7, layer3.8 ... and 14 more\).*deeper ResNet"
    with pytest.raises(WeightsError, match=blocks):
        load_encoder_weights(ResNet(50, width=W), random_state(ResNet(101, width=W)))


def test_unexpected_non_block_keys_are_reported():
    encoder = ResNet(18, width=W)
    state = random_state(encoder) | {"extra.scale": torch.ones(1)}
    assert load_encoder_weights(encoder, state).unexpected == ["extra.scale"]


@pytest.mark.parametrize("file_stem, model_stem", [("plain", "deep"), ("deep", "plain")])
def test_stem_mismatch_says_to_set_model_stem(file_stem, model_stem):
    state = random_state(ResNet(50, stem=file_stem, width=W))
    with pytest.raises(WeightsError, match=f"set model.stem: {file_stem}"):
        load_encoder_weights(ResNet(50, stem=model_stem, width=W), state)


def test_explicit_layout_must_match_file():
    state = random_state(ResNet(18, stem="deep", width=W))
    with pytest.raises(WeightsError, match="'deepstem' layout, not 'torchvision'"):
        load_encoder_weights(ResNet(18, stem="deep", width=W), state, layout="torchvision")


def test_avgpool_downsample_variant_is_refused():
    # timm resnetXXd: downsample = (AvgPool2d, conv, BN), so conv -> .1 and BN -> .2
    shift = {"downsample.1.": "downsample.2.", "downsample.0.": "downsample.1."}
    state = {}
    for key, value in random_state(ResNet(50, width=W)).items():
        for old, new in shift.items():
            key = key.replace(old, new)
        state[key] = value
    with pytest.raises(WeightsError, match="avg-pool downsample"):
        load_encoder_weights(ResNet(50, width=W), state, layout="timm")


@pytest.mark.parametrize("content", [b"definitely not a checkpoint", b"PK\x03\x04truncated"])
def test_unreadable_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="broken.pth"):
        load_encoder_weights(ResNet(18, width=W), path)


def test_missing_file_and_non_resnet_state():
    with pytest.raises(WeightsError, match="not found"):
        load_encoder_weights(ResNet(18, width=W), "/nonexistent/resnet101.pth")
    with pytest.raises(WeightsError, match="not a ResNet"):
        load_encoder_weights(ResNet(18, width=W), {"blocks.0.weight": torch.ones(1)})


def test_create_model_loads_pretrained_and_logs_report(tmp_path, caplog):
    state = random_state(ResNet(34, stem="plain", width=W))
    torch.save(state | {"fc.weight": torch.rand(2, 8 * W)}, tmp_path / "resnet34.pth")
    cfg = ModelConfig(encoder="resnet34", stem="plain", width=W, decoder_channels=8,
                      pretrained=str(tmp_path / "resnet34.pth"), pretrained_layout="torchvision")
    with caplog.at_level(logging.INFO, logger="sparseg.models"):
        model = create_model(cfg, num_classes=2)
    assert_loaded(model.encoder, state)
    assert "layout torchvision" in caplog.text and "1 dropped (fc.weight)" in caplog.text
