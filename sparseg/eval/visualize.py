"""Palette PNGs and overlays of label / prediction masks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from sparseg.data.datasets import voc_colormap
from sparseg.labels import IGNORE

IGNORE_COLOR = (224, 224, 192)  # VOC's cream for void pixels

Palette = Sequence[Sequence[int]] | np.ndarray


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map: bits of the class index interleaved into R, G, B."""
    return voc_colormap(num_classes)


def _as_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H,W], got shape {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError(f"mask values must be in 0..255, got {mask.min()}..{mask.max()}")
        mask = mask.astype(np.uint8)
    return mask


def _color_table(palette: Palette) -> np.ndarray:
    """256 x 3 uint8 lookup: the palette, black for unused indices, ``IGNORE_COLOR`` at 255."""
    colors = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(colors) > IGNORE:
        raise ValueError(f"a palette holds at most {IGNORE} classes, got {len(colors)}")
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(colors)] = colors
    table[IGNORE] = IGNORE_COLOR
    return table


def colorize(mask: np.ndarray, palette: Palette) -> Image.Image:
    """Palette-mode ("P") image whose pixel values are the mask's class indices."""
    image = Image.fromarray(_as_mask(mask))  # mode "L"; putpalette turns it into "P"
    image.putpalette(_color_table(palette).reshape(-1).tolist())
    return image


def save_mask_png(mask: np.ndarray, palette: Palette, path: str | Path) -> None:
    """Write ``mask`` as a palette PNG (reading it back with np.asarray gives the indices)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    colorize(mask, palette).save(path, format="PNG")


def overlay(image: Image.Image, mask: np.ndarray, palette: Palette, alpha: float = 0.5) -> Image.Image:
    """Blend class colours into ``image`` with weight ``alpha``; ignore pixels stay as they are."""
    mask = _as_mask(mask)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"image size {rgb.shape[:2]} and mask size {mask.shape} differ")
    colors = _color_table(palette)[mask].astype(np.float32)
    blended = (1 - alpha) * rgb + alpha * colors
    keep = (mask == IGNORE)[..., None]
    out = np.where(keep, rgb, blended)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
