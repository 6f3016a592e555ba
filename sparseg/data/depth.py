"""Depth maps beside the images (depmatch.md §3): storage, robust normalisation, lookup and loading.

Layout: ``<depth_dir>/<image path relative to the data root, suffix replaced>.png|.npy``, the layout
``sparseg depth`` writes; when that file is absent, ``<depth_dir>/<image file stem>.png|.npy`` (flat
folders, e.g. the synthetic data's ``depth/<id>.png`` for ``images/<id>.png``). PNG files are uint16
holding round(65535·d̃); NPY files hold float16/32 values.

Robust normalisation: d̃ = clip((d − q_lo) / (q_hi − q_lo), 0, 1), with q_lo, q_hi the 1st and 99th
percentiles of the full image's disparity d (larger = nearer). d̃ does not change when d → a·d + b
(a > 0); for a < 0 it becomes 1 − d̃, which leaves every depth *difference* |Δd̃| unchanged.

``manifest.json`` in a depth folder (written by ``sparseg depth``) records the estimator, input size,
kind, format, percentiles and each map's raw (q_lo, q_hi) and size; files it describes are stored
normalised. Without a manifest, stored values are normalised when they are loaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from sparseg.data.errors import DataError
from sparseg.data.splits import SplitEntry
from sparseg.stats import quantile

logger = logging.getLogger(__name__)

DEPTH_SUFFIXES = {"png16": ".png", "npy": ".npy"}
MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
PERCENTILES = (1.0, 99.0)
_PNG_SCALE = 65535.0
_MIN_SPAN = 1e-12
_DEPTH_EPS = 1e-6


def to_disparity(raw: np.ndarray | torch.Tensor, kind: Literal["disparity", "depth"]) -> np.ndarray | torch.Tensor:
    """Estimator output (array or tensor) as float32 disparity (larger = nearer): ``depth`` outputs become
    1/(d + ε) (§3)."""
    raw = raw.float() if isinstance(raw, torch.Tensor) else np.asarray(raw, dtype=np.float32)
    return raw if kind == "disparity" else 1.0 / (raw.clip(0.0) + _DEPTH_EPS)


def robust_normalise(disparity: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """d̃ = clip((d − q_lo)/(q_hi − q_lo), 0, 1) with the 1st/99th percentiles of the ``valid`` pixels (every
    pixel without ``valid`` or when it selects none); returns (d̃, q_lo, q_hi) in the input's dtype."""
    values = disparity[valid] if valid is not None and bool(valid.any()) else disparity.flatten()
    q_lo, q_hi = (quantile(values, p / 100) for p in PERCENTILES)
    return ((disparity - q_lo) / (q_hi - q_lo).clamp_min(_MIN_SPAN)).clamp(0, 1), q_lo, q_hi


