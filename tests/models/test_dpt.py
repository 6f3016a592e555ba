"""DINOv2 + DPT (depmatch.md §2 "V2 model") on a tiny random Dinov2Config: shapes, splits, groups, loading."""

import pytest
import torch

from sparseg.config import ModelConfig, OptimConfig
from sparseg.engine.optim import build_optimizer
from sparseg.models import DPT, create_model

transformers = pytest.importorskip("transformers")

K = 3


def tiny_encoder(layers=4, patch=14):
    torch.manual_seed(0)
    config = transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32,
        patch_size=patch, image_size=2 * patch,
    )
    return transformers.Dinov2Model(config)


def tiny_dpt(**kwargs):
    options = {"layers": (0, 1, 2, 3), "features": 8, "out_channels": (4, 8, 16, 16), **kwargs}
    return DPT(tiny_encoder(), K, **options)


def test_outputs_at_eight_times_the_patch_grid():
    model = tiny_dpt().eval()
    out = model(torch.rand(2, 3, 28, 42))  # patch grid 2 x 3
    assert out["pred"].shape == (2, K, 16, 24)
    assert out["fts"].shape == (2, 8, 16, 24)
    features = model.encode(torch.rand(2, 3, 28, 42))
    assert list(features) == ["block0", "block1", "block2", "block3"]
    assert all(f.shape == (2, 16, 2, 3) for f in features.values())


def test_input_resized_to_the_nearest_multiple_of_the_patch():
    model = tiny_dpt().eval()
    x = torch.rand(1, 3, 34, 48)  # 34/14 = 2.4 -> 28, 48/14 = 3.4 -> 42
    assert model.encode(x)["block0"].shape[-2:] == (2, 3)
    resized = torch.nn.functional.interpolate(x, size=(28, 42), mode="bilinear", align_corners=True)
    assert torch.allclose(model(x)["pred"], model(resized)["pred"], atol=1e-5)
    assert model.predict(x).shape == (1, K, 34, 48)


def test_forward_is_decode_of_encode_and_taps_are_layer_normed_blocks():
    model = tiny_dpt(layers=(0, 1, 2, 3)).eval()
    x = torch.rand(2, 3, 28, 28)
    assert torch.equal(model(x)["pred"], model.decode(model.encode(x))["pred"])
    reference = model.encoder(model.normalize(x), output_hidden_states=True)
    last = reference.last_hidden_state[:, 1:].transpose(1, 2).reshape(2, 16, 2, 2)
    assert torch.allclose(model.encode(x)["block3"], last, atol=1e-5)


def test_param_groups_and_every_trainable_parameter_gets_a_gradient():
    model = tiny_dpt()
    groups = model.param_groups()
    backbone, head = {id(p) for p in groups["backbone"]}, {id(p) for p in groups["head"]}
    assert backbone == {id(p) for p in model.encoder.parameters()}
    assert backbone.isdisjoint(head) and backbone | head == {id(p) for p in model.parameters()}
    model(torch.rand(2, 3, 28, 28))["pred"].sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []  # the mask token is frozen; no unused parameter under DDP
    assert not model.encoder.embeddings.mask_token.requires_grad


def test_blocks_after_the_last_tap_are_removed_and_bad_layers_refused():
    model = DPT(tiny_encoder(layers=6), K, layers=(0, 1, 2, 3), features=8, out_channels=(4, 8, 16, 16))
    assert len(model.encoder.encoder.layer) == 4
    for layers in [(0, 1, 2, 6), (2, 1, 3, 4), (0, 1, 2)]:
        with pytest.raises(ValueError, match="dpt_layers"):
            DPT(tiny_encoder(layers=6), K, layers=layers)


def test_create_model_loads_a_local_directory_with_preset_head_widths(tmp_path):
    encoder = tiny_encoder()
    encoder.save_pretrained(tmp_path / "tiny")
    cfg = ModelConfig(name="dpt", encoder="dinov2_small", pretrained=str(tmp_path / "tiny"), dpt_layers=(0, 1, 2, 3))
    model = create_model(cfg, K)
    loaded = dict(model.encoder.named_parameters())
    assert all(torch.equal(loaded[n], p) for n, p in encoder.named_parameters())
    assert model(torch.rand(1, 3, 28, 28))["fts"].shape[1] == 64  # dinov2_small: 64 fusion features
    with pytest.raises(ValueError, match="dpt_layers"):
        create_model(ModelConfig(name="dpt", encoder="dinov2_small", pretrained=str(tmp_path / "tiny")), K)


def test_config_pairs_models_with_encoder_families():
    with pytest.raises(ValueError, match="needs a dinov2"):
        ModelConfig(name="dpt", encoder="resnet101")
    with pytest.raises(ValueError, match="needs a resnet"):
        ModelConfig(encoder="dinov2_base")


def test_adamw_keeps_the_backbone_and_head_groups():
    optimizer = build_optimizer(tiny_dpt(), OptimConfig(name="adamw", weight_decay=0.01, head_lr_mult=40), lr=5e-6)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([5e-6, 2e-4])
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["weight_decay"] == 0.01
