"""Linear per-pixel probe: how well frozen decoder features separate the classes (docs/methods/pretrain.md).

The probe fits a ridge-regression classifier (one-hot targets, closed form, no hyper-parameter search) on
``fts`` of the first half of a labeled list and scores the second half at feature resolution. It needs
no training loop and no learning rate, so its number moves only when the features do: the quality
signal to watch while pretraining without labels in the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparseg.eval.evaluate import EvalResult
from sparseg.eval.metrics import ConfusionMatrix
from sparseg.labels import IGNORE

RIDGE = 1e-3  # relative to the mean feature energy: scale-free regularisation


@torch.no_grad()
def _features(model: nn.Module, item: dict[str, Tensor], device: torch.device, scale: float) -> tuple[Tensor, Tensor]:
    """Per-pixel features [N, C] of the image resized by ``scale``, and their labels [N] (nearest-resized masks)."""
    image = item["image"][None].to(device)
    if scale != 1.0:
        image = F.interpolate(image, scale_factor=scale, mode="bilinear", align_corners=False)
    fts = model(image)["fts"][0].float()
    labels = F.interpolate(item["mask"][None, None].float(), size=fts.shape[-2:], mode="nearest")[0, 0]
    return fts.flatten(1).T, labels.flatten().long().to(device)


def _fit_ridge(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """W [C+1, K] minimising ||[X 1] W - Y||^2 + lambda ||W||^2 with one-hot Y (float64 for stability)."""
    x = torch.cat([features, torch.ones_like(features[:, :1])], dim=1).double()
    y = F.one_hot(labels, num_classes).double()
    gram = x.T @ x
    lam = RIDGE * gram.diagonal().mean().clamp(min=1e-12)
    return torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device), x.T @ y)


def linear_probe(
    model: nn.Module,
    dataset: Sequence[dict[str, Tensor]],
    num_classes: int,
    device: torch.device | str,
    class_names: Sequence[str] | None = None,
    max_images: int | None = None,
    pixels_per_image: int = 2048,
    seed: int = 0,
    scale: float = 1.0,
) -> EvalResult:
    """Fit on the first half of ``dataset`` (at most ``pixels_per_image`` labeled pixels each), score the rest.

    ``model`` returns ``{"fts": [B, C, h, w]}``; it runs in eval mode and its train/eval flags are restored.
    The same dataset and seed give the same split and pixel sample, so numbers are comparable over time.
    ``scale`` resizes the images first (the training resolution, e.g. ``eval.scales[0]``).
    """
    device = torch.device(device)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    if n < 2:
        raise ValueError(f"the probe needs at least 2 labeled images (one to fit, one to score), got {n}")
    fit_ids, score_ids = range(n // 2), range(n // 2, n)
    generator = torch.Generator().manual_seed(seed)
    previous = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        xs, ys = [], []
        for index in fit_ids:
            x, y = _features(model, dataset[index], device, scale)
            keep = (y != IGNORE).nonzero().flatten().cpu()
            keep = keep[torch.randperm(len(keep), generator=generator)[:pixels_per_image]].to(device)
            xs.append(x[keep])
            ys.append(y[keep])
        weights = _fit_ridge(torch.cat(xs), torch.cat(ys), num_classes)
        confusion = ConfusionMatrix(num_classes, device=device)
        for index in score_ids:
            x, y = _features(model, dataset[index], device, scale)
            scores = torch.cat([x, torch.ones_like(x[:, :1])], dim=1).double() @ weights
            confusion.update(scores.argmax(1), y)
    finally:
        for module, training in previous:
            module.training = training
    names = list(class_names) if class_names is not None else [f"class_{c}" for c in range(num_classes)]
    return EvalResult.from_confusion(confusion, names, "all", len(score_ids), "linear probe on decoder features")
