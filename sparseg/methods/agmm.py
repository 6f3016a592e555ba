"""AGMM (Wu et al., CVPR 2023): partial CE plus adaptive Gaussian mixture supervision (agmm.md §5).

Per image, each class labeled in the crop gets a centroid μ (mean decoder feature of its labeled
pixels) and every pixel a response G = exp(-d²/s) from its channel-mean L1 distance d to that centroid.
Besides pCE (a): G supervises the probabilities P at in-image pixels (b), labels supervise G at labeled
pixels (c), class centroids are pushed apart (d), and classes without a label in the image are
suppressed (e). Inference uses the classifier alone. Defaults reproduce the reference code
(Luffy03/AGMM-SASS 6a60ea0); the switches of agmm.md §5 are opt-in.

Symbols follow agmm.md §5: B batch, K classes, C feature channels, S x S crop, h x w feature size,
Y canonical labels (254 unlabeled, 255 ignore), t image tags, c crop tags, n_b = Σ_k c_bk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from sparseg.config import ConfigError
from sparseg.labels import IGNORE
from sparseg.methods import register_method
from sparseg.methods.base import MethodConfig
from sparseg.methods.partial_ce import PartialCE, PartialCEConfig

EPS = 1e-6  # ε of agmm.md §5, everywhere


class AGMMWeights(MethodConfig):
    """Weight of each term in the total (agmm.md §5: all 1)."""

    pce: float = Field(1.0, ge=0)
    g2p: float = Field(1.0, ge=0)
    y2g: float = Field(1.0, ge=0)
    proto: float = Field(1.0, ge=0)
    absent: float = Field(1.0, ge=0)


class AGMMConfig(PartialCEConfig):
    """``method:`` keys of ``agmm`` (agmm.md §5 "Toolkit switches"; docs/methods/agmm.md)."""

    variance: Literal["fixed", "adaptive", "adaptive_uniform"] = "fixed"  # s = 1, or s = 2σ² + ε
    var_floor: float = Field(0.0, ge=0)  # added to σ² (adaptive variants)
    detach_target: bool = False  # stop-gradient on G in (b)
    proto_reduce: Literal["sum", "mean"] = "sum"  # class vectors of (d): sum over images (reference) or mean
    pad_mode: Literal["soft", "masked"] = "soft"  # soft padding mask (reference) or mask-normalised resizes
    weights: AGMMWeights = Field(default_factory=AGMMWeights)


# ---------------------------------------------------------------- resizing


def gmm_resize(x: Tensor, size: tuple[int, int], weight: Tensor | None = None) -> Tensor:
    """Bilinear resize, align_corners=False (every GMM resize, agmm.md §5). With ``weight`` [B,1,..]
    (pad_mode masked) it is mask-normalised, resize(x·w) / max(resize(w), ε): padded cells never leak."""
    if weight is None:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    num = F.interpolate(x * weight, size=size, mode="bilinear", align_corners=False)
    return num / F.interpolate(weight, size=size, mode="bilinear", align_corners=False).clamp_min(EPS)


def _resize_matrix(n_out: int, n_in: int, like: Tensor) -> Tensor:
    """[n_out, n_in]: 1-D linear resize with align_corners=False as a matrix (bilinear is separable)."""
    eye = torch.eye(n_in, dtype=like.dtype, device=like.device)
    return F.interpolate(eye[None], size=n_out, mode="linear", align_corners=False)[0].T


def resize_transpose(x: Tensor, size: tuple[int, int]) -> Tensor:
    """The adjoint of ``gmm_resize`` from ``size`` to x's size: <x, resize(f)> = <resize_transpose(x), f>.

    Sums over S x S pixels of an upsampled feature become sums over h x w cells, so centroids of the
    full-resolution F̃ never materialise the B x C x S x S tensor (agmm.md §9 trap 12).
    """
    rows = _resize_matrix(x.shape[-2], size[0], x)
    cols = _resize_matrix(x.shape[-1], size[1], x)
    return rows.T @ x @ cols


# ---------------------------------------------------------------- the Gaussian maps


@dataclass
class GaussianMaps:
    """Per-image mixture of agmm.md §5 steps 1-2."""

    centroids: Tensor  # μ [B,K,C]; 0 where c = 0
    present: Tensor  # c [B,K] float: class labeled inside the crop
    distance: Tensor  # d [B,K,h,w]
    kernel: Tensor  # g [B,K,h,w]
    maps: Tensor  # G [B,K,S,S]; 0 where c = 0


class ChannelL1(torch.autograd.Function):
    """(1/C) Σ_j |F_j(u) − μ_kj| for one image: features [C,h,w], centroids [n,C] -> [n,h,w].

    The backward recomputes the differences instead of keeping n x C x h x w of them (agmm.md §9 trap 12).
    """

    @staticmethod
    def forward(ctx, features: Tensor, centroids: Tensor) -> Tensor:
        ctx.save_for_backward(features, centroids)
        return (features[None] - centroids[:, :, None, None]).abs().mean(1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        features, centroids = ctx.saved_tensors
        signed = torch.sign(features[None] - centroids[:, :, None, None]) * (grad[:, None] / features.shape[0])
        return signed.sum(0), -signed.sum((2, 3))


def _distances(features: Tensor, centroids: Tensor, present: Tensor) -> Tensor:
    """d without masks, [B,K,h,w]: per image for crop-present classes only (absent ones are 0)."""
    b, k = present.shape
    rows = []
    for i in range(b):
        classes = present[i].nonzero().squeeze(1)
        d = features.new_zeros(k, *features.shape[-2:])
        if classes.numel():
            d = d.index_copy(0, classes, ChannelL1.apply(features[i], centroids[i, classes]))
        rows.append(d)
    return torch.stack(rows)


def gaussian_maps(
    features: Tensor,
    mask: Tensor,
    num_classes: int,
    variance: str = "fixed",
    var_floor: float = 0.0,
    pad_mode: str = "soft",
    probs: Tensor | None = None,
    tags: Tensor | None = None,
) -> GaussianMaps:
    """Centroids, distances and G from features F [B,C,h,w] and labels Y [B,S,S] (agmm.md §5).

    The adaptive variances need ``probs`` P [B,K,S,S] and image ``tags`` t [B,K].
    """
    if pad_mode not in ("soft", "masked"):
        raise ValueError(f"pad_mode must be 'soft' or 'masked', got '{pad_mode}'")
    h, w = features.shape[-2:]
    size = tuple(mask.shape[-2:])
    onehot = (mask[:, None] == torch.arange(num_classes, device=mask.device)[None, :, None, None]).to(features.dtype)
    counts = onehot.sum((2, 3))  # labeled pixels per (b, k)
    present = (counts > 0).to(features.dtype)  # c
    in_image = (mask != IGNORE).to(features.dtype)[:, None]  # 𝓥 as [B,1,S,S]

    # soft mask m (step 2) or, in masked mode, the hard cell mask every resize is normalised by
    m = gmm_resize(in_image, (h, w))
    cells = None
    if pad_mode == "masked":
        m = cells = (m >= 0.5).to(features.dtype)

    # step 1: μ_bk = mean of F̃ over pixels with Y = k, F̃ = up(F); through the resize adjoint (exact)
    pixel_weight = onehot / counts.clamp_min(1)[:, :, None, None]
    if cells is not None:
        pixel_weight = pixel_weight / gmm_resize(cells, size).clamp_min(EPS)
    cell_weight = resize_transpose(pixel_weight, (h, w))  # [B,K,h,w]
    weighted = features if cells is None else features * cells
    centroids = torch.einsum("bkhw,bchw->bkc", cell_weight, weighted)

    # step 2: d = c · m · channel-mean |F − μ|, g = exp(−d² / s), G = c · up(g)
    distance = _distances(features, centroids, present) * present[:, :, None, None] * m
    scale = _bandwidth(distance, variance, var_floor, m, None if cells is None else in_image, probs, tags)
    kernel = torch.exp(-distance.square() / scale)
    maps = present[:, :, None, None] * gmm_resize(kernel, size, cells)  # c after upsampling (trap 3)
    return GaussianMaps(centroids, present, distance, kernel, maps)


def _bandwidth(distance: Tensor, variance: str, var_floor: float, m: Tensor, pixel_weight: Tensor | None,
               probs: Tensor | None, tags: Tensor | None) -> Tensor | float:
    """s of g = exp(−d²/s): 1 (reference code), or 2(σ² + var_floor) + ε with σ² detached, as in the
    reference's two commented-out variants (agmm.md §5 "Paper vs code"):
    ``adaptive``: σ² = Σ P′d² / (Σ P′ + ε), P′ = resize(P ⊙ t) · m (``pixel_weight`` normalises the
    resize of P′ in masked mode); ``adaptive_uniform``: σ² = Σ d² / Σ m + ε (d is already masked by m)."""
    if variance == "fixed":
        return 1.0
    with torch.no_grad():
        if variance == "adaptive":
            if probs is None or tags is None:
                raise ValueError("variance 'adaptive' needs the probabilities and the image tags")
            weight = gmm_resize(probs * tags[:, :, None, None], distance.shape[-2:], pixel_weight) * m
            sigma2 = (weight * distance.square()).sum((2, 3)) / (weight.sum((2, 3)) + EPS)
        elif variance == "adaptive_uniform":
            # Σm is 0 only for an image without any labeled pixel, where every d is 0: keep s finite there
            sigma2 = distance.square().sum((2, 3)) / m.sum((2, 3)).clamp_min(EPS) + EPS
        else:
            raise ValueError(f"unknown variance '{variance}'")
    return 2 * (sigma2 + var_floor)[:, :, None, None] + EPS


# ---------------------------------------------------------------- the terms


def _bce(p: Tensor, q: Tensor) -> Tensor:
    """BCE(p, q) = −q log(p + ε) − (1 − q) log(1 − p + ε), elementwise."""
    return -(q * torch.log(p + EPS) + (1 - q) * torch.log(1 - p + EPS))


def _flat_mean(values: Tensor, pixels: Tensor) -> Tensor:
    """Mean of per-pixel ``values`` [B,S,S] over the bool ``pixels``; 0 (graph-connected) when none."""
    return torch.where(pixels, values, 0).sum() / pixels.sum().clamp_min(1)


def _class_average(per_class: Tensor, present: Tensor) -> Tensor:
    """(1/(n_b + ε)) Σ_k c_bk · per_class_bk: [B,K,S,S] -> [B,S,S]."""
    c = present[:, :, None, None]
    return (c * per_class).sum(1) / (present.sum(1)[:, None, None] + EPS)


def g2p_loss(probs: Tensor, gmm: GaussianMaps, pixels: Tensor, detach_target: bool = False) -> Tensor:
    """(b) ℓ₁ = (1/(n_b+ε)) Σ_k c_bk ½ BCE(P_bk, G_bk), flat mean over ``pixels`` (in-image, 𝓥)."""
    target = gmm.maps.detach() if detach_target else gmm.maps
    return _flat_mean(_class_average(0.5 * _bce(probs, target), gmm.present), pixels)


def y2g_loss(gmm: GaussianMaps, mask: Tensor) -> Tensor:
    """(c) ℓ₂ = (1/(n_b+ε)) Σ_k c_bk ½ BCE(G_bk, 1[Y = k]), flat mean over labeled pixels."""
    k = gmm.present.shape[1]
    onehot = (mask[:, None] == torch.arange(k, device=mask.device)[None, :, None, None]).to(gmm.maps.dtype)
    return _flat_mean(_class_average(0.5 * _bce(gmm.maps, onehot), gmm.present), mask < k)


def proto_loss(centroids: Tensor, present: Tensor, reduce: str = "sum") -> Tensor:
    """(d) mean over class pairs i < j present in the batch of exp(−((1/C) ‖v_i − v_j‖₁)²), where
    v_k = (Σ_b μ_bk)·N_k/(N_k+ε) (``sum``, the reference) or Σ_b μ_bk / N_k (``mean``), N_k = Σ_b c_bk."""
    counts = present.sum(0)  # N_k
    total = centroids.sum(0)  # Σ_b μ_bk, [K,C]
    if reduce == "sum":
        vectors = total * (counts / (counts + EPS))[:, None]
    elif reduce == "mean":
        vectors = total / counts.clamp_min(1)[:, None]
    else:
        raise ValueError(f"proto_reduce must be 'sum' or 'mean', got '{reduce}'")
    vectors = vectors[counts > 0]
    if len(vectors) < 2:
        return centroids.sum() * 0.0
    i, j = torch.triu_indices(len(vectors), len(vectors), offset=1, device=vectors.device)
    distance = (vectors[i] - vectors[j]).abs().mean(1)
    return torch.exp(-distance.square()).sum() / (len(i) + EPS)


def absent_loss(probs: Tensor, tags: Tensor, pixels: Tensor) -> Tensor:
    """(e) ℓ_a = Σ_k (1 − t_bk)(−log(1 − P_bk + ε)), flat mean over ``pixels`` (𝓥); image tags t."""
    untagged = (1 - tags)[:, :, None, None]
    return _flat_mean((untagged * -torch.log(1 - probs + EPS)).sum(1), pixels)


def agmm_terms(logits: Tensor, features: Tensor, mask: Tensor, tags: Tensor, cfg: AGMMConfig) -> dict[str, Tensor]:
    """The four GMM terms (b)-(e) from S x S logits, features [B,C,h,w], labels [B,S,S] and tags [B,K]."""
    probs = torch.softmax(logits, dim=1)
    gmm = gaussian_maps(features, mask, logits.shape[1], cfg.variance, cfg.var_floor, cfg.pad_mode, probs, tags)
    in_image = mask != IGNORE
    return {
        "g2p": g2p_loss(probs, gmm, in_image, cfg.detach_target),
        "y2g": y2g_loss(gmm, mask),
        "proto": proto_loss(gmm.centroids, gmm.present, cfg.proto_reduce),
        "absent": absent_loss(probs, tags, in_image),
    }


@register_method("agmm")
class AGMM(PartialCE):
    """pCE plus the adaptive Gaussian mixture terms, all weight 1 by default (agmm.md §5)."""

    Config = AGMMConfig

    def sparse_terms(self, out, logits, labeled):
        if "tags" not in labeled:
            raise ConfigError("method 'agmm' needs sparse labels with image tags: set data.label_format: sparse")
        terms = super().sparse_terms(out, logits, labeled)
        with torch.autocast(logits.device.type, enabled=False):  # fp32: 1 − P loses precision in fp16 (trap 11)
            terms.update(agmm_terms(logits.float(), out["fts"].float(), labeled["mask"], labeled["tags"].float(),
                                    self.cfg))
        return terms

    def loss_weights(self) -> dict[str, float]:
        return self.cfg.weights.model_dump()
