"""``sparseg depth``: depth maps for a split list from a ``transformers`` depth estimator (depmatch.md §3).

The estimator (``AutoModelForDepthEstimation`` and ``AutoImageProcessor`` from a local folder or hub id;
Depth Anything V2 Small by default) runs on every image of the list at ``input_size``; its output is
resized to the image, turned into disparity (``kind``), robust-normalised to d̃ (``sparseg.data.depth``)
and stored as ``<out>/<image path relative to the root, suffix replaced>.png|.npy``. ``manifest.json``
records the settings and each map's raw (q_lo, q_hi); a second run into the same folder must use the
same settings (its maps are added). ``calibrate`` writes no maps, only ``calibration.json`` with
U = median over images of (q_hi − q_lo) of the raw output: run with Depth Anything V2 Small, it is the
``depmatch.unit`` that puts d′ = U·d̃ on the released thresholds' scale.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sparseg.config import ConfigError, DataConfig
from sparseg.data.datasets import create_dataset_spec, to_rgb
from sparseg.data.depth import (
    DEPTH_SUFFIXES,
    FORMAT_VERSION,
    MANIFEST_NAME,
    PERCENTILES,
    read_manifest,
    robust_normalise_array,
    save_depth,
    to_disparity,
)
from sparseg.data.errors import DataError
from sparseg.data.splits import read_split
from sparseg.serialization import write_atomic

DEFAULT_ESTIMATOR = "depth-anything/Depth-Anything-V2-Small-hf"  # Apache-2.0 (Base/Large/Giant: CC-BY-NC-4.0)
CALIBRATION_NAME = "calibration.json"


def load_estimator(model: str, device: torch.device):
    """(image processor, eval-mode depth model) from a local folder or hub id."""
    try:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation
    except ImportError:
        raise ConfigError("sparseg depth needs transformers: pip install 'sparseg[hf]'") from None
    try:
        processor = AutoImageProcessor.from_pretrained(model)
        estimator = AutoModelForDepthEstimation.from_pretrained(model)
    except (OSError, ValueError) as err:
        raise OSError(f"--model {model}: cannot load a transformers depth estimator: {err}") from None
    return processor, estimator.eval().to(device)


@torch.inference_mode()
def predict_disparity(processor, estimator, image: Image.Image, input_size: int,
                      kind: Literal["disparity", "depth"]) -> np.ndarray:
    """The estimator's output for one RGB image, resized to the image (bilinear) and as disparity [H,W]."""
    device = next(estimator.parameters()).device
    inputs = processor(images=image, return_tensors="pt", size={"height": input_size, "width": input_size})
    predicted = estimator(pixel_values=inputs["pixel_values"].to(device)).predicted_depth
    raw = F.interpolate(predicted[:, None].float(), (image.height, image.width), mode="bilinear", align_corners=False)
    return to_disparity(raw[0, 0].cpu().numpy(), kind)


class OnlineDepth:
    """A frozen estimator in the training loop (``method.depmatch.depth_source: online``, depmatch.md §3).

    Called on a batch of crops [N,3,H,W] in [0, 1], it returns the estimator's raw output as disparity
    [N,H,W] float32, as the release uses it: the crops are resized bilinearly to the nearest multiple of the
    estimator's patch size (no change at the released 518 and 798 crops), normalised with the image
    processor's mean and std, run in ``precision`` on CUDA (fp32 elsewhere) without gradient, and the output is
    resized back to the crop. The model is loaded on first use, on the device of the first batch; it is a
    plain attribute of no module, so no optimiser, EMA, DDP wrapper or checkpoint ever sees it.
    """

    def __init__(self, model: str, kind: Literal["disparity", "depth"] = "disparity",
                 precision: Literal["fp16", "fp32"] = "fp16") -> None:
        self.model = model
        self.kind = kind
        self.precision = precision
        self._loaded: tuple[torch.nn.Module, torch.Tensor, torch.Tensor, int] | None = None

    def _load(self, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, int]:
        if self._loaded is None:
            processor, estimator = load_estimator(self.model, device)
            estimator.requires_grad_(False)
            if device.type == "cuda" and self.precision == "fp16":
                estimator.half()
            mean, std = (torch.tensor(values, device=device).view(1, 3, 1, 1)
                         for values in (processor.image_mean, processor.image_std))
            self._loaded = estimator, mean, std, int(getattr(estimator.config, "patch_size", 14))
        return self._loaded

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        estimator, mean, std, patch = self._load(images.device)
        height, width = images.shape[-2:]
        size = (max(round(height / patch), 1) * patch, max(round(width / patch), 1) * patch)
        x = images.float()
        if size != (height, width):
            x = F.interpolate(x, size, mode="bilinear", align_corners=False)
        dtype = next(estimator.parameters()).dtype
        with torch.autocast(images.device.type, enabled=False):
            raw = estimator(pixel_values=((x - mean) / std).to(dtype)).predicted_depth
        raw = F.interpolate(raw[:, None].float(), (height, width), mode="bilinear", align_corners=False)[:, 0]
        return to_disparity(raw, self.kind)


