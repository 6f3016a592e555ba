"""DeepLabV3+: output contract (dgcl.md §3), parameter groups, input checks, create_model."""

import pytest
import torch

from sparseg.config import ModelConfig
from sparseg.models import DeepLabV3Plus, ResNet, create_model, list_models

K = 5


def small_model(stem="deep", proj_dim=0, aux_head=False, output_stride=16):
    encoder = ResNet(50, stem=stem, width=4, output_stride=output_stride)
    return DeepLabV3Plus(encoder, K, decoder_channels=16, proj_dim=proj_dim, aux_head=aux_head)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_outputs_at_stride4_with_all_heads(output_stride):
    model = small_model(proj_dim=8, aux_head=True, output_stride=output_stride)
    out = model(torch.rand(2, 3, 65, 65))
    assert set(out) == {"pred", "fts", "rep", "aux"}
    assert out["pred"].shape == (2, K, 17, 17)  # ceil(65 / 4)
    assert out["fts"].shape == (2, 16, 17, 17)
    assert out["rep"].shape == (2, 8, 17, 17)
    assert out["aux"].shape == (2, K, 17, 17)


def test_default_outputs_are_pred_and_fts_only():
    out = small_model(stem="plain").eval()(torch.rand(1, 3, 64, 64))
    assert set(out) == {"pred", "fts"}
    assert out["pred"].shape == (1, K, 16, 16)
    assert out["fts"].min() >= 0  # post-ReLU decoder feature


def test_rep_is_unnormalised_mlp_on_fts():
    model = small_model(proj_dim=8).eval()
    out = model(torch.rand(1, 3, 33, 33))
    assert torch.allclose(model.projection(out["fts"]), out["rep"])
    assert not torch.allclose(out["rep"].norm(dim=1), torch.ones(1))


def test_every_parameter_gets_a_gradient():
    model = small_model(proj_dim=8, aux_head=True).train()
    out = model(torch.rand(2, 3, 33, 33))
    sum(v.square().mean() for v in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_param_groups_partition_parameters():
    model = small_model(proj_dim=8, aux_head=True)
    groups = model.param_groups()
    backbone, head = ({id(p) for p in groups[g]} for g in ("backbone", "head"))
    everything = [id(p) for p in model.parameters()]
    assert len(groups["backbone"]) + len(groups["head"]) == len(everything)
    assert backbone | head == set(everything) and not backbone & head
    assert backbone == {id(p) for p in model.encoder.parameters()}
    assert {id(p) for p in model.projection.parameters()} <= head
    assert {id(p) for p in model.aux.parameters()} <= head


def test_normalisation_buffers_are_not_saved():
    model = small_model()
    assert not {"mean", "std"} & set(model.state_dict())
    assert model.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])


@pytest.mark.parametrize(
    "x, hint",
    [
        (torch.rand(3, 32, 32), "unsqueeze"),
        (torch.rand(1, 1, 32, 32), r"\[1, 1, 32, 32\]"),
        (torch.rand(1, 32, 32, 3), "permute"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "255"),
    ],
)
def test_input_validation(x, hint):
    with pytest.raises(ValueError, match=hint):
        small_model()(x)


def test_predict_returns_input_size_logits_without_grad():
    model = small_model().eval()
    logits = model.predict(torch.rand(2, 3, 50, 42))
    assert logits.shape == (2, K, 50, 42) and not logits.requires_grad


def test_create_model_from_config():
    cfg = ModelConfig(
        encoder="resnet18", stem="plain", width=4, output_stride=8, multi_grid=(1, 2, 4),
        aspp_rates=(12, 24, 36), decoder_channels=8, proj_dim=4, aux_head=True,
    )
    model = create_model(cfg, num_classes=3)
    assert "deeplabv3plus" in list_models()
    assert model.encoder.depth == 18 and model.encoder.stem == "plain"
    assert model.encoder.block_dilations("layer4") == [2, 8]
    assert [b[0].dilation[0] for b in model.aspp.branches] == [1, 12, 24, 36]
    assert set(model.eval()(torch.rand(1, 3, 33, 33))) == {"pred", "fts", "rep", "aux"}


def test_create_model_unknown_name():
    with pytest.raises(ValueError, match="did you mean .deeplabv3plus."):
        create_model(ModelConfig(name="deeplabv3", width=4), num_classes=3)