def robust_normalise_array(disparity: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``robust_normalise`` of a whole image as float64 numpy; returns (float32 d̃, q_lo, q_hi)."""
    normalised, q_lo, q_hi = robust_normalise(torch.from_numpy(np.asarray(disparity, dtype=np.float64)))
    return normalised.float().numpy(), float(q_lo), float(q_hi)


def save_depth(path: Path, normalised: np.ndarray, fmt: Literal["png16", "npy"]) -> None:
    """Write d̃ ∈ [0, 1] as a 16-bit PNG (round(65535·d̃)) or a float32 .npy file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "png16":
        Image.fromarray(np.rint(np.clip(normalised, 0, 1) * _PNG_SCALE).astype(np.uint16)).save(path)
    else:
        np.save(path, np.asarray(normalised, dtype=np.float32))


def load_depth_file(path: Path) -> np.ndarray:
    """Stored values as float32 [H,W]: PNGs (8 or 16 bit) scaled to [0, 1], .npy files as they are."""
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as image:
                values = np.asarray(image)
            if np.issubdtype(values.dtype, np.integer):  # 8-bit, or 16-bit read as uint16 or int32
                values = values / np.float32(255.0 if values.dtype == np.uint8 else _PNG_SCALE)
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{path}: unreadable depth map: {err}") from None
    if values.ndim != 2:
        raise DataError(f"{path}: depth map must be single-channel [H,W], got shape {values.shape}")
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise DataError(f"{path}: depth map has non-finite values")
    return values


def read_manifest(depth_dir: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when there is none; DataError naming it when it is unusable."""
    path = depth_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable depth manifest: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        got = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise DataError(f"{path}: depth manifest format_version {got!r}, expected {FORMAT_VERSION}")
    return manifest


def depth_candidates(depth_dir: Path, item_id: str) -> list[Path]:
    """Depth files for an image id (its path relative to the root, no suffix), most preferred first."""
    keys = [item_id]
    stem = PurePosixPath(item_id).name
    if stem != item_id:
        keys.append(stem)
    return [depth_dir / f"{key}{suffix}" for key in keys for suffix in DEPTH_SUFFIXES.values()]


class DepthReader:
    """Finds the depth map of every split entry up front and loads it per item (depmatch.md §3).

    ``missing="error"`` raises naming the first image without a depth file; ``"skip"`` gives such
    images an all-False ``depth_valid``. ``norm="robust"`` yields d̃ ∈ [0, 1]; ``"raw"`` yields the
    estimator's disparity (q_lo + d̃(q_hi − q_lo) from the manifest, or the stored values without one).
    """

    def __init__(
        self,
        depth_dir: Path,
        entries: Sequence[SplitEntry],
        missing: Literal["error", "skip"] = "error",
        norm: Literal["robust", "raw"] = "robust",
    ) -> None:
        if not depth_dir.is_dir():
            raise DataError(f"{depth_dir}: depth folder not found (data.depth_dir)")
        self.depth_dir = depth_dir
        self.norm = norm
        self.manifest = read_manifest(depth_dir)
        self.entries = list(entries)
        self.paths: list[Path | None] = []
        for entry in self.entries:
            candidates = depth_candidates(depth_dir, entry.id)
            path = next((p for p in candidates if p.is_file()), None)
            if path is None and missing == "error":
                raise DataError(
                    f"{entry.image}: depth map not found (tried {', '.join(map(str, candidates))}); "
                    "compute it with `sparseg depth` or set data.depth_missing: skip"
                )
            if path is not None and self.manifest is not None:
                self._check_listed(path)
            self.paths.append(path)
        skipped = [e.image for e, p in zip(self.entries, self.paths) if p is None]
        if skipped:
            logger.warning("%d image(s) have no depth map under %s and are skipped by depth losses, e.g. %s",
                           len(skipped), depth_dir, skipped[0])

    def _key(self, path: Path) -> str:
        return path.relative_to(self.depth_dir).with_suffix("").as_posix()

    def _check_listed(self, path: Path) -> None:
        manifest_path = self.depth_dir / MANIFEST_NAME
        if self._key(path) not in self.manifest.get("images", {}):
            raise DataError(f"{path}: not listed in {manifest_path} (written by another run?); "
                             "recompute the folder with `sparseg depth`")
        expected = DEPTH_SUFFIXES.get(self.manifest.get("format"))
        if expected is not None and path.suffix != expected:
            raise DataError(f"{path}: {manifest_path} records format {self.manifest['format']} ({expected} files)")

    def fields(self, index: int, image_size: tuple[int, int]) -> dict[str, np.ndarray]:
        """``depth`` float32 [H,W] and ``depth_valid`` bool [H,W] for entry ``index``; image_size is (W, H)."""
        width, height = image_size
        path = self.paths[index]
        if path is None:
            return {"depth": np.zeros((height, width), np.float32), "depth_valid": np.zeros((height, width), bool)}
        values = load_depth_file(path)
        if values.shape != (height, width):
            raise DataError(f"{path}: depth map is {values.shape[1]}x{values.shape[0]} but image "
                             f"{self.entries[index].image} is {width}x{height} (width x height)")
        if self.manifest is not None:
            record = self.manifest["images"][self._key(path)]
            if tuple(record.get("size", (height, width))) != (height, width):
                raise DataError(f"{path}: {self.depth_dir / MANIFEST_NAME} records size {record['size']} "
                                 f"(height, width), the image is {height}x{width}")
            depth = values if self.norm == "robust" else record["q_lo"] + values * (record["q_hi"] - record["q_lo"])
        else:
            depth = robust_normalise_array(values)[0] if self.norm == "robust" else values
        return {"depth": np.asarray(depth, np.float32), "depth_valid": np.ones((height, width), bool)}
