"""Feature-space analysis (dgcl.md §7 "feature clustering"): how well per-pixel decoder features
(``fts``) of the validation set cluster by ground-truth class.

Scores (scikit-learn): silhouette (higher is better, in [−1, 1]), Calinski-Harabasz (higher is
better), Davies-Bouldin (lower is better), on a seeded sample of labeled pixels (255 ignored),
plus a 2-D embedding scatter plot (PCA or t-SNE).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparseg.config import EvalConfig
from sparseg.eval.inference import center_crop
from sparseg.labels import IGNORE

EMBED_POINTS = 5000  # at most this many points in the scatter plot (t-SNE is quadratic)


@dataclass
class FeatureScores:
    silhouette: float
    calinski_harabasz: float
    davies_bouldin: float
    num_pixels: int
    num_images: int
    pixels_per_class: dict[str, int]


@torch.inference_mode()
def sample_features(
    model: nn.Module,
    dataset: Sequence[dict[str, torch.Tensor]],
    eval_cfg: EvalConfig,
    samples: int,
    seed: int,
    device: torch.device | str,
    normalize: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """About ``samples`` labeled pixels, spread evenly over the images: features [n, D] and labels [n].

    Each image is centre-cropped under ``center_crop`` evaluation and resized by the first eval scale;
    labels are brought to feature resolution with nearest interpolation. Features are L2-normalised
    unless ``normalize`` is false. The model runs in eval mode, which is left set.
    """
    model.eval()
    rng = np.random.default_rng(seed)
    per_image = -(-samples // len(dataset))
    features, labels = [], []
    for index in range(len(dataset)):
        item = dataset[index]
        image, mask = item["image"], item["mask"]
        if eval_cfg.mode == "center_crop":
            image, mask = center_crop(image, mask, eval_cfg.crop_size)
        scale = eval_cfg.scales[0]
        size = (max(1, int(scale * image.shape[-2] + 0.5)), max(1, int(scale * image.shape[-1] + 0.5)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=True)
        fts = model(image.to(device))["fts"][0].float()
        mask = F.interpolate(mask[None, None].float(), size=fts.shape[-2:], mode="nearest")[0, 0].long()
        pixels = (mask.flatten() != IGNORE).nonzero().squeeze(1).numpy()
        if len(pixels) == 0:
            continue
        chosen = rng.choice(pixels, size=min(per_image, len(pixels)), replace=False)
        chosen_t = torch.from_numpy(chosen).to(fts.device)
        features.append(fts.flatten(1).T[chosen_t].cpu())
        labels.append(mask.flatten()[torch.from_numpy(chosen)])
    feats = torch.cat(features)
    if normalize:
        feats = F.normalize(feats, dim=1)
    keep = rng.permutation(len(feats))[:samples]
    return feats.numpy()[keep], torch.cat(labels).numpy()[keep]


def cluster_scores(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(silhouette, Calinski-Harabasz, Davies-Bouldin) of features grouped by label."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    if len(np.unique(labels)) < 2:
        raise ValueError("feature analysis needs pixels of at least two classes")
    return (
        float(silhouette_score(features, labels, random_state=seed)),
        float(calinski_harabasz_score(features, labels)),
        float(davies_bouldin_score(features, labels)),
    )


def plot_embedding(
    features: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    path: Path,
    method: Literal["pca", "tsne"] = "pca",
    seed: int = 0,
    title: str = "",
) -> None:
    """Scatter plot of a 2-D PCA or t-SNE embedding of at most EMBED_POINTS features, coloured by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    keep = np.random.default_rng(seed).permutation(len(features))[:EMBED_POINTS]
    features, labels = features[keep], labels[keep]
    if method == "tsne":
        points = TSNE(2, init="pca", random_state=seed).fit_transform(features)
    else:
        points = PCA(2, random_state=seed).fit_transform(features)
    fig, ax = plt.subplots(figsize=(7, 6))
    for c in np.unique(labels):
        chosen = labels == c
        colour = np.asarray(palette[c]) / 255.0 if c < len(palette) else None
        ax.scatter(*points[chosen].T, s=3, color=colour, label=class_names[c], alpha=0.6, linewidths=0)
    ax.legend(markerscale=4, fontsize=8, loc="best")
    ax.set_title(title or f"decoder features ({method.upper()})")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def analyze_features(
    model: nn.Module,
    dataset: Sequence[dict[str, torch.Tensor]],
    eval_cfg: EvalConfig,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    out_dir: str | Path,
    samples: int = 10_000,
    seed: int = 0,
    device: torch.device | str = "cpu",
    embedding: Literal["pca", "tsne"] = "pca",
    normalize: bool = True,
) -> FeatureScores:
    """Sample features, score them, write ``analysis.json`` and ``embedding.png`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    features, labels = sample_features(model, dataset, eval_cfg, samples, seed, device, normalize)
    silhouette, calinski_harabasz, davies_bouldin = cluster_scores(features, labels, seed)
    counts = np.bincount(labels, minlength=len(class_names))
    scores = FeatureScores(
        silhouette, calinski_harabasz, davies_bouldin, len(labels), len(dataset),
        {name: int(n) for name, n in zip(class_names, counts) if n},
    )
    (out_dir / "analysis.json").write_text(json.dumps(asdict(scores), indent=2) + "\n")
    plot_embedding(features, labels, class_names, palette, out_dir / "embedding.png", embedding, seed,
                   title=f"silhouette {silhouette:.3f}, CH {calinski_harabasz:.1f}, DB {davies_bouldin:.3f}")
    return scores
