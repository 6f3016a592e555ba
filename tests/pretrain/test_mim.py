"""Masked image modelling (docs/methods/pretrain.md §4): the mask, the normalised targets, the masked loss,
and learning on a toy problem."""

import pytest
import torch
import torch.nn.functional as F

from sparseg.config import ModelConfig
from sparseg.methods import create_method, method_class
from sparseg.methods.base import MethodContext, Step
from sparseg.models import create_model
from sparseg.pretrain.mim import normalised_targets, patch_mask


def make_mim(**options):
    torch.manual_seed(0)
    model = create_model(ModelConfig(encoder="resnet18", stem="plain", width=8, decoder_channels=16, dropout=0.0), 3)
    return create_method("mim", model, method_class("mim").Config(**options), MethodContext(3, seed=0))


def test_mask_covers_whole_patches_at_the_ratio():
    mask = patch_mask((3, 32, 48), 8, 0.5, torch.Generator().manual_seed(0))
    cells = mask.view(3, 4, 8, 6, 8).permute(0, 1, 3, 2, 4).flatten(3)  # [B, 4, 6, 64] pixels per patch
    assert torch.all(cells.all(-1) | ~cells.any(-1))  # each patch fully masked or not at all
    assert cells.all(-1).sum((1, 2)).tolist() == [12, 12, 12]  # 50% of 24 patches in every image


def test_targets_have_zero_mean_and_unit_std_per_patch():
    images = torch.rand(2, 3, 16, 16)
    targets = normalised_targets(images, 8).unfold(2, 8, 8).unfold(3, 8, 8).flatten(-2)
    assert torch.allclose(targets.mean(-1), torch.zeros(2, 3, 2, 2), atol=1e-5)
    assert torch.allclose(targets.std(-1, unbiased=False), torch.ones(2, 3, 2, 2), atol=1e-3)


def test_masked_pixels_reach_the_model_as_the_mean_colour():
    method = make_mim(patch=8, mask_ratio=0.5)
    seen = {}

    def record(x):
        seen["x"] = x
        return {"fts": torch.zeros(x.shape[0], 16, 8, 8)}

    method.model.forward = record
    images = torch.rand(2, 3, 32, 32)
    method({"unlabeled": {"image": images, "valid": torch.ones(2, 32, 32, dtype=torch.bool)}}, Step(0, 0, 1, 1))
    changed = (seen["x"] != images).any(1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand_as(images)
    assert changed.float().mean() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(seen["x"].permute(0, 2, 3, 1)[changed], mean.permute(0, 2, 3, 1)[changed])


def test_reconstruction_learns_on_a_toy_problem_without_collapse():
    method = make_mim(patch=8, mask_ratio=0.5, norm_targets=False)
    optimizer = torch.optim.AdamW(method.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    images = F.interpolate(torch.rand(8, 3, 4, 4, generator=g), size=(32, 32), mode="bilinear", align_corners=False)
    batch = {"unlabeled": {"image": images, "valid": torch.ones(8, 32, 32, dtype=torch.bool)}}
    losses = []
    for i in range(40):
        loss = method(batch, Step(i, 0, 40, 40))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    assert method.extra_logs()["embed_spread"] > 0.3
