"""Procedural demo/test dataset: textured shapes on textured backgrounds, with masks and depth.

Each object class is a shape with its own texture (disc: stripes, square: checker, triangle: dots,
cross: grid). Colours come from one distribution for all classes, so colour alone does not tell
the classes apart. Depth is stored as a disparity-like map (larger = nearer, as the depth files
of ``sparseg.data.depth``): a ground plane from 0.1 (top row) to 0.8 (bottom row), and each
object at a constant value 0.08 nearer than the ground at its lowest row; objects are painted far
to near, so occlusion agrees with depth.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

SYNTHETIC_CLASSES = ("background", "disc", "square", "triangle", "cross")
_FORMAT_VERSION = 1
_GROUND_NEAR, _GROUND_FAR, _OBJECT_OFFSET = 0.8, 0.1, 0.08


def make_synthetic_dataset(
    root: str | Path, n_train: int = 256, n_val: int = 64, size: int = 64, seed: int = 0
) -> Path:
    """Write the dataset under ``root`` unless ``manifest.json`` already records these parameters.

    Layout: ``images/<id>.png`` (RGB), ``masks/<id>.png`` (L), ``depth/<id>.png`` (uint16,
    round(65535 * disparity)), ``train.txt`` / ``val.txt`` with ``images/<id>.png masks/<id>.png`` lines.
    """
    root = Path(root)
    manifest = {
        "format_version": _FORMAT_VERSION,
        "n_train": n_train,
        "n_val": n_val,
        "size": size,
        "seed": seed,
        "classes": list(SYNTHETIC_CLASSES),
        "depth": "uint16 PNG = round(65535 * disparity), larger = nearer",
    }
    manifest_path = root / "manifest.json"
    if _read_manifest(manifest_path) == manifest and all((root / f"{s}.txt").is_file() for s in ("train", "val")):
        return root
    for folder in ("images", "masks", "depth"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for split_code, (split, count) in enumerate((("train", n_train), ("val", n_val))):
        lines = []
        for i in range(count):
            name = f"{split}_{i:04d}"
            image, mask, depth = render_scene(np.random.default_rng([seed, split_code, i]), size)
            Image.fromarray(image).save(root / "images" / f"{name}.png", compress_level=1)
            Image.fromarray(mask).save(root / "masks" / f"{name}.png", compress_level=1)
            Image.fromarray(depth).save(root / "depth" / f"{name}.png", compress_level=1)
            lines.append(f"images/{name}.png masks/{name}.png\n")
        (root / f"{split}.txt").write_text("".join(lines))
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")  # last: marks a complete dataset
    return root


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _shape(cls: int, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Region of a shape in object coordinates (u, v rotated, centred)."""
    if cls == 1:  # disc
        return u * u + v * v <= r * r
    if cls == 2:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if cls == 3:  # equilateral triangle inscribed in radius r
        inside = np.ones(u.shape, dtype=bool)
        for k in range(3):
            a = 2 * np.pi * k / 3
            inside &= u * np.cos(a) + v * np.sin(a) <= 0.5 * r
        return inside
    arm = 0.33 * r  # cross
    return ((np.abs(u) <= r) & (np.abs(v) <= arm)) | ((np.abs(u) <= arm) & (np.abs(v) <= r))


def _texture(cls: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Binary texture of a class in texture coordinates (a, b in periods)."""
    fa, fb = a % 1.0, b % 1.0
    if cls == 1:  # stripes
        return fa < 0.5
    if cls == 2:  # checker
        return (np.floor(a) + np.floor(b)) % 2 == 0
    if cls == 3:  # dots
        return (fa - 0.5) ** 2 + (fb - 0.5) ** 2 < 0.09
    return (fa < 0.3) | (fb < 0.3)  # grid


def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: RGB uint8 [S,S,3], mask uint8 [S,S], depth uint16 [S,S]."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = xs * np.cos(theta) + ys * np.sin(theta)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    low, high = rng.uniform(0, 255, (2, 3))
    image = low + (high - low) * ramp[..., None] + rng.normal(0, 12, (size, size, 3))
    mask = np.zeros((size, size), dtype=np.uint8)
    ground = _GROUND_FAR + (_GROUND_NEAR - _GROUND_FAR) * ys / max(size - 1, 1)
    depth = ground.copy()

    objects = []
    for _ in range(rng.integers(1, 4)):
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        r = rng.uniform(0.12, 0.25) * size
        cx, cy = rng.uniform(0.5 * r, size - 0.5 * r, 2)
        angle, texture_angle = rng.uniform(0, 2 * np.pi, 2)
        period = rng.uniform(4, 8)
        fg = rng.uniform(0, 255, 3)
        bg = (fg + rng.uniform(80, 176, 3)) % 256  # every channel differs by >= 80
        dx, dy = xs - cx, ys - cy
        region = _shape(cls, dx * np.cos(angle) + dy * np.sin(angle), dy * np.cos(angle) - dx * np.sin(angle), r)
        rows = np.flatnonzero(region.any(axis=1))
        disparity = min(float(ground[rows[-1], 0]) + _OBJECT_OFFSET, 1.0)
        a = (xs * np.cos(texture_angle) + ys * np.sin(texture_angle)) / period
        b = (ys * np.cos(texture_angle) - xs * np.sin(texture_angle)) / period
        colour = np.where(_texture(cls, a, b)[..., None], fg, bg) + rng.normal(0, 8, (size, size, 3))
        objects.append((disparity, cls, region, colour))

    for disparity, cls, region, colour in sorted(objects, key=lambda o: o[0]):  # far to near
        image[region] = colour[region]
        mask[region] = cls
        depth[region] = disparity
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, mask, np.rint(depth * 65535).astype(np.uint16)
