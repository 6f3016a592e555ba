"""``sparseg predict``: palette masks (and overlays) for image files and folders.

Output names keep the whole input name, so ``x.jpg`` and ``x.png`` never share an output: a folder's
images are mirrored under the output folder (``DIR/a/b.jpg`` -> ``OUT/a/b.jpg.png``), an image given
directly goes to ``OUT/<name>.png``; overlays are ``<name>.overlay.jpg`` beside the mask. Every output is
checked before anything is predicted: none may be an input, two inputs may not share one, the output
folder may not lie inside an input folder, and none may exist unless ``overwrite``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.progress import track
from torch import nn

from sparseg.config import EvalConfig
from sparseg.data.datasets import DECODE_ERRORS, to_rgb
from sparseg.data.errors import DataWarning
from sparseg.data.splits import image_files
from sparseg.eval.inference import predict_probs
from sparseg.eval.visualize import overlay, save_mask_png

MASK_SUFFIX = ".png"
OVERLAY_SUFFIX = ".overlay.jpg"


class PredictError(ValueError):
    """The inputs and the output folder do not allow writing every prediction safely."""


@dataclass(frozen=True)
class Prediction:
    """One input image and the files its prediction goes to."""

    image: Path
    mask: Path
    overlay: Path | None


def input_images(inputs: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """``(image, name under the output folder)`` for every input: a file as its own name, a folder's images
    (``image_files``: recursive, sorted, hidden ones left out) as their path inside it. A file reached twice is
    listed once."""
    found: dict[Path, tuple[Path, Path]] = {}
    for item in map(Path, inputs):
        if item.is_dir():
            pairs = [(p, p.relative_to(item)) for p in image_files(item)]
        elif item.is_file():
            pairs = [(item, Path(item.name))]
        else:
            raise FileNotFoundError(f"no such image or directory: {item}")
        for image, name in pairs:
            found.setdefault(image.resolve(), (image, name))
    if not found:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, inputs))}")
    return list(found.values())


def plan_predictions(inputs: Sequence[str | Path], out: Path, overlays: bool, overwrite: bool) -> list[Prediction]:
    """The output files of every input, refused (``PredictError``) unless all of them can be written."""
    if out.exists() and not out.is_dir():
        raise PredictError(f"--out {out} is a file: give a folder for the masks (it is created if missing)")
    out_resolved = out.resolve()
    for folder in (Path(i).resolve() for i in inputs if Path(i).is_dir()):
        if out_resolved == folder or folder in out_resolved.parents:
            raise PredictError(f"--out {out} is inside the input folder {folder}: the masks would mix with the "
                               "images (and be read as inputs next time); choose an output folder outside it")
    plan = [
        Prediction(image, out / f"{name}{MASK_SUFFIX}", out / f"{name}{OVERLAY_SUFFIX}" if overlays else None)
        for image, name in input_images(inputs)
    ]
    inputs_resolved = {p.image.resolve() for p in plan}
    writer: dict[Path, Path] = {}  # resolved output -> the image whose prediction it is
    for p in plan:
        for target in filter(None, (p.mask, p.overlay)):
            key = target.resolve()
            if key in inputs_resolved:
                raise PredictError(f"the prediction of {p.image} would write over the input image {target}")
            if key in writer:
                raise PredictError(f"{writer[key]} and {p.image} would both be written to {target}; "
                                   "predict them into separate --out folders")
            writer[key] = p.image
    existing = [target for target in writer if target.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more outputs)" if len(existing) > 1 else ""
        raise PredictError(f"{existing[0]} exists{more}: pass --overwrite to replace, or choose another --out")
    return plan


def read_rgb(path: Path) -> Image.Image:
    """An input image as 8-bit RGB (``sparseg.data.datasets.to_rgb``); OSError when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            return to_rgb(image, path)
    except DECODE_ERRORS as err:
        raise OSError(f"cannot read image {path}: {err}") from None


def write_predictions(
    model: nn.Module, plan: Sequence[Prediction], num_classes: int, palette: Sequence[Sequence[int]],
    eval_cfg: EvalConfig, device: torch.device, progress: bool = True, on_bad_image: str = "error",
) -> list[Path]:
    """Predict every planned image with ``eval_cfg``'s protocol and write its mask (and overlay). With
    ``on_bad_image="skip"`` an unreadable image is warned about and left out; returns the images skipped."""
    skipped = []
    for item in track(plan, description="Predicting", disable=not progress, transient=True):
        try:
            image = read_rgb(item.image)
        except OSError as err:
            if on_bad_image != "skip":
                raise
            warnings.warn(f"skipped (data.on_bad_image=skip): {err}", DataWarning)
            skipped.append(item.image)
            continue
        x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div(255).unsqueeze(0).to(device)
        mask = predict_probs(model, x, num_classes, eval_cfg).argmax(1)[0].byte().cpu().numpy()
        item.mask.parent.mkdir(parents=True, exist_ok=True)
        save_mask_png(mask, palette, item.mask)
        if item.overlay is not None:
            overlay(image, mask, palette).save(item.overlay, quality=90)
    return skipped
