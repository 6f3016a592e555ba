"""The linear probe: perfect features score 100, features without class information score low, flags restored."""

import torch
from torch import nn

from sparseg.eval.probe import linear_probe


class MaskFeatures(nn.Module):
    """A stand-in model whose features are the one-hot mask (informative) or noise (uninformative)."""

    def __init__(self, masks, informative):
        super().__init__()
        self.masks, self.informative = masks, informative
        self.calls = 0
        self.dropout = nn.Dropout()

    def forward(self, x):
        mask = self.masks[self.calls]
        self.calls += 1
        fts = nn.functional.one_hot(mask, 3).permute(2, 0, 1).float()[None]
        if not self.informative:
            fts = torch.randn_like(fts)
        return {"fts": fts}


def dataset(n=6, size=16):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(3, size, size, generator=g), "mask": torch.randint(0, 3, (size, size), generator=g)}
            for _ in range(n)]


def test_informative_features_score_100_and_noise_scores_low():
    data = dataset()
    masks = [item["mask"] for item in data]
    good = linear_probe(MaskFeatures(masks, informative=True), data, 3, "cpu")
    bad = linear_probe(MaskFeatures(masks, informative=False), data, 3, "cpu")
    assert good.miou == 100.0 and good.num_images == 3
    assert bad.miou < 50.0


def test_ignored_pixels_are_not_scored_and_modes_are_restored():
    data = dataset()
    for item in data:
        item["mask"][:, :4] = 255
    model = MaskFeatures([item["mask"].clamp(max=2) for item in data], informative=True).train()
    result = linear_probe(model, data, 3, "cpu")
    assert result.confusion.sum() == 3 * 16 * 12
    assert model.training and model.dropout.training
