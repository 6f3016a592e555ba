"""What both pretraining methods share: the loss over the pixels that count."""

import pytest
import torch

from sparseg.pretrain.base import weighted_mse


def test_weighted_mse_is_zero_on_the_target_and_blind_to_weight_zero_pixels():
    target, weight = torch.randn(2, 3, 8, 8), torch.ones(2, 8, 8)
    weight[:, :, 6:] = 0  # DDeP: crop padding; MIM: pixels that were not masked
    assert weighted_mse(target, target, weight) == 0
    wrong_where_weight_is_zero = target.clone()
    wrong_where_weight_is_zero[..., 6:] += 5
    assert weighted_mse(wrong_where_weight_is_zero, target, weight) == 0
    # predicting zero scores the mean square of the target over the counted pixels (1 for unit noise)
    assert weighted_mse(torch.zeros_like(target), target, weight) == pytest.approx(
        target[..., :6].pow(2).mean().item(), rel=1e-5)
    assert weighted_mse(target, target, torch.zeros(2, 8, 8)) == 0  # nothing counted: no division by zero
