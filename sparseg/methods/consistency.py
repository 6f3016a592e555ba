"""Weak-to-strong consistency: the shared base of FixMatch, UniMatch V1 and UniMatch V2 (depmatch.md §2, §6).

A teacher predicts the weak view x_w of each unlabeled image: probabilities P, confidence c, pseudo-label ŷ.
Each strong view is x_w with strong photometric augmentation and a CutMix box pasted from a partner image
of the same batch; ŷ, c and the valid mask take the partner's values inside the same box. The student
learns ŷ on every strong view where c ≥ τ (``pseudo_label.filter: per_class`` also keeps each class's most
confident pixels at the kept share, see ``confident_pixels``). Subclasses say how the student is run and weigh
the terms:

    L = ½ [L_x + Σ_s w_s L_u^s + w_fp L_fp + plug-in terms]                       (depmatch.md §6)

The teacher is the student itself (``online``: its detached train-mode prediction of x_w) or an EMA copy
(``ema``: eval mode, parameters and buffers averaged with α_t = min(1 − 1/(t+1), ema_momentum)).
Randomness (strong augmentation, boxes, feature dropout) comes from generators seeded by
(seed, iteration, purpose, rank), so a resumed run replays the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import Tensor

from sparseg.data.transforms import cutmix, random_area_boxes, strong_photometric
from sparseg.labels import IGNORE
from sparseg.methods.alignment import ClassMixAlignment, ClassShares, PseudoLabelConfig, class_thresholds
from sparseg.methods.base import Method, MethodConfig, MethodContext, Step, step_generator
from sparseg.methods.copy_paste import CopyPasteConfig, Pasted, RareClassCopyPaste
from sparseg.methods.losses import upsample
from sparseg.methods.supervised import SupervisedConfig, supervised_loss
from sparseg.methods.teacher import create_teacher, ema_decay, ema_update, ema_update_buffers
from sparseg.plugins.depmatch import DepMatch, DepMatchConfig
from sparseg.plugins.views import StrongView


class ConsistencyConfig(MethodConfig):
    """``method:`` keys shared by the consistency methods (defaults: depmatch.md §2, UniMatch VOC)."""

    threshold: float = Field(0.95, ge=0, le=1)  # τ; UniMatch V1 Cityscapes uses 0
    teacher: Literal["online", "ema"] = "online"
    ema_momentum: float = Field(0.996, ge=0, le=1)  # α cap of the EMA teacher
    # strong photometric view (ColorJitter, grayscale, blur)
    brightness: float = Field(0.5, ge=0)
    contrast: float = Field(0.5, ge=0)
    saturation: float = Field(0.5, ge=0)
    hue: float = Field(0.25, ge=0, le=0.5)
    jitter_prob: float = Field(0.8, ge=0, le=1)
    gray_prob: float = Field(0.2, ge=0, le=1)
    blur_prob: float = Field(0.5, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    # CutMix: one box per image and view with probability cutmix_prob
    cutmix_prob: float = Field(0.5, ge=0, le=1)
    cutmix_area: tuple[float, float] = (0.02, 0.4)  # fraction of the crop
    cutmix_ratio: tuple[float, float] = (0.3, 1 / 0.3)  # aspect ratio
    cutmix_partner: Literal["roll", "reverse"] = "roll"  # image i takes from i+1 mod B, or from B−1−i
    # labeled loss L_x
    labeled_loss: Literal["ce", "ohem"] = "ce"
    ohem_thresh: float = Field(0.7, gt=0, le=1)
    ohem_min_kept: int = Field(200_000, ge=0)  # per process batch (the reference: per GPU)
    depmatch: DepMatchConfig | None = None  # DepMatch plug-in options (sparseg.plugins.depmatch)
    pseudo_label: PseudoLabelConfig = Field(default_factory=PseudoLabelConfig)  # class-mix alignment
    copy_paste: CopyPasteConfig = Field(default_factory=CopyPasteConfig)  # rare-class copy-paste

    @field_validator("blur_sigma", "cutmix_area", "cutmix_ratio")
    @classmethod
    def _ordered_range(cls, v: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("need 0 < min <= max")
        if info.field_name == "cutmix_area" and v[1] > 1:
            raise ValueError("a fraction of the crop: need max <= 1")
        return v

    @model_validator(mode="after")
    def _copy_paste_without_plugin(self) -> ConsistencyConfig:
        if self.copy_paste.classes > 0 and self.depmatch is not None:
            raise ValueError("copy_paste.classes > 0 cannot be combined with depmatch (its depth and view "
                             "features do not follow the pasted pixels)")
        return self


def confident_pixels(conf: Tensor, label: Tensor, valid: Tensor, threshold: float, per_class: bool = False) -> Tensor:
    """valid ∧ c ≥ τ; ``per_class``: valid ∧ c ≥ min(τ, τ_c) with τ_c from ``class_thresholds`` over the valid
    pixels (docs/methods/alignment.md, "Per-class filter")."""
    if not per_class:
        return (conf >= threshold) & valid
    thresholds = class_thresholds(conf[valid], label[valid], threshold, int(label.max()) + 1)
    return (conf >= thresholds[label]) & valid


@dataclass
class PseudoLabels:
    """The teacher's weak-view prediction at input resolution, CutMix-able field by field."""

    conf: Tensor  # c, [B,H,W]
    label: Tensor  # ŷ, int64 [B,H,W]
    valid: Tensor  # bool [B,H,W], False on crop padding
    keep: Tensor  # bool [B,H,W], the pixels learned from: confident_pixels
    probs: Tensor | None = None  # P, [B,K,H,W]: kept only for a plug-in

    @classmethod
    def from_logits(
        cls, logits: Tensor, valid: Tensor, threshold: float, per_class: bool = False, keep_probs: bool = False,
    ) -> PseudoLabels:
        probs = upsample(logits.detach().float(), valid.shape[-2:]).softmax(1)
        conf, label = probs.max(1)
        keep = confident_pixels(conf, label, valid, threshold, per_class)
        return cls(conf, label, valid, keep, probs if keep_probs else None)

    def mixed(self, boxes: Tensor, partner: Tensor) -> PseudoLabels:
        """The pseudo-labels of a CutMixed view: the partner's values inside ``boxes``."""
        return PseudoLabels(**{
            f.name: None if (t := getattr(self, f.name)) is None else cutmix(t, boxes, partner)
            for f in fields(self)
        })

    def pasted(self, pasted: Pasted) -> PseudoLabels:
        """Where copy-paste put labeled pixels: their true class, confidence 1, valid and kept (no plug-in
        probabilities)."""
        mask = pasted.mask
        return PseudoLabels(
            self.conf.masked_fill(mask, 1.0), pasted.labels(self.label), self.valid | mask, self.keep | mask,
        )