def _write_json(path: Path, content: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(content, indent=1) + "\n").encode("utf-8"), durable=False)


def compute_depth(
    list_path: str | Path,
    out: str | Path,
    model: str = DEFAULT_ESTIMATOR,
    root: str | Path | None = None,
    dataset: str = "folder",
    input_size: int = 518,
    fmt: Literal["png16", "npy"] = "png16",
    kind: Literal["disparity", "depth"] = "disparity",
    device: str | torch.device = "cpu",
    calibrate: bool = False,
) -> dict[str, Any]:
    """Write the depth maps and manifest (or only the calibration); returns the manifest or calibration."""
    list_path, out = Path(list_path), Path(out)
    root = Path(root) if root is not None else list_path.parent
    if fmt not in DEPTH_SUFFIXES:
        raise ConfigError(f"--format {fmt}: choose one of {', '.join(DEPTH_SUFFIXES)}")
    # labels are never read: a folder dataset needs some class count only to build its spec
    spec = create_dataset_spec(DataConfig(dataset=dataset, root=str(root), num_classes=1 if dataset == "folder" else None))
    entries = read_split(list_path, root, spec, labeled=False)
    settings = {"format_version": FORMAT_VERSION, "estimator": model, "input_size": input_size, "kind": kind,
                "format": fmt, "percentiles": list(PERCENTILES), "normalised": True}
    out.mkdir(parents=True, exist_ok=True)
    existing = None if calibrate else read_manifest(out)
    if existing is not None:
        changed = {k: existing.get(k) for k, v in settings.items() if existing.get(k) != v}
        if changed:
            raise DataError(f"{out / MANIFEST_NAME}: its maps were written with {changed}, not with these settings; "
                            "use another --out or remove the folder")
    processor, estimator = load_estimator(model, torch.device(device))
    records: dict[str, dict[str, Any]] = dict(existing["images"]) if existing else {}
    ranges: dict[str, float] = {}
    started = time.perf_counter()
    for number, entry in enumerate(entries, start=1):
        try:
            with Image.open(entry.image) as file:
                image = to_rgb(file, entry.image)
        except OSError as err:
            raise DataError(f"{entry.image}: unreadable image: {err}") from None
        normalised, q_lo, q_hi = robust_normalise_array(predict_disparity(processor, estimator, image, input_size, kind))
        ranges[entry.id] = q_hi - q_lo
        if not calibrate:
            save_depth(out / f"{entry.id}{DEPTH_SUFFIXES[fmt]}", normalised, fmt)
            records[entry.id] = {"q_lo": q_lo, "q_hi": q_hi, "size": [image.height, image.width]}
        if number % 100 == 0 or number == len(entries):
            print(f"depth: {number}/{len(entries)} images ({time.perf_counter() - started:.0f}s)", flush=True)
    if calibrate:
        calibration = {"estimator": model, "input_size": input_size, "kind": kind, "percentiles": list(PERCENTILES),
                       "images": len(ranges), "unit": float(np.median(list(ranges.values()))), "ranges": ranges}
        _write_json(out / CALIBRATION_NAME, calibration)
        return calibration
    median_range = float(np.median([r["q_hi"] - r["q_lo"] for r in records.values()]))
    manifest = {**settings, "median_range": median_range, "images": records}
    _write_json(out / MANIFEST_NAME, manifest)  # last: the maps it lists are complete
    return manifest
