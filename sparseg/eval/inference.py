"""Test-time inference: whole image, sliding window, multi-scale + flip, centre crop.

The model takes images in [0, 1] and returns a dict whose ``pred`` holds logits at reduced
resolution; they are upsampled bilinearly (align_corners=True) to the input size before softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparseg.config import EvalConfig
from sparseg.labels import IGNORE


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _forward_probs(model: nn.Module, image: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One forward pass: softmax probabilities [B,K,H,W] at the input size."""
    logits = model(image)["pred"]
    if logits.shape[1] != num_classes:
        raise ValueError(f"model predicts {logits.shape[1]} classes, expected {num_classes}")
    return _resize(logits.float(), tuple(image.shape[-2:])).softmax(dim=1)


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis: every ``stride``, the last one snapped to the border."""
    last = max(size - window, 0)
    return list(range(0, last, stride)) + [last]


def default_stride(crop_size: tuple[int, int]) -> tuple[int, int]:
    """Two thirds of the window, rounded up (769 -> 513, 801 -> 534)."""
    return (-(-2 * crop_size[0] // 3), -(-2 * crop_size[1] // 3))


def _sliding_window(
    model: nn.Module,
    image: torch.Tensor,
    num_classes: int,
    crop_size: tuple[int, int],
    stride: tuple[int, int],
) -> torch.Tensor:
    """Softmax summed over windows and divided by each pixel's window count."""
    if min(*crop_size, *stride) < 1:
        raise ValueError(f"eval.crop_size {crop_size} and eval.stride {stride} must be positive")
    height, width = image.shape[-2:]
    crop_h, crop_w = crop_size
    # zero-pad bottom/right so that every window has the full crop size
    image = F.pad(image, (0, max(crop_w - width, 0), 0, max(crop_h - height, 0)))
    padded_h, padded_w = image.shape[-2:]
    probs = image.new_zeros(image.shape[0], num_classes, padded_h, padded_w)
    count = image.new_zeros(1, 1, padded_h, padded_w)
    for top in _window_starts(padded_h, crop_h, stride[0]):
        for left in _window_starts(padded_w, crop_w, stride[1]):
            rows, cols = slice(top, top + crop_h), slice(left, left + crop_w)
            probs[:, :, rows, cols] += _forward_probs(model, image[:, :, rows, cols], num_classes)
            count[:, :, rows, cols] += 1
    return (probs / count)[:, :, :height, :width]


def _predict_single_scale(
    model: nn.Module, image: torch.Tensor, num_classes: int, cfg: EvalConfig
) -> torch.Tensor:
    if cfg.mode != "sliding_window":
        return _forward_probs(model, image, num_classes)
    if cfg.crop_size is None:
        raise ValueError("eval.mode sliding_window needs eval.crop_size")
    stride = cfg.stride or default_stride(cfg.crop_size)
    return _sliding_window(model, image, num_classes, cfg.crop_size, stride)


@torch.inference_mode()
def predict_probs(
    model: nn.Module, image: torch.Tensor, num_classes: int, cfg: EvalConfig
) -> torch.Tensor:
    """Class probabilities [B,K,H,W] for ``image`` [B,3,H,W] under ``cfg``'s protocol.

    ``whole``: one forward; ``sliding_window``: see ``_sliding_window``; ``center_crop`` predicts
    the image it is given as a whole (``evaluate`` crops image and label beforehand). Each scale s
    in ``cfg.scales`` runs at (s*H, s*W) rounded half up, plus a mirrored pass when ``cfg.flip``;
    all passes are resized back to H x W and averaged. The model's train/eval mode is left as is.
    """
    if not cfg.scales or min(cfg.scales) <= 0:
        raise ValueError(f"eval.scales must be positive numbers, got {cfg.scales}")
    height, width = image.shape[-2:]
    total = None
    passes = 0
    for scale in cfg.scales:
        size = (max(1, int(scale * height + 0.5)), max(1, int(scale * width + 0.5)))
        scaled = _resize(image, size)
        for flip in (False, True) if cfg.flip else (False,):
            x = scaled.flip(-1) if flip else scaled
            probs = _predict_single_scale(model, x, num_classes, cfg)
            if flip:
                probs = probs.flip(-1)
            probs = _resize(probs, (height, width))
            total = probs if total is None else total + probs
            passes += 1
    return total / passes


def center_crop(
    image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre crop of image [...,H,W] and mask [H,W]; where smaller, pad (centred) image 0, mask 255."""
    if image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
    crop_h, crop_w = size
    pad_h = max(crop_h - image.shape[-2], 0)
    pad_w = max(crop_w - image.shape[-1], 0)
    border = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    image = F.pad(image, border, value=0.0)
    mask = F.pad(mask, border, value=IGNORE)
    top = (image.shape[-2] - crop_h) // 2
    left = (image.shape[-1] - crop_w) // 2
    rows, cols = slice(top, top + crop_h), slice(left, left + crop_w)
    return image[..., rows, cols], mask[..., rows, cols]