def unsup_cross_entropy(logits: Tensor, target: PseudoLabels) -> Tensor:
    """Σ CE(ŷ) · keep / Σ valid, keep = valid ∧ c ≥ τ: normalised by valid pixels, not confident ones (§2)."""
    logits = upsample(logits, target.label.shape[-2:]).float()
    pixel_loss = F.cross_entropy(logits, target.label, reduction="none")
    return (pixel_loss * target.keep).sum() / target.valid.sum().clamp_min(1)


def split_outputs(out: dict[str, Tensor], sizes: list[int]) -> list[dict[str, Tensor]]:
    """Model outputs of a concatenated batch, split back into its parts."""
    parts = {key: value.split(sizes) for key, value in out.items()}
    return [{key: chunks[i] for key, chunks in parts.items()} for i in range(len(sizes))]


@dataclass
class StudentOutputs:
    """What a subclass's student pass returns."""

    labeled: dict[str, Tensor]  # outputs on x_l
    strong: list[dict[str, Tensor]]  # outputs on each strong view; ``fts`` is what the plug-in sees
    weak: Tensor | None = None  # logits on x_w (train mode, detached here): the online teacher
    fp: Tensor | None = None  # logits on x_w through perturbed features (UniMatch V1)


class ConsistencyMethod(Method):
    """Base of the weak-to-strong methods; subclasses set the class attributes and ``run_student``."""

    Config = ConsistencyConfig
    streams = ("labeled", "unlabeled")
    num_views: ClassVar[int] = 1  # strong views per unlabeled image
    view_weight: ClassVar[float] = 1.0  # w_s
    fp_weight: ClassVar[float] = 0.0  # w_fp
    demo_overrides: ClassVar[dict[str, Any]] = {"iters": 200}

    @classmethod
    def wants_class_prior(cls, cfg: ConsistencyConfig) -> bool:
        return cfg.pseudo_label.align != "none"

    def __init__(self, model, cfg: ConsistencyConfig, context: MethodContext) -> None:
        super().__init__(model, cfg, context)
        self.teacher = create_teacher(model) if cfg.teacher == "ema" else None
        self.alignment = ClassMixAlignment(cfg.pseudo_label, context.num_classes, context.class_prior)
        self.class_shares = ClassShares(context.num_classes)
        self.copy_paste = RareClassCopyPaste(cfg.copy_paste, context.num_classes)
        self.labeled_cfg = SupervisedConfig(
            loss=cfg.labeled_loss, ohem_thresh=cfg.ohem_thresh, ohem_min_kept=cfg.ohem_min_kept
        )
        self.plugin = None
        if cfg.depmatch is not None:
            self.plugin = DepMatch(cfg.depmatch, self.num_classes, context.seed)
        self._logs: dict[str, Tensor | float] = {}

    def eval_models(self):
        if self.teacher is None:
            return {"student": self.model}
        return {"teacher": self.teacher, "student": self.model}

    def extra_logs(self) -> dict[str, Any]:
        return {**{key: float(value) for key, value in self._logs.items()}, **self.alignment.logs(),
                **self.copy_paste.logs(), **self.class_shares.logs()}

    def generator(self, step: Step, purpose: str) -> torch.Generator:
        """A fresh CPU generator for (seed, iteration, purpose, rank)."""
        return step_generator(self.context.seed, step.iteration, purpose, self.context.rank)

    def run_student(self, x_l: Tensor, x_u: Tensor, strong: list[Tensor], step: Step) -> StudentOutputs:
        """Forward the student; with the online teacher the outputs must include ``weak``."""
        raise NotImplementedError

    # ----------------------------------------------------------------- step
    def strong_view(self, x_u: Tensor, partner: Tensor, step: Step, view: int) -> tuple[Tensor, Tensor]:
        """(strong image with the partner's strong image pasted in the box, boxes bool [B,H,W])."""
        cfg = self.cfg
        strong = strong_photometric(
            x_u, self.generator(step, f"strong{view}"), cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue,
            cfg.jitter_prob, cfg.gray_prob, cfg.blur_prob, cfg.blur_sigma,
        )
        b, _, h, w = x_u.shape
        boxes = random_area_boxes(
            b, h, w, self.generator(step, f"cutmix{view}"), cfg.cutmix_prob, cfg.cutmix_area, cfg.cutmix_ratio
        ).to(x_u.device)
        return cutmix(strong, boxes, partner), boxes

    def paste_rare_classes(
        self, labeled: dict[str, Tensor], views: list[tuple[Tensor, Tensor]], step: Step,
    ) -> tuple[dict[str, Tensor], list[tuple[Tensor, Tensor]], list[Pasted]]:
        """Rare-class copy-paste (sparseg/methods/copy_paste.py): labeled image i takes pixels from labeled image
        i + 1, unlabeled image i of each strong view from labeled image i mod n_l, with their true labels."""
        x_l, y_l = labeled["image"], labeled["mask"]
        n_l = len(x_l)
        pasted_l = self.copy_paste.sample(y_l, (torch.arange(n_l) + 1) % n_l, self.generator(step, "copy_paste_l"))
        labeled = {**labeled, "image": pasted_l.images(x_l, x_l), "mask": pasted_l.labels(y_l)}
        pastes = [
            self.copy_paste.sample(y_l, torch.arange(len(image)) % n_l, self.generator(step, f"copy_paste{v}"))
            for v, (image, _) in enumerate(views)
        ]
        views = [(pasted.images(image, x_l), boxes) for pasted, (image, boxes) in zip(pastes, views)]
        return labeled, views, pastes

    def partner(self, n: int, device: torch.device) -> Tensor:
        index = torch.arange(n, device=device)
        return (index + 1) % n if self.cfg.cutmix_partner == "roll" else index.flip(0)

    @torch.no_grad()
    def teacher_logits(self, x_u: Tensor) -> Tensor:
        """The EMA teacher's eval-mode prediction of the weak view."""
        self.teacher.eval()
        return self.teacher(x_u)["pred"]

    def pseudo_labels(self, logits: Tensor, valid: Tensor) -> PseudoLabels:
        """P, c, ŷ of the weak view from the teacher's logits, class-mix aligned (sparseg/methods/alignment.py)."""
        logits = logits.detach().float()
        if self.alignment.active:
            logits = self.alignment(logits, valid)
        return PseudoLabels.from_logits(
            logits, valid, self.cfg.threshold, self.cfg.pseudo_label.filter == "per_class", self.plugin is not None,
        )

    def loss_weights(self) -> dict[str, float]:
        """½ [L_x + Σ_s w_s L_u^s + w_fp L_fp + plug-in terms] as one weight per term (depmatch.md §6); a plug-in
        term averages the views by their weights w_s, so it weighs ½ λ Σ_s w_s (λ from the plug-in)."""
        weights = {"sup": 0.5, "aux": 0.5 * self.labeled_cfg.aux_weight, "fp": 0.5 * self.fp_weight}
        weights.update({f"unsup_s{v}": 0.5 * self.view_weight for v in range(1, self.num_views + 1)})
        if self.plugin is not None:
            views_weight = self.num_views * self.view_weight  # Σ_s w_s
            weights.update({name: 0.5 * views_weight * lam for name, lam in self.plugin.loss_weights().items()})
        return weights

    def loss_terms(self, batch, step: Step):
        labeled, unlabeled = batch["labeled"], batch["unlabeled"]
        x_u, valid_u = unlabeled["image"], unlabeled["valid"]
        partner = self.partner(len(x_u), x_u.device)
        views = [self.strong_view(x_u, partner, step, v) for v in range(self.num_views)]
        pastes: list[Pasted | None] = [None] * self.num_views
        if self.copy_paste.active:
            labeled, views, pastes = self.paste_rare_classes(labeled, views, step)
        teacher_logits = self.teacher_logits(x_u) if self.teacher is not None else None
        out = self.run_student(labeled["image"], x_u, [image for image, _ in views], step)
        weak = self.pseudo_labels(out.weak if teacher_logits is None else teacher_logits, valid_u)

        terms = supervised_loss(self.labeled_cfg, out.labeled, labeled["mask"])
        self.copy_paste.update(out.labeled["pred"], labeled["mask"])
        plugin_views = []
        for v, ((_, boxes), student, pasted) in enumerate(zip(views, out.strong, pastes), start=1):
            target = weak.mixed(boxes, partner)
            if pasted is not None:
                target = target.pasted(pasted)
            terms[f"unsup_s{v}"] = unsup_cross_entropy(student["pred"], target)
            if self.plugin is not None:
                depth = {k: cutmix(unlabeled[k], boxes, partner) for k in ("depth", "depth_valid") if k in unlabeled}
                plugin_views.append(StrongView(
                    logits=student["pred"], feature=student["fts"], teacher_probs=target.probs,
                    pseudo_label=target.label, valid=target.valid, source=boxes, weight=self.view_weight, **depth,
                    weak_image=cutmix(x_u, boxes, partner),
                ))
        if out.fp is not None:
            terms["fp"] = unsup_cross_entropy(out.fp, weak)
        if self.plugin is not None:
            terms.update(self.plugin(plugin_views, step))  # unweighted, averaged over the views by w_s (§6)
        self._logs["mask_ratio"] = weak.keep.sum() / weak.valid.sum().clamp_min(1)
        self.class_shares.count("pseudo_label_share", weak.label.masked_fill(~weak.keep, IGNORE))
        self.class_shares.count("label_share", labeled["mask"])
        return terms

    def after_optimizer_step(self, step: Step) -> None:
        """EMA teacher: θ_T ← α θ_T + (1 − α) θ_S, parameters and buffers, α = min(1 − 1/(t+1), cap)."""
        if self.teacher is None:
            return
        alpha = ema_decay(step.iteration, 0, self.cfg.ema_momentum)
        ema_update(self.teacher, self.model, alpha)
        ema_update_buffers(self.teacher, self.model, alpha)
        self._logs["ema_decay"] = alpha
