"""`sparseg pretrain` files: the encoder and decoder load into each model family with shape checks; the task
heads keep their initialisation; a file for another model is refused naming the layer and shapes; the
default rescaling keeps the network's function and puts every conv back at its initial norm."""

import pytest
import torch

from sparseg.config import ModelConfig
from sparseg.engine.checkpoint import save_checkpoint
from sparseg.models import DPT, WeightsError, create_model
from sparseg.models.weights import (
    conv_bn_pairs,
    load_pretrained_model,
    pretrained_file,
    read_pretrained,
    transferable_state,
)


def resnet_config(**options):
    return ModelConfig(**{"encoder": "resnet18", "stem": "plain", "width": 8, "decoder_channels": 16, **options})


def write_pretrained(model, model_cfg, path):
    config = {"model": model_cfg.model_dump(mode="json"), "method": {"name": "ddep"}}
    save_checkpoint(path, pretrained_file(model, config, iteration=7))
    return path


@pytest.mark.parametrize("options", [
    {"encoder": "resnet18"},
    {"encoder": "resnet50", "stem": "deep", "proj_dim": 8, "aux_head": True},
])
def test_resnet_families_load_encoder_and_decoder_but_not_task_heads(tmp_path, options):
    cfg = resnet_config(**options)
    torch.manual_seed(0)
    source = create_model(cfg, 5)
    path = write_pretrained(source, cfg, tmp_path / "pretrained.pt")
    torch.manual_seed(1)
    target = create_model(cfg.model_copy(update={"pretrained": str(path), "pretrained_rescale": False}), 3)
    for key, value in transferable_state(source).items():
        assert torch.equal(target.state_dict()[key], value), key
    assert target.classifier.weight.shape[0] == 3
    torch.manual_seed(1)
    fresh = create_model(cfg, 3)
    assert torch.equal(target.classifier.weight, fresh.classifier.weight)  # heads keep their init
    assert not any(k.startswith(("classifier.", "aux.", "projection.")) for k in read_pretrained(path)["state_dict"])


def test_dpt_family_loads_through_the_same_path():
    transformers = pytest.importorskip("transformers")

    def tiny_dpt(seed):
        torch.manual_seed(seed)
        config = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                           intermediate_size=32, patch_size=14, image_size=28)
        return DPT(transformers.Dinov2Model(config), 3, layers=(0, 1, 2, 3), features=8, out_channels=(4, 8, 16, 16))

    source, target = tiny_dpt(0), tiny_dpt(1)
    config = {"model": {"name": "dpt", "encoder": "dinov2_small"}, "method": {"name": "ddep"}}
    load_pretrained_model(target, pretrained_file(source, config, 1), "pretrained.pt", rescale=False)
    for key, value in transferable_state(source).items():
        assert torch.equal(target.state_dict()[key], value), key
    assert any(k.startswith("encoder.") for k in transferable_state(source))
    assert not torch.equal(target.classifier[-1].weight, source.classifier[-1].weight)


def test_another_width_is_refused_with_the_layer_and_shapes(tmp_path):
    cfg = resnet_config()
    path = write_pretrained(create_model(cfg, 3), cfg, tmp_path / "pretrained.pt")
    with pytest.raises(WeightsError) as err:
        create_model(resnet_config(width=16, pretrained=str(path)), 3)
    message = str(err.value)
    assert "encoder.conv1.weight [8, 3, 7, 7] in the file vs [16, 3, 7, 7] in the model" in message
    assert "width=8" in message and "\n" not in message


def test_another_encoder_depth_is_refused_with_the_missing_keys(tmp_path):
    cfg = resnet_config(encoder="resnet34")
    path = write_pretrained(create_model(cfg, 3), cfg, tmp_path / "pretrained.pt")
    with pytest.raises(WeightsError, match="keys the model lacks.*encoder=resnet34"):
        create_model(resnet_config(pretrained=str(path)), 3)


def test_layout_sparseg_refuses_other_weight_files(tmp_path):
    encoder_only = tmp_path / "resnet18.pth"
    torch.save(create_model(resnet_config(), 3).encoder.state_dict(), encoder_only)
    with pytest.raises(WeightsError, match="neither a `sparseg pretrain` file"):
        create_model(resnet_config(pretrained=str(encoder_only), pretrained_layout="sparseg"), 3)
    create_model(resnet_config(pretrained=str(encoder_only)), 3)  # auto: the plain encoder layout still works


def inflated_pretrained(cfg, path, factor=1.7):
    """A pretrained file whose conv weights are ``factor`` times an initialisation's (as after AdamW), with
    BatchNorm statistics gathered for them."""
    torch.manual_seed(0)
    source = create_model(cfg, 3)
    with torch.no_grad():
        for name, weight in source.named_parameters():
            if weight.dim() == 4 and not name.startswith("classifier"):
                weight.mul_(factor)
        source.train()(torch.rand(4, 3, 64, 64))
    return write_pretrained(source, cfg, path)


def test_every_resnet_and_decoder_conv_feeds_a_batchnorm():
    model = create_model(resnet_config(), 3)
    pairs = conv_bn_pairs(model)
    convs = [k[: -len(".weight")] for k, v in transferable_state(model).items() if k.endswith("weight") and v.dim() == 4]
    assert sorted(pairs) == sorted(convs) and len(convs) == 29  # 20 + 3 downsample + ASPP 5, project, reduce, fuse 2
    assert pairs["encoder.layer2.0.downsample.0"] == "encoder.layer2.0.downsample.1"
    assert "classifier" not in pairs


def test_rescaling_restores_initial_norms_and_keeps_the_function(tmp_path):
    cfg = resnet_config()
    path = inflated_pretrained(cfg, tmp_path / "pretrained.pt")
    torch.manual_seed(1)
    fresh = create_model(cfg, 3)
    torch.manual_seed(1)
    kept = create_model(cfg.model_copy(update={"pretrained": str(path), "pretrained_rescale": False}), 3)
    torch.manual_seed(1)
    rescaled = create_model(cfg.model_copy(update={"pretrained": str(path)}), 3)
    for conv in conv_bn_pairs(fresh):
        weight = f"{conv}.weight"
        assert torch.allclose(rescaled.state_dict()[weight].norm(), fresh.state_dict()[weight].norm(), rtol=1e-5)
        assert torch.allclose(kept.state_dict()[weight].norm(), 1.7 * fresh.state_dict()[weight].norm(), rtol=0.15)
    for model in (kept, rescaled):  # BatchNorm's eps is the only term that sees the scale
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.eps = 1e-12
    x = torch.rand(2, 3, 64, 64)
    for training in (False, True):
        outputs = []
        for model in (kept, rescaled):
            torch.manual_seed(2)  # the same dropout masks
            with torch.no_grad():
                outputs.append(model.train(training)(x)["pred"])
        assert torch.allclose(outputs[0], outputs[1], atol=1e-4, rtol=1e-4), training


def test_rescaling_is_reported_and_leaves_a_model_without_batchnorm_alone(tmp_path, caplog):
    cfg = resnet_config()
    path = inflated_pretrained(cfg, tmp_path / "pretrained.pt")
    target = create_model(cfg, 3)
    report = load_pretrained_model(target, read_pretrained(path), str(path))
    assert len(report.rescaled) == 29 and all(0.5 < c < 0.7 for c in report.rescaled.values())  # ~1/1.7, another init
    assert "29 convs rescaled to their initial norm" in str(report)
    no_bn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    assert conv_bn_pairs(no_bn) == {}
