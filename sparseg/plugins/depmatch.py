"""DepMatch: depth-guided CDDP and ULDR losses for weak-to-strong consistency methods.

Spec: the design notes ``docs/design/depmatch.md``; user guide: ``docs/methods/depmatch.md``. A consistency
method builds ``DepMatch(cfg, num_classes, seed)`` and calls it once per step with one ``StrongView`` per strong view:

    terms = depmatch(views, step)   # {"cddp": Σ_s w_s C^s / Σ_s w_s, "uldr": Σ_s w_s U^s / Σ_s w_s}
    depmatch.loss_weights()         # {"cddp": λ_cdp, "uldr": λ_ur}

Both terms are unweighted 0-dim tensors attached to the graph (also when nothing is processed), each the
views' values averaged with their weights w_s; the method weighs a term ½ λ Σ_s w_s, which adds
½ Σ_s w_s (λ_cdp C^s + λ_ur U^s) to its total as depmatch.md §6 writes it. All maps are resized by ``to_grid``
onto a grid of ``grid_stride`` input pixels per cell; pair terms use at most ``max_pixels`` sampled cells per
(image, class), so memory is O(P²) per term whatever the crop size (depmatch.md §7.5). Draws come from
generators seeded by (seed, iteration, view, term): results do not depend on where a run was resumed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor, nn

from sparseg.config import ConfigError, format_errors
from sparseg.data.depth import robust_normalise
from sparseg.methods.base import Step, step_generator
from sparseg.plugins.views import StrongView
from sparseg.stats import entropy

PROVISIONAL_UNIT = 7.0  # depmatch.md §3: typical raw DA-V2-S range (one unverified report)
DISTANCE_EPS = 1e-12  # §7.6: ΔF = sqrt(max(‖f_i − f_j‖², ε))
ENTROPY_EPS = 1e-10  # §4.2
RELEASED_FLOOR = 1e-6  # §5.2: the release's clamp of every ULDR pair weight


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CDDPConfig(_Section):
    """Class-wise Depth Disparity Perception switches (depmatch.md §4.3)."""

    feature: Literal["undropped", "dropped"] = "undropped"  # read by the method: which student feature it hands over
    grid_stride: int = Field(14, ge=1)  # input pixels per grid cell
    label_resize: Literal["nearest", "bilinear"] = "nearest"  # bilinear: the release's resizing (§7.1-7.3)
    intra_target: Literal["similarity", "distance"] = "similarity"  # T = e^{−Δ²/2σ²} or 1 − e^{−Δ²/2σ²}
    sigma: float = Field(1.0, gt=0)  # σ, in working-depth units
    inter: Literal["off", "paper"] = "off"  # paper: reliable inter-class pairs, same image
    inter_tau: float = Field(1.0, ge=0)  # τ_inter: pairs with |Δd′| > τ_inter are reliable
    max_pixels: int | None = Field(512, ge=2)  # P per (image, class); None: every cell (dense)
    feat_norm: Literal["none", "l2"] = "none"


class ULDRConfig(_Section):
    """Uncertain Logit Disparity Regulation switches (depmatch.md §5.3)."""

    grid_stride: int = Field(10, ge=1)
    label_resize: Literal["nearest", "bilinear"] = "nearest"  # bilinear: the release's (half-pixel-off) resizing
    # crop: logits first upsampled to the crop (bilinear, align_corners), as the release's model returns them
    logit_size: Literal["model", "crop"] = "model"
    uncertainty_from: Literal["student", "teacher"] = "student"
    tau: float = Field(0.95, ge=0, le=1)  # a pixel is uncertain when its class probability is < tau
    near: float = Field(0.2, ge=0)  # intra pairs: |Δd′| < near
    far: float = Field(1.5, ge=0)  # inter pairs: |Δd′| > far
    reduction: Literal["released", "valid_mean"] = "released"  # Σ/(B·N²) over the grid, or mean over valid pairs
    floor: bool = False  # the release's 1e-6 weight on every grid pair (dense; needs max_pixels: null)
    inter: Literal["off", "released", "all_pairs"] = "off"
    max_pixels: int | None = Field(512, ge=2)

    @model_validator(mode="after")
    def _floor_is_dense(self) -> ULDRConfig:
        if self.floor and (self.max_pixels is not None or self.reduction != "released" or self.inter == "all_pairs"):
            raise ValueError("floor is the release's dense ULDR (depmatch.md §5.2): it needs max_pixels: null, "
                             "reduction: released and inter: off or released")
        return self


DEPMATCH_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},  # released loss semantics, plumbing fixed, bounded pair sampling
    "reference": {  # released semantics, dense (depmatch.md §4.2, §5.2)
        "norm": "raw",
        "cross_source_pairs": True,
        "estimator_precision": "fp32",
        "cddp": {"label_resize": "bilinear", "max_pixels": None},
        "uldr": {"label_resize": "bilinear", "logit_size": "crop", "floor": True, "inter": "released",
                 "max_pixels": None},
    },
}


class DepMatchConfig(_Section):
    """``method.depmatch``: a preset, then any switch overriding it (depmatch.md §3-§6)."""

    preset: Literal["default", "reference"] = "default"
    lambda_cdp: float = Field(0.03, ge=0)  # λ_cdp (`distill_loss_weight`)
    lambda_ur: float = Field(0.005, ge=0)  # λ_ur
    rampup: Literal["none"] = "none"  # constant weights from step 0, as released
    norm: Literal["robust", "raw"] = "robust"  # robust: d′ = unit · d̃; raw: d′ = the depth as given
    unit: float | None = Field(None, gt=0)  # U; None: the provisional 7.0, with a warning
    cross_source_pairs: bool = False  # pairs straddling a CutMix seam (§3)
    # precomputed: data.depth_dir maps; online: the estimator on each view's composited weak crop (the release)
    depth_source: Literal["precomputed", "online"] = "precomputed"
    estimator: str | None = None  # online: a transformers depth model, local folder or hub id
    estimator_kind: Literal["disparity", "depth"] = "disparity"  # what the estimator outputs
    estimator_precision: Literal["fp16", "fp32"] = "fp16"  # on CUDA (CPU: fp32); the release runs fp32
    cddp: CDDPConfig = Field(default_factory=CDDPConfig)
    uldr: ULDRConfig = Field(default_factory=ULDRConfig)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """Fill the keys the user did not set from the preset."""
        if not isinstance(data, dict) or data.get("preset", "default") not in DEPMATCH_PRESETS:
            return data
        merged = dict(data)
        for key, value in DEPMATCH_PRESETS[data.get("preset", "default")].items():
            if isinstance(value, dict):
                section = merged.get(key) or {}
                if isinstance(section, BaseModel):
                    section = section.model_dump(exclude_unset=True)
                merged[key] = {**value, **section} if isinstance(section, dict) else section
            else:
                merged.setdefault(key, value)
        return merged

    @model_validator(mode="after")
    def _unit_needs_robust(self) -> DepMatchConfig:
        if self.unit is not None and self.norm == "raw":
            raise ValueError("unit scales robust depth d̃; with norm: raw the depth is used as given")
        return self


# ------------------------------------------------------------------------------------------- grids


def grid_size(input_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """(H // stride, W // stride), at least 1×1: 37² for 518 at stride 14, 51² at stride 10 (§4.2, §5.2)."""
    return max(input_size[0] // stride, 1), max(input_size[1] // stride, 1)


def _bilinear_taps(n_in: int, n_out: int, align_corners: bool) -> tuple[Tensor, Tensor]:
    """The two input indices each output position of a 1-D bilinear resize reads (weight 0 included)."""
    i = torch.arange(n_out, dtype=torch.float64)
    if align_corners:
        src = i * ((n_in - 1) / (n_out - 1)) if n_out > 1 else torch.zeros_like(i)
    else:
        src = ((i + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    first = src.floor().long().clamp(max=n_in - 1)
    return first, (first + 1).clamp(max=n_in - 1)


def to_grid(
    x: Tensor, stride: int, kind: str, input_size: tuple[int, int] | None = None, align_corners: bool = False
) -> Tensor:
    """Resize a map onto the grid of ``stride`` input pixels per cell: the only resizing (depmatch.md §7.3).

    ``x`` is [B,C,h,w] for ``continuous`` and [B,h,w] otherwise; ``input_size`` (H, W) is the resolution
    the stride refers to (default: x's own). Kinds:
    - ``continuous`` (features, logits, probabilities, depth): bilinear;
    - ``label`` (ids): nearest pixel centre, so no id is invented (§7.1);
    - ``mask`` (bool): True only where every pixel a bilinear sample at that cell reads is True, so no
      continuous value on a True cell mixes in a False (padding, ignored) pixel (§7.2);
    - ``label_bilinear``, ``mask_bilinear``: the release's resizing, ids bilinear then truncated and the
      0/255 ignore map bilinear, True where ≠ 255 (the ``reference`` preset only).
    """
    size = grid_size(tuple(input_size or x.shape[-2:]), stride)
    if kind == "continuous":
        return F.interpolate(x.float(), size, mode="bilinear", align_corners=align_corners)
    if kind == "label":
        return F.interpolate(x[:, None].float(), size, mode="nearest-exact")[:, 0].long()
    if kind == "mask":
        rows = _bilinear_taps(x.shape[-2], size[0], align_corners)
        cols = _bilinear_taps(x.shape[-1], size[1], align_corners)
        x = x.bool()
        return torch.stack([x[:, r][:, :, c] for r in rows for c in cols]).all(0)
    if kind == "label_bilinear":
        return F.interpolate(x[:, None].float(), size, mode="bilinear", align_corners=align_corners)[:, 0].long()
    if kind == "mask_bilinear":
        ignore = (~x.bool()).float()[:, None] * 255.0
        return F.interpolate(ignore, size, mode="bilinear", align_corners=align_corners)[:, 0] != 255.0
    raise ValueError(f"unknown grid kind '{kind}'")


def pairwise_distance(a: Tensor, b: Tensor) -> Tensor:
    """ε-safe Euclidean distances [n, m] between rows of a [n,C] and b [m,C], without an [n,m,C] tensor.

    sqrt(max(‖a_i − b_j‖², ε)) (§7.6) through ‖a‖² + ‖b‖² − 2ab on centred rows (translation-invariant, so
    the detached centre changes no value or gradient and keeps the expansion accurate).
    """
    centre = torch.cat([a, b]).detach().mean(0, keepdim=True)
    a, b = a - centre, b - centre
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return squared.clamp_min(DISTANCE_EPS).sqrt()


def _sample(cells: Tensor, max_pixels: int | None, generator: torch.Generator) -> Tensor:
    """min(N, P) of the N cell indices, uniformly without replacement; all of them, in order, when N ≤ P."""
    if max_pixels is None or cells.numel() <= max_pixels:
        return cells
    pick = torch.randperm(cells.numel(), generator=generator)[:max_pixels]
    return cells[pick.to(cells.device)]


def _pair_sum(pairs: Tensor, n_all: int) -> Tensor:
    """Unbiased estimate of the sum over all N² pairs of a set from its sampled n×n block (§5.3).

    off-diagonal × N(N−1)/(n(n−1)) + diagonal × N/n; exact (factor 1) when n = N.
    """
    n = pairs.shape[0]
    diagonal = pairs.diagonal().sum()
    off = pairs.sum() - diagonal
    scale = n_all * (n_all - 1) / (n * (n - 1)) if n > 1 else 0.0
    return off * scale + diagonal * (n_all / n)


def _attached_zero(views: list[StrongView]) -> Tensor:
    """0 · (sum of the student outputs): a 0-dim zero in the graph, finite even if an input is not (§7.8)."""
    total = sum(torch.nan_to_num(t.float().sum()) for v in views for t in (v.logits, v.feature))
    return total * 0.0


# ------------------------------------------------------------------------------------------- plug-in


class _GridView:
    """One view's discrete maps on a grid, flattened to [B, G]."""

    def __init__(self, view: StrongView, stride: int, release: bool, label_align: bool) -> None:
        size = tuple(view.pseudo_label.shape[-2:])
        valid = view.valid if view.depth_valid is None else view.valid & view.depth_valid
        if release:
            self.labels = to_grid(view.pseudo_label, stride, "label_bilinear", size, label_align).flatten(1)
            self.valid = to_grid(valid, stride, "mask_bilinear", size, label_align).flatten(1)
        else:
            self.labels = to_grid(view.pseudo_label, stride, "label", size).flatten(1)
            self.valid = to_grid(valid, stride, "mask", size).flatten(1)
        self.source = to_grid(view.source, stride, "label", size).bool().flatten(1)
        self.size = size
        self.cells = self.labels.shape[1]

    def classes(self, release: bool, num_classes: int) -> Tensor:
        """Sorted class ids: on every cell for the release (phantoms included), else on valid cells."""
        present = torch.unique(self.labels if release else self.labels[self.valid])
        return present[(present >= 0) & (present < num_classes)]


class DepMatch(nn.Module):
    """CDDP + ULDR on a list of strong views (depmatch.md §4-§6). No learnable parameters."""

    def __init__(self, cfg: DepMatchConfig | dict[str, Any], num_classes: int, seed: int = 0,
                 estimator: Callable[[Tensor], Tensor] | None = None) -> None:
        """``estimator`` (online only): crops [N,3,H,W] in [0, 1] → disparity [N,H,W]; default: ``cfg.estimator``
        loaded by ``sparseg.depth_estimation.OnlineDepth``."""
        super().__init__()
        if not isinstance(cfg, DepMatchConfig):
            try:
                cfg = DepMatchConfig(**(cfg or {}))
            except ValidationError as err:
                raise ConfigError(format_errors(err, prefix="method.depmatch", schema=DepMatchConfig)) from None
        self.cfg = cfg
        self.num_classes = num_classes
        self.seed = seed
        self.unit = cfg.unit if cfg.unit is not None else PROVISIONAL_UNIT
        if cfg.depth_source == "online" and estimator is None:
            if cfg.estimator is None:
                raise ConfigError("method.depmatch.estimator: depth_source online needs a transformers depth model "
                                  "(a local folder or hub id)")
            from sparseg.depth_estimation import OnlineDepth  # transformers is needed only on this path

            estimator = OnlineDepth(cfg.estimator, cfg.estimator_kind, cfg.estimator_precision)
        # a plain attribute, never a submodule: no optimiser, EMA, DDP, SyncBN or checkpoint sees the estimator
        object.__setattr__(self, "estimator", estimator)
        if cfg.norm == "robust" and cfg.unit is None:
            warnings.warn(
                f"depmatch.unit is not set: using the provisional U = {PROVISIONAL_UNIT} (depmatch.md §3); calibrate "
                "it with `sparseg depth LIST --model <Depth Anything V2 Small> --out DIR --calibrate`", stacklevel=2
            )

    @property
    def cddp_feature(self) -> str:
        """``cddp.feature``, for the method: hand over an undropped second head pass, or the dropped forward's."""
        return self.cfg.cddp.feature

    def loss_weights(self) -> dict[str, float]:
        """λ of each term ``forward`` returns; a consistency method weighs a term ½ λ Σ_s w_s (§6)."""
        return {"cddp": self.cfg.lambda_cdp, "uldr": self.cfg.lambda_ur}

    def generator(self, step: Step, view: int, term: str) -> torch.Generator:
        """The CPU generator of one term's draws (pixel samples, class order) for (seed, iteration, view)."""
        return step_generator(self.seed, step.iteration, f"depmatch.{term}", view)

    def online_depth(self, views: list[StrongView]) -> list[Tensor]:
        """Each view's depth from the estimator on its composited weak crop, in one batched call (§3).

        A crop is estimated once per step: an image without a CutMix box in a view is the plain weak crop, shared
        by every such view. ``raw``: the estimator's disparity; ``robust``: d̃ over the crop's valid pixels.
        """
        crops, masks, slots = [], [], {}
        positions = []
        for v, view in enumerate(views):
            if view.weak_image is None:
                raise ValueError("depth_source online needs each StrongView's weak_image (the composited weak crop)")
            pasted = view.source.flatten(1).any(1).tolist()
            for i, has_box in enumerate(pasted):
                key = (v, i) if has_box else (-1, i)
                if key not in slots:
                    slots[key] = len(crops)
                    crops.append(view.weak_image[i])
                    masks.append(view.valid[i])
                positions.append(slots[key])
        depth = self.estimator(torch.stack(crops).detach()).float()
        if self.cfg.norm == "robust":
            depth = torch.stack([robust_normalise(d, m)[0] for d, m in zip(depth, masks)])
        per_view = torch.as_tensor(positions, device=depth.device).view(len(views), -1)
        return [depth[index] for index in per_view]

    def working_depth(self, view: StrongView) -> Tensor:
        """d′ [B,H,W]: U · d̃ (``robust``) or the depth as given (``raw``) (§3); never differentiated."""
        if view.depth is None:
            raise ValueError("DepMatch needs depth on every strong view: set data.depth_dir (docs/methods/depmatch.md)")
        depth = view.depth.detach().float()
        if self.cfg.norm == "raw":
            return depth
        known = view.valid if view.depth_valid is None else view.valid & view.depth_valid
        if known.any():
            low, high = depth[known].aminmax()
            if float(low) < -1e-4 or float(high) > 1 + 1e-4:
                raise ValueError(
                    f"depmatch.norm is robust but the depth spans [{float(low):.3g}, {float(high):.3g}], not d̃ in "
                    "[0, 1]: set data.depth_norm: robust, or depmatch.norm: raw"
                )
        return self.unit * depth

    def forward(self, views: list[StrongView], step: Step) -> dict[str, Tensor]:
        """{"cddp": Σ_s w_s C^s / Σ_s w_s, "uldr": Σ_s w_s U^s / Σ_s w_s}: C^s and U^s averaged over the views
        with their weights, without λ (``loss_weights``); each a 0-dim tensor in the graph (§6). A term whose λ is
        0 is not computed (0)."""
        if not views:
            return {"cddp": torch.zeros(()), "uldr": torch.zeros(())}
        zero = _attached_zero(views)
        cddp, uldr = zero, zero
        if self.cfg.depth_source == "online":
            views = [replace(v, depth=d, depth_valid=None) for v, d in zip(views, self.online_depth(views))]
        # float32 throughout: the distance expansion and the sigmoid products are unsafe in fp16/bf16
        with torch.autocast(views[0].logits.device.type, enabled=False):
            for index, view in enumerate(views):
                depth = self.working_depth(view)
                if self.cfg.lambda_cdp > 0:
                    value = self.cddp(view, depth, self.generator(step, index, "cddp"))
                    if value is not None:
                        cddp = cddp + view.weight * value
                if self.cfg.lambda_ur > 0:
                    value = self.uldr(view, depth, self.generator(step, index, "uldr"))
                    if value is not None:
                        uldr = uldr + view.weight * value
        views_weight = sum(view.weight for view in views)
        return {"cddp": cddp / views_weight, "uldr": uldr / views_weight}

    # --------------------------------------------------------------------------------------- CDDP
    def cddp(self, view: StrongView, depth: Tensor, generator: torch.Generator) -> Tensor | None:
        """C^s of one view (§4.2, §4.3); None when no (image, class) has a valid cell.

        ℓ_{b,k} = (1/N²) Σ_{i,j∈Ω} |e_i − e_j| (ΔF_ij − T(Δd′_ij))², estimated from ≤ P sampled cells;
        C = (1/|K|) Σ_k (1/B) Σ_b ℓ_{b,k}, plus the mean ``paper`` inter-class term.
        """
        c = self.cfg.cddp
        release = c.label_resize == "bilinear"
        grid = _GridView(view, c.grid_stride, release, label_align=release)
        features = to_grid(view.feature, c.grid_stride, "continuous", grid.size, release).flatten(2)
        if c.feat_norm == "l2":
            features = F.normalize(features, dim=1)
        probs = to_grid(view.teacher_probs.detach(), c.grid_stride, "continuous", grid.size, release)
        uncertainty = entropy(probs, ENTROPY_EPS).flatten(1)
        depth = to_grid(depth[:, None], c.grid_stride, "continuous", grid.size, release).flatten(1)
        classes = grid.classes(release, self.num_classes).tolist()
        if not classes:
            return None
        batch = len(grid.labels)
        picked: dict[tuple[int, int], Tensor] = {}
        intra = None
        for k in classes:
            for b in range(batch):
                cells = ((grid.labels[b] == k) & grid.valid[b]).nonzero().squeeze(1)
                n_all = cells.numel()
                if n_all == 0:
                    continue
                chosen = picked[b, k] = _sample(cells, c.max_pixels, generator)
                if chosen.numel() < 2:  # one cell: only the diagonal, whose weight |e_i − e_i| is 0
                    continue
                f = features[b][:, chosen].T
                delta = (depth[b, chosen][:, None] - depth[b, chosen][None, :]).abs()
                target = torch.exp(-delta.square() / (2 * c.sigma**2))
                if c.intra_target == "distance":
                    target = 1 - target
                weight = (uncertainty[b, chosen][:, None] - uncertainty[b, chosen][None, :]).abs()
                pairs = weight * (pairwise_distance(f, f) - target).square()
                if not self.cfg.cross_source_pairs:
                    pairs = pairs * self._same_source(grid, b, chosen, chosen)
                term = _pair_sum(pairs, n_all) / n_all**2
                intra = term if intra is None else intra + term
        if intra is None:
            return None
        loss = intra / (batch * len(classes))
        if c.inter == "paper":
            inter = self._cddp_inter(grid, features, depth, picked)
            if inter is not None:
                loss = loss + inter
        return loss

    def _cddp_inter(self, grid: _GridView, features: Tensor, depth: Tensor, picked: dict) -> Tensor | None:
        """``paper`` inter-class CDDP (§4.3): per image and ordered class pair, Σ R(ΔF − |Δd′|)² / ΣR."""
        terms = []
        for (b, k), rows in picked.items():
            for (b2, k2), cols in picked.items():
                if b2 != b or k2 == k:
                    continue
                delta = (depth[b, rows][:, None] - depth[b, cols][None, :]).abs()
                reliable = delta > self.cfg.cddp.inter_tau
                if not self.cfg.cross_source_pairs:
                    reliable = reliable & self._same_source(grid, b, rows, cols).bool()
                count = int(reliable.sum())
                if count == 0:
                    continue
                distance = pairwise_distance(features[b][:, rows].T, features[b][:, cols].T)
                terms.append(((distance - delta).square() * reliable).sum() / count)
        return torch.stack(terms).mean() if terms else None

    # --------------------------------------------------------------------------------------- ULDR
    def uldr(self, view: StrongView, depth: Tensor, generator: torch.Generator) -> Tensor | None:
        """U^s of one view (§5.2, §5.3); None when no class has an uncertain cell.

        Per class c with uncertain cells U_c (pseudo-class c, probability of c < tau, valid), in class order:
        ℓ_c = Σ_{i,j∈U_c, |Δd′|<near} (1 − σ(z_ci z_cj)) / (B·N²) (``released``, N = grid cells per image) or
        the mean over those pairs (``valid_mean``); U = (1/n_c) Σ_c (ℓ_c + ℓ′_c) + the ``all_pairs`` term.
        """
        u = self.cfg.uldr
        release = u.label_resize == "bilinear"
        grid = _GridView(view, u.grid_stride, release, label_align=False)
        logits = view.logits
        if u.logit_size == "crop":  # the release resizes logits its model already upsampled to the crop
            logits = F.interpolate(logits.float(), grid.size, mode="bilinear", align_corners=True)
        logits = to_grid(logits, u.grid_stride, "continuous", grid.size, release).flatten(2)
        depth = to_grid(depth[:, None], u.grid_stride, "continuous", grid.size, release).flatten(1)
        if u.uncertainty_from == "student":
            probs = logits.detach().softmax(1)
        else:
            probs = to_grid(view.teacher_probs.detach(), u.grid_stride, "continuous", grid.size, release).flatten(2)
        classes = grid.classes(release, self.num_classes)
        if u.inter == "released":  # the release's random class order, seeded (§7.9)
            classes = classes[torch.randperm(len(classes), generator=generator).to(classes.device)]
        normaliser = grid.labels.numel() * grid.cells  # B·N²
        dense = _DenseULDR(self, grid, logits, depth) if u.floor else None
        picks: dict[int, dict[int, tuple[Tensor, int]]] = {}  # class -> image -> (sampled cells, |U_bc|)
        total, previous, processed = None, None, 0
        for c in classes.tolist():
            uncertain = (grid.labels == c) & grid.valid & (probs[:, c] < u.tau)
            if not bool(uncertain.any()):
                continue
            if dense is not None:
                term = dense.intra(c, uncertain)
                if previous is not None and u.inter == "released":
                    term = term + dense.inter(*previous, c, uncertain)
                previous = (c, uncertain)
            else:
                picks[c] = {
                    b: (_sample(uncertain[b].nonzero().squeeze(1), u.max_pixels, generator), int(uncertain[b].sum()))
                    for b in range(len(uncertain)) if bool(uncertain[b].any())
                }
                term = self._uldr_intra(grid, logits, depth, c, picks[c], normaliser)
                if previous is not None and u.inter == "released":
                    num, den = self._uldr_cross(grid, logits, depth, [(previous, c)], picks)
                    if num is not None and float(den) > 0:
                        term = term + num / normaliser / den
                previous = c
            total = term if total is None else total + term
            processed += 1
        if total is None:
            return None
        loss = total / processed
        if u.inter == "all_pairs":
            num, den = self._uldr_cross(grid, logits, depth, [(a, b) for a in picks for b in picks if a != b], picks)
            if num is not None and float(den) > 0:
                loss = loss + num / den
        return loss

    def _uldr_intra(self, grid: _GridView, logits: Tensor, depth: Tensor, c: int,
                    picks: dict[int, tuple[Tensor, int]], normaliser: int) -> Tensor:
        """ℓ_c from ≤ P sampled uncertain cells per image: Σ/(B·N²) (``released``) or the pair mean."""
        num, den = 0.0, 0.0
        for b, (chosen, n_all) in picks.items():
            z, d = logits[b, c, chosen], depth[b, chosen]
            near = (d[:, None] - d[None, :]).abs() < self.cfg.uldr.near
            if not self.cfg.cross_source_pairs:
                near = near & self._same_source(grid, b, chosen, chosen).bool()
            num = num + _pair_sum(near * (1 - torch.sigmoid(z[:, None] * z[None, :])), n_all)
            den = den + _pair_sum(near.float(), n_all)
        if self.cfg.uldr.reduction == "released":
            return num / normaliser
        return num / torch.as_tensor(den).clamp_min(1.0)

    def _uldr_cross(self, grid: _GridView, logits: Tensor, depth: Tensor, class_pairs: list[tuple[int, int]],
                    picks: dict[int, dict[int, tuple[Tensor, int]]]) -> tuple[Tensor | None, Tensor | float]:
        """(Σ R σ(z_{c′,i} z_{c,j}), Σ R) over same-image pairs of (c′, c) cells with R = 1[|Δd′| > far].

        Each image's sampled block is scaled by |U_c′||U_c| / (n′ n), an unbiased estimate of the full sums.
        """
        num, den = None, 0.0
        for first, second in class_pairs:
            for b in picks[first].keys() & picks[second].keys():
                (rows, n_rows), (cols, n_cols) = picks[first][b], picks[second][b]
                far = (depth[b, rows][:, None] - depth[b, cols][None, :]).abs() > self.cfg.uldr.far
                if not self.cfg.cross_source_pairs:
                    far = far & self._same_source(grid, b, rows, cols).bool()
                scale = n_rows * n_cols / (len(rows) * len(cols))
                sigma = torch.sigmoid(logits[b, first, rows][:, None] * logits[b, second, cols][None, :])
                part = (far * sigma).sum() * scale
                num = part if num is None else num + part
                den = den + far.sum() * scale
        return num, den

    @staticmethod
    def _same_source(grid: _GridView, b: int, rows: Tensor, cols: Tensor) -> Tensor:
        """1 where both cells come from the same CutMix source (the image or its partner's box), as float."""
        return (grid.source[b, rows][:, None] == grid.source[b, cols][None, :]).float()


class _DenseULDR:
    """The release's ULDR over every pair of the grid, with the 1e-6 weight floor (§5.2; ``uldr.floor``)."""

    def __init__(self, plugin: DepMatch, grid: _GridView, logits: Tensor, depth: Tensor) -> None:
        self.cfg = plugin.cfg
        self.logits = logits
        self.delta = (depth[:, :, None] - depth[:, None, :]).abs()  # [B,N,N]
        self.same = None if plugin.cfg.cross_source_pairs else grid.source[:, :, None] == grid.source[:, None, :]

    def _weights(self, rows: Tensor, cols: Tensor, close: Tensor) -> Tensor:
        mask = rows[:, :, None] & cols[:, None, :] & close
        if self.same is not None:
            mask = mask & self.same
        return mask.float().clamp_min(RELEASED_FLOOR)

    def intra(self, c: int, uncertain: Tensor) -> Tensor:
        """mean_{b,i,j} max(U_ci U_cj 1[|Δd|<near], 1e-6) · (1 − σ(z_ci z_cj))."""
        z = self.logits[:, c]
        weights = self._weights(uncertain, uncertain, self.delta < self.cfg.uldr.near)
        return (weights * (1 - torch.sigmoid(z[:, :, None] * z[:, None, :]))).mean()

    def inter(self, previous: int, previous_uncertain: Tensor, c: int, uncertain: Tensor) -> Tensor:
        """mean(M′ σ(z_c′i z_cj)) / ΣM′ with M′ = max(U_c′i U_cj 1[|Δd|>far], 1e-6): about 1e-8 (§5.2)."""
        weights = self._weights(previous_uncertain, uncertain, self.delta > self.cfg.uldr.far)
        z_prev, z = self.logits[:, previous], self.logits[:, c]
        return (weights * torch.sigmoid(z_prev[:, :, None] * z[:, None, :])).mean() / weights.sum()
