"""``sparseg pseudo-label``: a trained model labels a list of images (offline self-training, ST/ST++ style).

Pass 1 predicts every image and keeps every ``stride``-th pixel's probabilities; from them alone (no masks of these
images) the class-mix alignment bias b is fitted to the labeled list's class prior π (docs/methods/alignment.md,
"Offline"): ``hard_share`` iterates b_c += η · clip(log π_c − log s_c, −δ, δ) ``updates`` times, s the argmax
shares of the sampled pixels under b; ``mean_prob`` sets b = log π − log p̄. Pass 2 predicts again and writes
argmax(log p + b) as a palette PNG per image, 255 (ignore) where the aligned confidence is below ``threshold``
(``per_class``: below its class's threshold min(τ, τ_c), fitted on the pass-1 sample as in training's
``pseudo_label.filter: per_class``), with ``pseudo.txt`` (these pairs), ``train.txt`` (the labeled list and these pairs, for ``data.train_list``) and
``manifest.json``. Every output is checked before anything is predicted: none may be an input or exist already
(unless ``overwrite``), and two images may not share one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import track
from torch import nn

from sparseg.config import Config
from sparseg.data import EvalTransform, build_dataset
from sparseg.data.datasets import DatasetSpec, SegmentationDataset
from sparseg.eval.inference import predict_probs
from sparseg.eval.visualize import save_mask_png
from sparseg.labels import IGNORE
from sparseg.methods.alignment import class_thresholds, hard_share_step, mean_prob_bias
from sparseg.serialization import write_atomic

ALIGNMENTS = ("none", "hard_share", "mean_prob")


class PseudoLabelError(ValueError):
    """The inputs and the output folder do not allow writing the pseudo-labels safely."""


def image_probs(model: nn.Module, dataset: SegmentationDataset, cfg: Config, device: torch.device,
                description: str = "Predicting") -> Iterator[tuple[int, torch.Tensor]]:
    """(index, probabilities [K, H, W]) of every image of ``dataset`` under the config's evaluation protocol."""
    model.eval()
    with torch.no_grad():
        for index in track(range(len(dataset)), description=description, transient=True):
            image = dataset[index]["image"][None].to(device)
            yield index, predict_probs(model, image, dataset.spec.num_classes, cfg.eval)[0].float()


def sampled_log_probs(probs: Iterator[tuple[int, torch.Tensor]], stride: int) -> torch.Tensor:
    """log p of every ``stride``-th pixel in both directions of every image, [N, K]."""
    rows = [p[:, ::stride, ::stride].flatten(1).T for _, p in probs]
    return torch.cat(rows).clamp_min(1e-12).log()


def fit_bias(log_probs: torch.Tensor, prior: torch.Tensor, align: str, updates: int = 30, rate: float = 0.5,
             clip: float = 1.0) -> torch.Tensor:
    """The alignment bias b [K] for pixels ``log_probs`` [N, K] and the class prior π (see the module docstring)."""
    bias = torch.zeros(log_probs.shape[1])
    if align == "mean_prob":
        return mean_prob_bias(prior, log_probs.exp().mean(0))
    if align == "hard_share":
        for _ in range(updates):
            share = torch.bincount((log_probs + bias).argmax(1), minlength=len(bias)).float() / len(log_probs)
            bias += hard_share_step(prior, share, rate, clip)
    return bias


