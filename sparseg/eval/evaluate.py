"""Dataset-wide evaluation and the per-class IoU table."""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table
from torch import nn

from sparseg.config import EvalConfig
from sparseg.eval.inference import center_crop, default_stride, predict_probs
from sparseg.eval.metrics import ConfusionMatrix, all_reduce_sum


@dataclass
class EvalResult:
    """Whole-dataset scores; ``miou`` and ``iou`` are percentages, ``iou`` NaN for empty unions."""

    miou: float
    iou: list[float]
    class_names: list[str]
    confusion: torch.Tensor  # [K,K] int64 on CPU, rows = ground truth, columns = prediction
    miou_over: str
    num_images: int
    mode: str
    pixel_accuracy: float
    mean_accuracy: float = math.nan  # mean over classes present in the labels
    accuracy: list[float] | None = None  # per class, % of its ground-truth pixels predicted right (NaN: absent)

    @classmethod
    def from_confusion(
        cls, confusion: ConfusionMatrix, class_names: list[str], miou_over: str, num_images: int, mode: str
    ) -> EvalResult:
        """Scores of a (summed) confusion matrix."""
        return cls(
            miou=confusion.miou(miou_over),
            iou=(confusion.iou() * 100).tolist(),
            class_names=class_names,
            confusion=confusion.matrix.cpu(),
            miou_over=miou_over,
            num_images=num_images,
            mode=mode,
            pixel_accuracy=confusion.pixel_accuracy(),
            mean_accuracy=confusion.mean_accuracy(),
            accuracy=(confusion.class_accuracy() * 100).tolist(),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (NaN becomes None)."""
        return {
            "miou": _finite_or_none(self.miou),
            "miou_over": self.miou_over,
            "pixel_accuracy": _finite_or_none(self.pixel_accuracy),
            "mean_accuracy": _finite_or_none(self.mean_accuracy),
            "num_images": self.num_images,
            "mode": self.mode,
            "iou": {name: _finite_or_none(v) for name, v in zip(self.class_names, self.iou)},
            **({"accuracy": {name: _finite_or_none(v) for name, v in zip(self.class_names, self.accuracy)}}
               if self.accuracy is not None else {}),
            "confusion": self.confusion.tolist(),
        }


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def describe_protocol(cfg: EvalConfig) -> str:
    """One-line description of the inference protocol, e.g. ``sliding window 769x769, stride 513x513``."""
    if cfg.mode == "whole":
        text = "whole image"
    elif cfg.crop_size is None:
        raise ValueError(f"eval.mode {cfg.mode} needs eval.crop_size")
    elif cfg.mode == "center_crop":
        text = f"center crop {cfg.crop_size[0]}x{cfg.crop_size[1]}"
    else:
        stride = cfg.stride or default_stride(cfg.crop_size)
        text = (
            f"sliding window {cfg.crop_size[0]}x{cfg.crop_size[1]}, stride {stride[0]}x{stride[1]}"
        )
    if list(cfg.scales) == [1.0] and not cfg.flip:
        return f"{text}, single scale"
    scales = ",".join(f"{s:g}" for s in cfg.scales)
    return f"{text}, scales {scales}" + (" + flip" if cfg.flip else "")


def evaluate(
    model: nn.Module,
    dataset: Sequence[dict[str, torch.Tensor]],
    cfg: EvalConfig,
    num_classes: int,
    device: torch.device | str,
    indices: Iterable[int] | None = None,
    progress: bool = False,
    class_names: Sequence[str] | None = None,
) -> EvalResult:
    """Evaluate ``model`` (already on ``device``) one image at a time.

    ``indices`` is this process's share of the dataset (default: all of it); the confusion matrix
    is all-reduced, so with torch.distributed every process returns the whole-dataset result. The
    model runs in eval mode; every submodule's train/eval flag is restored afterwards.
    """
    device = torch.device(device)
    names = list(class_names) if class_names is not None else [f"class_{c}" for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names given for {num_classes} classes")
    mode = describe_protocol(cfg)  # also checks that crop-based modes have a crop size
    indices = list(range(len(dataset)) if indices is None else indices)

    confusion = ConfusionMatrix(num_classes, device=device)
    previous_modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        for index in track(indices, description="Evaluating", disable=not progress, transient=True):
            item = dataset[index]
            if "mask" not in item:
                raise ValueError(f"dataset item {index} has no mask to evaluate against")
            image, mask = item["image"], item["mask"]
            if image.shape[-2:] != mask.shape[-2:]:
                raise ValueError(
                    f"dataset item {index}: image {tuple(image.shape)} and mask {tuple(mask.shape)} "
                    "differ in size"
                )
            if cfg.mode == "center_crop":
                image, mask = center_crop(image, mask, cfg.crop_size)
            probs = predict_probs(model, image[None].to(device), num_classes, cfg)
            confusion.update(probs[0].argmax(0), mask.to(device))
    finally:
        for module, training in previous_modes:
            module.training = training

    confusion.all_reduce()
    num_images = int(all_reduce_sum(torch.tensor(len(indices), device=device)).item())
    return EvalResult.from_confusion(confusion, names, cfg.miou_over, num_images, mode)


def format_table(result: EvalResult) -> str:
    """Per-class IoU (and accuracy) table (rich), pixel and mean accuracy, ending with the line ``mIoU: 63.21``."""
    table = Table()
    table.add_column("Class")
    table.add_column("IoU (%)", justify="right")
    if result.accuracy is not None:
        table.add_column("Acc (%)", justify="right")
    accuracy = result.accuracy if result.accuracy is not None else [None] * len(result.iou)
    for name, value, acc in zip(result.class_names, result.iou, accuracy):
        cells = [_percent(value)] + ([] if acc is None else [_percent(acc)])
        table.add_row(name, *cells)
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=sys.stdout.isatty(), soft_wrap=True)
    console.print(f"{result.mode}; {result.num_images} images", markup=False, highlight=False)
    console.print(table)
    if any(math.isnan(v) for v in result.iou):
        empty = "counted as 0" if result.miou_over == "all" else "skipped"
        console.print(f"n/a: class in neither labels nor predictions ({empty})", highlight=False)
    if any(math.isnan(v) for v in accuracy if v is not None):
        console.print("Acc n/a: class absent from the labels (left out of the mean accuracy)", highlight=False)
    console.print(f"pixel accuracy: {_percent(result.pixel_accuracy)}, mean accuracy: "
                  f"{_percent(result.mean_accuracy)}", highlight=False)
    return f"{buffer.getvalue()}mIoU: {result.miou:.2f}"


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"
