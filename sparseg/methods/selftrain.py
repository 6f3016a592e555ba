"""Mean-teacher self-training (dgcl.md §2), the base of ``dgcl``.

Warm-up epochs train on labels only. Then an EMA teacher labels the unlabeled images, the
highest-entropy pseudo-labels are dropped (a share β_e that decays over training), and the
student learns from CutMix-ed unlabeled images: L = L_sup + λ_u L_u.

Per-group statistics (entropy quantiles, the L_u valid-fraction weight, OHEM) are computed over
groups of ``filter_group_size`` unlabeled images and the matching labeled ones, as one GPU's batch
in the reference runs (dgcl.md §6.1); the loss is the mean over groups, so it does not depend on
how many processes share the batch. Randomness comes from generators seeded by
(seed, iteration, purpose, group): resuming or changing the process count replays the same draws.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from sparseg.data.transforms import cutmix, half_area_boxes
from sparseg.labels import IGNORE
from sparseg.methods import register_method
from sparseg.methods.alignment import ClassMixAlignment, ClassShares, PseudoLabelConfig
from sparseg.methods.base import Method, MethodContext, Step, step_generator
from sparseg.methods.copy_paste import CopyPasteConfig, RareClassCopyPaste
from sparseg.methods.losses import cross_entropy, upsample
from sparseg.methods.supervised import SupervisedConfig, supervised_loss
from sparseg.methods.teacher import copy_parameters, create_teacher, ema_decay, ema_update
from sparseg.stats import entropy, quantile


class SelfTrainConfig(SupervisedConfig):
    """``method:`` keys of ``selftrain`` (defaults: dgcl.md §5, Pascal VOC)."""

    warmup_epochs: int = Field(1, ge=0)  # e0: supervised-only epochs
    warmup_teacher_bn: bool = True  # warm-up also runs the teacher on x_l to update its BN statistics
    ema_momentum: float = Field(0.999, ge=0, le=1)  # μ
    teacher_sync_epochs: int = Field(1, ge=0)  # epochs from e0 where the teacher is a copy of the student
    teacher_mode: Literal["train", "eval"] = "train"  # BN/dropout mode of the pseudo-labelling teacher
    # fp32: the teacher forward runs in float32 outside the trainer's autocast (the reference); amp: inside it
    teacher_precision: Literal["fp32", "amp"] = "fp32"
    unsup_weight: float = Field(0.5, ge=0)  # λ_u
    unsup_drop_percent: float = Field(20.0, ge=0, le=100)  # β0: % of highest-entropy pseudo-labels dropped
    cutmix_prob: float = Field(0.5, ge=0, le=1)  # one draw per filter group and iteration
    filter_group_size: int | None = Field(4, ge=1)  # unlabeled images per group; None: one group per process
    forward_unmixed_u: bool = False  # also forward the unmixed x_u through the student (changes BN batches)
    pseudo_label: PseudoLabelConfig = Field(default_factory=PseudoLabelConfig)  # class-mix alignment
    copy_paste: CopyPasteConfig = Field(default_factory=CopyPasteConfig)  # rare-class copy-paste


@dataclass(frozen=True)
class Group:
    """Images of one group: local batch indices of each stream and a process-independent id."""

    index: int
    labeled: Tensor
    unlabeled: Tensor


def split_groups(
    n_labeled: int, n_unlabeled: int, group_size: int | None, rank: int = 0, world_size: int = 1,
    device: torch.device | str = "cpu",
) -> list[Group]:
    """Round-robin groups of one process's batch (dgcl.md §6.1).

    G = n_unlabeled / group_size groups; image j of each stream goes to group j mod G. The sampler
    deals a global batch to ranks round-robin (global image q → rank q mod W, local j = q div W), so
    group (j mod G) of rank r is global group (j mod G)·W + r = q mod (G·W): one process with G·W groups
    and W processes with G groups each form the same groups, in the same image order.
    """
    size = group_size or n_unlabeled
    if n_unlabeled % size:
        raise ValueError(f"the unlabeled batch of {n_unlabeled} per process is not divisible by the group size {size}")
    count = n_unlabeled // size
    if n_labeled % count:
        raise ValueError(f"the labeled batch of {n_labeled} per process does not split into {count} groups")
    return [
        Group(
            index=g * world_size + rank,
            labeled=torch.arange(g, n_labeled, count, device=device),
            unlabeled=torch.arange(g, n_unlabeled, count, device=device),
        )
        for g in range(count)
    ]


def filter_pseudo_labels(probs: Tensor, valid: Tensor, drop_percent: float, per_class: bool = False) -> Tensor:
    """argmax labels of one group with the ``drop_percent`` % highest-entropy valid pixels and padding set to 255.

    Threshold t = quantile of ε over the valid pixels at level 1 − drop/100; pixels with ε ≥ t are dropped.
    ``per_class`` (docs/methods/alignment.md, "Per-class filter"): a pixel of pseudo-class c is also kept when
    ε < t_c, the same quantile over the valid pixels of class c, so every class keeps at least 1 − drop/100 of
    its pixels.
    """
    labels = probs.argmax(1)
    keep = valid.clone()
    if drop_percent > 0 and valid.any():
        ent = entropy(probs)
        level = 1.0 - drop_percent / 100.0
        passed = ent < quantile(ent[valid], level)
        if per_class:
            for c in labels[valid].unique():
                members = valid & (labels == c)
                passed[members] |= ent[members] < quantile(ent[members], level)
        keep &= passed
    return labels.masked_fill(~keep, IGNORE)


def semi_progress(step: Step, warmup_epochs: int) -> float:
    """π_e = (e − e0) / (E − e0), constant within an epoch."""
    return (step.epoch - warmup_epochs) / (step.total_epochs - warmup_epochs)


def unsup_loss(logits: Tensor, target: Tensor) -> Tensor:
    """(n·H·W / N_valid) · mean CE over non-ignored pixels: mean CE divided by the valid fraction (U2PL)."""
    n_valid = int((target != IGNORE).sum())
    if n_valid == 0:
        return logits.sum() * 0.0
    return cross_entropy(logits, target) * (target.numel() / n_valid)


def pseudo_label_and_mix(
    teacher_pred: Tensor, images: Tensor, valid: Tensor, groups: list[Group], drop_percent: float,
    cutmix_prob: float, seed: int, iteration: int, per_class: bool = False,
) -> tuple[Tensor, Tensor]:
    """Mixed unlabeled images and their pseudo-labels (dgcl.md §2).

    Per group: teacher logits → bilinear to H×W → softmax → argmax labels with the ``drop_percent`` %
    highest-entropy valid pixels (``per_class``: see filter_pseudo_labels) and padding set to 255 (filtered
    before mixing); then, with probability ``cutmix_prob`` (one draw per group), image i takes image (i + 1)
    mod n of its group and its labels inside a half-area box.
    """
    size = images.shape[-2:]
    x_mix = torch.empty_like(images)
    y_mix = torch.empty(images.shape[:1] + size, dtype=torch.long, device=images.device)
    for group in groups:
        probs = upsample(teacher_pred[group.unlabeled], size).softmax(1)
        x, y = images[group.unlabeled], filter_pseudo_labels(probs, valid[group.unlabeled], drop_percent, per_class)
        generator = step_generator(seed, iteration, "cutmix", group.index)
        if torch.rand((), generator=generator) < cutmix_prob:
            boxes = half_area_boxes(len(x), *size, generator)
            x, y = cutmix(x, boxes), cutmix(y, boxes)
        x_mix[group.unlabeled], y_mix[group.unlabeled] = x, y
    return x_mix, y_mix


@dataclass
class StepOutputs:
    """What one training step computed, for subclasses that add loss terms."""

    step: Step
    labeled: dict[str, Tensor]
    unlabeled: dict[str, Tensor]
    student: dict[str, Tensor]  # semi: on [x_l; x_u (forward_unmixed_u); x_mix]; warm-up: on x_l
    teacher_pred: Tensor | None  # semi: teacher logits on [x_l; x_u] at feature resolution, fp32
    filter_groups: list[Group]

    @property
    def semi(self) -> bool:
        return self.teacher_pred is not None


@register_method("selftrain")
class SelfTrain(Method):
    """EMA-teacher self-training with entropy-filtered pseudo-labels and CutMix (dgcl.md §2)."""

    Config = SelfTrainConfig
    streams = ("labeled", "unlabeled")
    demo_overrides: ClassVar[dict[str, Any]] = {"iters": 240}
    # the start is already trained: pseudo-labels from the first step, an EMA teacher at once, with a horizon
    # (~100 steps) shorter than the run (configs/camvid/selftrain_aligned.yaml)
    trained_start_overrides: ClassVar[dict[str, Any]] = {"warmup_epochs": 0, "teacher_sync_epochs": 0,
                                                         "ema_momentum": 0.99}

    @classmethod
    def wants_class_prior(cls, cfg: SelfTrainConfig) -> bool:
        return cfg.pseudo_label.align != "none"

    def __init__(self, model, cfg: SelfTrainConfig, context: MethodContext) -> None:
        super().__init__(model, cfg, context)
        self.teacher = create_teacher(model)
        self.alignment = ClassMixAlignment(cfg.pseudo_label, context.num_classes, context.class_prior)
        self.copy_paste = RareClassCopyPaste(cfg.copy_paste, context.num_classes)
        self._logs: dict[str, float] = {}
        self.class_shares = ClassShares(context.num_classes)

    def eval_models(self):
        return {"teacher": self.teacher, "student": self.model}

    def extra_logs(self) -> dict[str, Any]:
        """The scalars of the last step, and each class's share of the kept pseudo-labels and of the labeled
        pixels over the semi-supervised steps since the previous call (this process's batches)."""
        return {**self._logs, **self.alignment.logs(), **self.copy_paste.logs(), **self.class_shares.logs()}

    def teacher_forward(self, images: Tensor) -> dict[str, Tensor]:
        """The teacher on ``images`` without gradient, in float32 outside autocast unless ``teacher_precision: amp``
        (the DGCL/U2PL reference runs it outside the fp16 autocast, so pseudo-labels and entropies are fp32)."""
        fp32 = self.cfg.teacher_precision == "fp32"
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False) if fp32 else nullcontext():
            return self.teacher(images.float() if fp32 else images)

    def loss_weights(self) -> dict[str, float]:
        return {"aux": self.cfg.aux_weight, "unsup": self.cfg.unsup_weight}

    def extra_terms(self, outputs: StepOutputs) -> dict[str, Tensor]:
        """Further loss terms of subclasses (dgcl: the contrast)."""
        return {}

    # ----------------------------------------------------------------- step
    def loss_terms(self, batch, step: Step):
        labeled, unlabeled = batch["labeled"], batch["unlabeled"]
        groups = split_groups(
            len(labeled["image"]), len(unlabeled["image"]), self.cfg.filter_group_size,
            self.context.rank, self.context.world_size, labeled["image"].device,
        )
        if step.epoch < self.cfg.warmup_epochs:
            outputs = self._warmup_step(labeled, unlabeled, groups, step)
            terms = self.supervised_terms(outputs.student, labeled["mask"], groups)
            terms["unsup"] = outputs.student["pred"].new_zeros(())
        else:
            outputs, unsup = self._semi_step(labeled, unlabeled, groups, step)
            n_labeled = len(labeled["image"])
            student_l = {k: v[:n_labeled] for k, v in outputs.student.items() if k in ("pred", "aux")}
            terms = {**self.supervised_terms(student_l, outputs.labeled["mask"], groups), "unsup": unsup}
        terms.update(self.extra_terms(outputs))
        return terms

    def _warmup_step(self, labeled, unlabeled, groups, step) -> StepOutputs:
        """e < e0: the student on x_l; the teacher forwards x_l in train mode for its BN statistics only."""
        out = self.model(labeled["image"])
        if self.cfg.warmup_teacher_bn:
            self.teacher.train()
            self.teacher_forward(labeled["image"])
        return StepOutputs(step, labeled, unlabeled, out, None, groups)

    def _semi_step(self, labeled, unlabeled, groups, step) -> tuple[StepOutputs, Tensor]:
        cfg = self.cfg
        x_l, x_u = labeled["image"], unlabeled["image"]
        n_labeled = len(x_l)
        if step.iteration == step.iters_per_epoch * cfg.warmup_epochs:
            copy_parameters(self.teacher, self.model)  # the teacher starts semi training as the student
        x_teacher = torch.cat([x_l, x_u])
        self.teacher.train(cfg.teacher_mode == "train")
        teacher_pred = self.teacher_forward(x_teacher)["pred"].float()
        if cfg.teacher_mode == "eval":  # U2PL: a train-mode pass keeps the teacher's BN statistics current
            self.teacher.train()
            self.teacher_forward(x_teacher)
        if self.alignment.active:  # class-mix alignment of the unlabeled logits (sparseg/methods/alignment.py)
            teacher_pred[n_labeled:] = self.alignment(teacher_pred[n_labeled:], unlabeled["valid"])

        drop_percent = cfg.unsup_drop_percent * (1.0 - semi_progress(step, cfg.warmup_epochs))
        self._logs["unsup_drop_percent"] = drop_percent
        x_mix, y_mix = pseudo_label_and_mix(
            teacher_pred[n_labeled:], x_u, unlabeled["valid"], groups, drop_percent, cfg.cutmix_prob,
            self.context.seed, step.iteration, cfg.pseudo_label.filter == "per_class",
        )
        self.class_shares.count("pseudo_label_share", y_mix)
        self.class_shares.count("label_share", labeled["mask"])
        if self.copy_paste.active:
            labeled, x_mix, y_mix = self.paste_rare_classes(labeled, x_mix, y_mix, groups, step)
            x_l = labeled["image"]
        views = [x_l, x_u, x_mix] if cfg.forward_unmixed_u else [x_l, x_mix]
        student = self.model(torch.cat(views))
        self.copy_paste.update(student["pred"][:n_labeled], labeled["mask"])
        pred_mix = student["pred"][-len(x_u):]
        unsup = torch.stack([unsup_loss(pred_mix[g.unlabeled], y_mix[g.unlabeled]) for g in groups]).mean()
        return StepOutputs(step, labeled, unlabeled, student, teacher_pred, groups), unsup

    def paste_rare_classes(
        self, labeled: dict[str, Tensor], x_mix: Tensor, y_mix: Tensor, groups: list[Group], step: Step,
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Rare-class copy-paste (sparseg/methods/copy_paste.py) within each filter group: labeled image k takes
        pixels from labeled image k + 1 of its group, unlabeled image k from labeled image k mod n_l; the pasted
        pixels carry their true labels into the labeled masks and the pseudo-labels."""
        x_l, y_l = labeled["image"], labeled["mask"]
        x_l_out, y_l_out, x_mix, y_mix = x_l.clone(), y_l.clone(), x_mix.clone(), y_mix.clone()
        for group in groups:
            generator = step_generator(self.context.seed, step.iteration, "copy_paste", group.index)
            sources_u = group.labeled[torch.arange(len(group.unlabeled)) % len(group.labeled)]
            for targets, sources, images, labels in (
                (group.labeled, group.labeled.roll(-1), x_l_out, y_l_out),
                (group.unlabeled, sources_u, x_mix, y_mix),
            ):
                pasted = self.copy_paste.sample(y_l, sources, generator)
                images[targets] = pasted.images(images[targets], x_l)
                labels[targets] = pasted.labels(labels[targets])
        return {**labeled, "image": x_l_out, "mask": y_l_out}, x_mix, y_mix

    def supervised_terms(self, out: dict[str, Tensor], mask: Tensor, groups: list[Group]) -> dict[str, Tensor]:
        """L_sup (and the aux term): the mean over groups of each group's loss (§6.1: OHEM's min_kept is per group)."""
        per_group = [
            supervised_loss(self.cfg, {k: out[k][g.labeled] for k in ("pred", "aux") if k in out}, mask[g.labeled])
            for g in groups
        ]
        return {name: torch.stack([terms[name] for terms in per_group]).mean() for name in per_group[0]}

    # ----------------------------------------------------------------- after the optimizer step
    def after_optimizer_step(self, step: Step) -> None:
        """Teacher update: a copy during the sync epochs, then EMA with d_i = min(1 − 1/(i − L·e0 + 1), μ)."""
        e0 = self.cfg.warmup_epochs
        if step.epoch < e0:
            return
        if step.epoch < e0 + self.cfg.teacher_sync_epochs:
            copy_parameters(self.teacher, self.model)
            return
        decay = ema_decay(step.iteration, step.iters_per_epoch * e0, self.cfg.ema_momentum)
        ema_update(self.teacher, self.model, decay)
        self._logs["ema_decay"] = decay