def pseudo_labels(probs: torch.Tensor, bias: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """argmax of log p + b, 255 where the aligned probability of that class is below its entry of ``thresholds``
    [K]; [H, W] int64."""
    aligned = (probs.clamp_min(1e-12).log() + bias.to(probs.device)[:, None, None]).softmax(0)
    confidence, labels = aligned.max(0)
    return labels.masked_fill(confidence < thresholds.to(probs.device)[labels], IGNORE)


def fit_thresholds(log_probs: torch.Tensor, bias: torch.Tensor, threshold: float, per_class: bool) -> torch.Tensor:
    """Each class's confidence threshold [K] for pixels ``log_probs`` [N, K] under the bias b: τ for all, or
    with ``per_class`` min(τ, τ_c) (sparseg.methods.alignment.class_thresholds)."""
    num_classes = log_probs.shape[1]
    if not per_class:
        return torch.full((num_classes,), float(threshold))
    confidence, labels = (log_probs + bias).softmax(1).max(1)
    return class_thresholds(confidence, labels, threshold, num_classes)


@dataclass(frozen=True)
class Outputs:
    """Where each image's pseudo-label goes, and the lists."""

    masks: list[Path]
    pseudo_list: Path
    train_list: Path
    manifest: Path


def plan_outputs(images: list[Path], root: Path, out: Path, inputs: set[Path], overwrite: bool) -> Outputs:
    """Output paths: ``OUT/<image path under the data root, or its name>.png``; checked before any work."""
    root = root.resolve()
    masks = []
    for image in images:
        image = image.resolve()
        relative = image.relative_to(root) if image.is_relative_to(root) else Path(image.name)
        masks.append((out / relative).with_suffix(".png").resolve())
    lists = [out.resolve() / name for name in ("pseudo.txt", "train.txt", "manifest.json")]
    seen: dict[Path, Path] = {}
    for image, mask in zip(images, masks):
        if mask in seen:
            raise PseudoLabelError(f"{image} and {seen[mask]} would both be labeled into {mask}; give --out a "
                                   "folder per list or rename one")
        seen[mask] = image
    for path in masks + lists:
        if path in inputs:
            raise PseudoLabelError(f"{path} is an input; --out {out} would overwrite it")
        if path.exists() and not overwrite:
            raise PseudoLabelError(f"{path} exists; pass --overwrite to replace it")
    return Outputs(masks, *lists)


def run_pseudo_label(model: nn.Module, cfg: Config, checkpoint: str, images_list: str, out: Path,
                     labeled_list: str | None, align: str, threshold: float, updates: int, stride: int,
                     overwrite: bool, device: torch.device, per_class: bool = False) -> dict:
    """Write the pseudo-labels of ``images_list`` (see the module docstring); returns the manifest."""
    data = cfg.data.model_copy(update={"unlabeled_list": images_list, "labeled_list": labeled_list})
    images = build_dataset(data, "unlabeled_list", labeled=False, transform=EvalTransform())
    labeled = build_dataset(data, "labeled_list", labeled=True, transform=EvalTransform()) if labeled_list else None
    if align != "none" and labeled is None:
        raise PseudoLabelError(f"--align {align} needs the labeled class prior: pass --labeled LIST")
    inputs = {p.resolve() for e in images.entries + (labeled.entries if labeled else []) for p in (e.image, e.mask)
              if p is not None}
    outputs = plan_outputs([e.image for e in images.entries], Path(data.root), out, inputs, overwrite)

    spec: DatasetSpec = images.spec
    prior = torch.from_numpy(labeled.class_pixel_counts()).double() if labeled else torch.zeros(spec.num_classes)
    prior = (prior / prior.sum().clamp_min(1)).float()
    sampled = sampled_log_probs(image_probs(model, images, cfg, device, "Pass 1: class mix"), stride)
    bias = fit_bias(sampled, prior, align, updates)
    thresholds = fit_thresholds(sampled, bias, threshold, per_class)
    counts = np.zeros(spec.num_classes, dtype=np.int64)
    ignored = total = 0
    for index, probs in image_probs(model, images, cfg, device, "Pass 2: writing"):
        labels = pseudo_labels(probs, bias, thresholds).cpu().numpy().astype(np.uint8)
        outputs.masks[index].parent.mkdir(parents=True, exist_ok=True)
        save_mask_png(labels, spec.palette, outputs.masks[index])
        counts += np.bincount(labels[labels != IGNORE], minlength=spec.num_classes)[: spec.num_classes]
        ignored += int((labels == IGNORE).sum())
        total += labels.size
    pairs = [f"{e.image.resolve()} {m}\n" for e, m in zip(images.entries, outputs.masks)]
    labeled_pairs = [f"{e.image.resolve()} {e.mask.resolve()}\n" for e in labeled.entries] if labeled else []
    write_atomic(outputs.pseudo_list, "".join(pairs).encode())
    write_atomic(outputs.train_list, "".join(labeled_pairs + pairs).encode())
    share_before = torch.bincount(sampled.argmax(1), minlength=spec.num_classes).float() / len(sampled)
    manifest = {
        "checkpoint": str(checkpoint), "images": str(images_list), "labeled": labeled_list, "align": align,
        "updates": updates if align == "hard_share" else None, "threshold": threshold, "per_class": per_class,
        "class_thresholds": thresholds.tolist(), "stride": stride,
        "class_names": list(spec.class_names), "prior": prior.tolist(), "bias": bias.tolist(),
        "argmax_share_before": share_before.tolist(),
        "pseudo_label_share": (counts / max(counts.sum(), 1)).tolist(), "ignored_fraction": ignored / max(total, 1),
        "num_images": len(images),
    }
    write_atomic(outputs.manifest, (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest
