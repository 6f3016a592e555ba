import torch
import torch.nn.functional as F

from sparseg.methods.losses import cross_entropy, ohem_cross_entropy


def test_ce_ignores_255_and_is_zero_without_labels():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    loss = cross_entropy(logits, target)
    assert loss.item() == 0.0 and loss.requires_grad
    target[0, 0, 0] = 2
    expected = F.cross_entropy(logits[:, :, 0, 0], torch.tensor([2]))
    assert torch.allclose(cross_entropy(logits, target), expected)


def test_ohem_keeps_hard_pixels_and_min_kept():
    # 4 pixels, true-class probabilities 0.9, 0.8, 0.5, 0.1
    probs = torch.tensor([0.9, 0.8, 0.5, 0.1])
    logits = torch.stack([probs.log(), (1 - probs).log()]).view(1, 2, 2, 2)
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    pixel = -probs.log()
    # threshold 0.7, min_kept 1: the two pixels below 0.7 are kept
    assert torch.allclose(ohem_cross_entropy(logits, target, 0.7, 1), pixel[2:].mean())
    # min_kept 3 raises the threshold to the 3rd smallest probability (0.8)
    assert torch.allclose(ohem_cross_entropy(logits, target, 0.7, 3), pixel[1:].mean())
