"""Seeded paired augmentation of aligned fields, and batch operations (strong photometric, CutMix).

Per-item transforms take ``{key: PIL image | ndarray}`` of equal height and width and a numpy
``Generator``; how each key is resized, padded and converted comes from ``FIELDS``. Batch
operations work on torch tensors and draw from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sparseg.labels import IGNORE

Fields = dict[str, Image.Image | np.ndarray]


def _image_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div_(255.0)


@dataclass(frozen=True)
class FieldKind:
    """How one key is resampled ("bilinear" or "nearest"), padded and turned into a tensor."""

    resample: str
    pad: Any
    to_tensor: Callable[[np.ndarray], torch.Tensor]


FIELDS: dict[str, FieldKind] = {
    "image": FieldKind("bilinear", 0, _image_tensor),  # uint8 [H,W,3] -> float32 [3,H,W] in [0,1]
    "mask": FieldKind("nearest", IGNORE, lambda a: torch.from_numpy(a.astype(np.int64))),
    "valid": FieldKind("nearest", False, lambda a: torch.from_numpy(a.astype(bool))),
    # float32 depth (sparseg.data.depth): resized like the image, never colour-augmented (depmatch.md §3)
    "depth": FieldKind("bilinear", 0.0, lambda a: torch.from_numpy(a.astype(np.float32))),
    "depth_valid": FieldKind("nearest", False, lambda a: torch.from_numpy(a.astype(bool))),
}


def _prepare(fields: Fields) -> dict[str, np.ndarray]:
    """Fields as arrays of one size, with ``valid`` (all True) added when absent."""
    arrays = {}
    for key, value in fields.items():
        if key not in FIELDS:
            raise KeyError(f"no transform rule for field '{key}' (known: {', '.join(FIELDS)})")
        arrays[key] = np.array(value) if isinstance(value, Image.Image) else np.asarray(value)
    size = arrays["image"].shape[:2]
    for key, a in arrays.items():
        if a.shape[:2] != size:
            raise ValueError(f"field '{key}' is {a.shape[:2]} but 'image' is {size} (height, width)")
    arrays.setdefault("valid", np.ones(size, dtype=bool))
    return arrays


def _to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key: FIELDS[key].to_tensor(np.ascontiguousarray(a)) for key, a in arrays.items()}


def _resize(a: np.ndarray, size: tuple[int, int], resample: str) -> np.ndarray:
    h, w = size
    if resample == "nearest":  # pixel-centre sampling, as PIL's NEAREST
        rows = np.minimum(((np.arange(h) + 0.5) * a.shape[0] / h).astype(np.int64), a.shape[0] - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * a.shape[1] / w).astype(np.int64), a.shape[1] - 1)
        return a[rows[:, None], cols]
    if a.dtype == np.uint8 and (a.ndim == 2 or a.shape[2] in (3, 4)):
        return np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR))
    if a.dtype == np.float32 and a.ndim == 2:  # PIL mode "F": the same filter as the image
        return np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR))
    raise ValueError(f"bilinear resize needs uint8 grey or colour, or float32 grey arrays, got {a.dtype} {a.shape}")


class TrainTransform:
    """Long-side resize to ``base_size`` (optional), random rescale, pad, random crop, horizontal flip.

    Padding is 0 for images, 255 for masks and False for ``valid``. All randomness comes from the
    ``rng`` passed per call, so an item depends only on its sample seed.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int],
        scale_range: tuple[float, float] = (0.5, 2.0),
        base_size: int | None = None,
        flip: bool = True,
    ) -> None:
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        self.scale_range = scale_range
        self.base_size = base_size
        self.flip = flip

    def __call__(self, fields: Fields, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        arrays = _prepare(fields)
        h, w = arrays["image"].shape[:2]
        long_side = max(1, round((self.base_size or max(h, w)) * rng.uniform(*self.scale_range)))
        if h >= w:
            size = (long_side, max(1, round(w * long_side / h)))
        else:
            size = (max(1, round(h * long_side / w)), long_side)
        arrays = {k: _resize(a, size, FIELDS[k].resample) for k, a in arrays.items()}

        ch, cw = self.crop_size
        pad_h, pad_w = max(ch - size[0], 0), max(cw - size[1], 0)
        if pad_h or pad_w:
            arrays = {
                k: np.pad(a, ((0, pad_h), (0, pad_w)) + ((0, 0),) * (a.ndim - 2), constant_values=FIELDS[k].pad)
                for k, a in arrays.items()
            }
        top = rng.integers(0, size[0] + pad_h - ch + 1)
        left = rng.integers(0, size[1] + pad_w - cw + 1)
        arrays = {k: a[top : top + ch, left : left + cw] for k, a in arrays.items()}
        if self.flip and rng.random() < 0.5:
            arrays = {k: a[:, ::-1] for k, a in arrays.items()}
        return _to_tensors(arrays)


class EvalTransform:
    """No augmentation: fields to tensors at their native size."""

    def __call__(self, fields: Fields, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        return _to_tensors(_prepare(fields))


# ---------------------------------------------------------------- batch operations


def _uniform(generator: torch.Generator, shape: tuple[int, ...], low: float, high: float, device) -> torch.Tensor:
    values = torch.rand(shape, generator=generator, device=generator.device)
    return (low + (high - low) * values).to(device)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp(0, 1)


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), f)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grayscale(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grayscale(x), f)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` (fraction of a turn) through HSV, as torchvision's adjust_hue."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    minc, _ = x.min(1)
    chroma = v - minc
    flat = chroma == 0
    s = chroma / torch.where(flat, torch.ones_like(v), v)
    c = torch.where(flat, torch.ones_like(chroma), chroma)
    rc, gc, bc = (v - r) / c, (v - g) / c, (v - b) / c
    h = torch.where(v == r, bc - gc, torch.where(v == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(flat, torch.zeros_like(h), h)
    h = (h / 6.0 + shift.view(-1, 1, 1)) % 1.0

    sector = torch.floor(h * 6.0)
    f = h * 6.0 - sector
    p = (v * (1 - s)).clamp(0, 1)
    q = (v * (1 - s * f)).clamp(0, 1)
    t = (v * (1 - s * (1 - f))).clamp(0, 1)
    n, height, width = v.shape
    table = torch.stack((v, q, p, p, t, v, t, v, v, q, p, p, p, p, t, v, v, q), dim=1).view(n, 3, 6, height, width)
    index = (sector.long() % 6).view(n, 1, 1, height, width).expand(n, 3, 1, height, width)
    return table.gather(2, index).squeeze(2)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image (reflect padding)."""
    n, c, h, w = x.shape
    radius = max(1, min(math.ceil(3 * float(sigma.max())), h - 1, w - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # [n*c, k]
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, 1, -1), groups=n * c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


def strong_photometric(
    images: torch.Tensor,
    generator: torch.Generator,
    brightness: float = 0.5,
    contrast: float = 0.5,
    saturation: float = 0.5,
    hue: float = 0.25,
    p_jitter: float = 0.8,
    p_gray: float = 0.2,
    p_blur: float = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
) -> torch.Tensor:
    """UniMatch's strong view on a batch [B,3,H,W] in [0,1], with independent parameters per image.

    Colour jitter (probability ``p_jitter``; the four adjustments in a random order per image, as
    torchvision's ColorJitter), then grayscale (``p_gray``), then Gaussian blur with sigma ~ U(sigma)
    (``p_blur``). The number of random draws is fixed, so the result depends only on the generator state.
    """
    b, device = images.shape[0], images.device
    x = images.to(torch.float32, copy=True)
    jitter = _uniform(generator, (b,), 0, 1, device) < p_jitter
    ops = (
        (_brightness, _uniform(generator, (b,), max(0.0, 1 - brightness), 1 + brightness, device)),
        (_contrast, _uniform(generator, (b,), max(0.0, 1 - contrast), 1 + contrast, device)),
        (_saturation, _uniform(generator, (b,), max(0.0, 1 - saturation), 1 + saturation, device)),
        (_hue, _uniform(generator, (b,), -hue, hue, device)),
    )
    order = torch.argsort(_uniform(generator, (b, len(ops)), 0, 1, device), dim=1)
    gray = _uniform(generator, (b,), 0, 1, device) < p_gray
    blur = _uniform(generator, (b,), 0, 1, device) < p_blur
    sigmas = _uniform(generator, (b,), sigma[0], sigma[1], device)

    with torch.autocast(device.type, enabled=False):  # fp32 also inside the trainer's autocast (the blur is a conv)
        for step in range(len(ops)):
            for op_index, (op, factor) in enumerate(ops):
                chosen = jitter & (order[:, step] == op_index)
                if chosen.any():
                    x[chosen] = op(x[chosen], factor[chosen])
        x = torch.where(gray.view(-1, 1, 1, 1), _grayscale(x).expand_as(x), x)
        if blur.any():
            x[blur] = _gaussian_blur(x[blur], sigmas[blur])
    return x.to(images.dtype)


def _box_masks(top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor, h: int, w: int):
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :]


def half_area_boxes(b: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """One box per image covering about half of it (U2PL/DGCL): bool [B,H,W].

    Width uniform in [W//2+1, W-1], height round(H*W / (2 width)), position uniform inside the image.
    """
    low = w // 2 + 1
    width = torch.randint(low, max(w, low + 1), (b,), generator=generator, device=generator.device).clamp(max=w)
    height = (h * w / (2 * width.double())).round().long().clamp(1, h)
    top = (torch.rand(b, generator=generator, device=generator.device) * (h - height + 1)).long()
    left = (torch.rand(b, generator=generator, device=generator.device) * (w - width + 1)).long()
    return _box_masks(top, left, height, width, h, w)


def random_area_boxes(
    b: int,
    h: int,
    w: int,
    generator: torch.Generator,
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
) -> torch.Tensor:
    """UniMatch's CutMix boxes: bool [B,H,W]; with probability 1-p an image gets no box.

    Area ~ U(area) of H*W, aspect ratio ~ U(ratio); ratio and position are redrawn until the box
    fits inside the image (the reference's rejection loop, vectorised).
    """
    dev = generator.device
    apply = torch.rand(b, generator=generator, device=dev) < p
    target = (area[0] + (area[1] - area[0]) * torch.rand(b, generator=generator, device=dev)) * h * w
    top, left, height, width = (torch.zeros(b, dtype=torch.long, device=dev) for _ in range(4))
    pending = apply.clone()
    for _ in range(1000):
        todo = pending.nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        r = ratio[0] + (ratio[1] - ratio[0]) * torch.rand(todo.numel(), generator=generator, device=dev)
        bw = torch.sqrt(target[todo] / r).long()
        bh = torch.sqrt(target[todo] * r).long()
        x = torch.randint(0, w, (todo.numel(),), generator=generator, device=dev)
        y = torch.randint(0, h, (todo.numel(),), generator=generator, device=dev)
        fits = (x + bw <= w) & (y + bh <= h)
        done = todo[fits]
        top[done], left[done], height[done], width[done] = y[fits], x[fits], bh[fits], bw[fits]
        pending[done] = False
    else:
        raise ValueError(f"no CutMix box of area {area} and ratio {ratio} fits a {h}x{w} image")
    return _box_masks(top, left, height, width, h, w) & apply[:, None, None]


def cutmix(tensor: torch.Tensor, boxes: torch.Tensor, partner: torch.Tensor | None = None) -> torch.Tensor:
    """Paste ``tensor[partner]`` inside the boxes: images [B,C,H,W] or labels [B,H,W].

    ``partner`` defaults to (i + 1) mod B.
    """
    b = tensor.shape[0]
    if partner is None:
        partner = (torch.arange(b, device=tensor.device) + 1) % b
    box = boxes.to(tensor.device)
    box = box.view(b, *([1] * (tensor.dim() - box.dim())), *box.shape[1:])
    return torch.where(box, tensor[partner], tensor)
