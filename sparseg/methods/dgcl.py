"""Density-Guided Contrastive Learning (Wang et al., CVPR 2023; dgcl.md §4): ``selftrain`` + L_c.

For each class of a contrast group, the lowest-density pixel features (density = multi-scale kNN
cosine similarity to that class's memory bank) are the anchors; they are pulled towards a prototype
of high-density batch and memory features and pushed from other classes' pixels (InfoNCE). The
memory bank is a per-class FIFO of decoder features, projected features and their densities at
insertion, updated after the optimizer step from the whole global batch.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from sparseg.labels import IGNORE
from sparseg.methods import register_method
from sparseg.methods.base import MethodContext, Step, step_generator
from sparseg.methods.losses import resize_nearest
from sparseg.methods.selftrain import (
    SelfTrain,
    SelfTrainConfig,
    StepOutputs,
    filter_pseudo_labels,
    semi_progress,
    split_groups,
)


class DGCLConfig(SelfTrainConfig):
    """``method:`` keys of ``dgcl`` on top of ``selftrain``'s (defaults: dgcl.md §5, Pascal VOC)."""

    forward_unmixed_u: bool = True  # L_c needs the student's features of the unmixed x_u (§4.1)
    contrast_weight: float = Field(0.125, ge=0)  # λ_c; 0.5 / W_ref reproduces a W_ref-GPU reference run (§6.1)
    temperature: float = Field(0.5, gt=0)  # τ
    contrast_drop_percent: float = Field(80.0, ge=0, le=100)  # α0
    contrast_drop_percent_min: float = Field(10.0, ge=0, le=100)  # α_min
    contrast_group_size: int | None = Field(4, ge=1)  # unlabeled images per contrast group (+ as many labeled)
    ignore_classes: list[int] = Field(default_factory=lambda: [0])  # never anchor classes (§6.4)
    num_anchors: int = Field(200, ge=1)  # N_q
    batch_positives: int = Field(50, ge=1)
    memory_positives: int = Field(50, ge=1)
    num_negatives: int = Field(512, ge=1)
    max_pixels_per_class: int = Field(10_000, ge=1)
    density_ks: tuple[int, ...] = (8, 16, 32)
    density_precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    density_chunk_mb: float | None = Field(None, gt=0)  # MiB of similarities per chunk (None: DEFAULT_CHUNK_MB)
    memory_size: int = Field(10_000, ge=1)  # N_mem per class
    memory_update_cap: int = Field(1_000, ge=1)  # new entries per class and update
    density_min_memory: int = Field(1_000, ge=1)  # stored density is computed when memory holds more
    refresh_memory_density: bool = False  # recompute all stored densities after each update (not reference)
    warmup_until_full: bool = True  # reference gate: no L_c until every class memory is full
    min_memory: int = Field(1_000, ge=1)  # per-class gate when warmup_until_full is false

    @model_validator(mode="after")
    def _consistent(self) -> DGCLConfig:
        if not self.forward_unmixed_u:
            raise ValueError("dgcl computes L_c on the unmixed unlabeled images: forward_unmixed_u must be true")
        if not self.density_ks or min(self.density_ks) < 1:
            raise ValueError("density_ks must be positive integers")
        k_max = max(self.density_ks)
        if self.min_memory < max(k_max, self.memory_positives):
            raise ValueError(f"min_memory must be at least max(density_ks) = {k_max} and memory_positives")
        if self.density_min_memory < k_max:
            raise ValueError(f"density_min_memory must be at least max(density_ks) = {k_max}")
        if self.memory_size < self.min_memory:
            raise ValueError("memory_size must be at least min_memory")
        return self


# ---------------------------------------------------------------- density (§4.3, §8)

# MiB of similarities per chunk: R = 4096 rows at N = 10,000 on GPUs (§8); on CPUs a chunk that stays
# in cache makes the top-k pass cheaper than one over a DRAM-sized block
DEFAULT_CHUNK_MB = {"cuda": 160.0, "cpu": 16.0}


def density_weights(ks: tuple[int, ...]) -> Tensor:
    """Weights w_r on the sorted top-max(ks) similarities: Σ_r w_r v_r = mean_k of the top-k means.

    w_r = Σ_{k ∈ ks, k ≥ r} 1 / (k·|ks|); for (8, 16, 32): 7/96, 3/96, 1/96.
    """
    k_max = max(ks)
    ranks = torch.arange(1, k_max + 1, dtype=torch.float64)
    weights = sum((ranks <= k).double() / (k * len(ks)) for k in ks)
    return weights.float()


def top_values(similarity: Tensor, k: int) -> Tensor:
    """The k largest values of each row, sorted in descending order; exact.

    Columns are dealt into n_b strided blocks (column j → block j mod n_b) of about sqrt(n/k) columns.
    Every value above the k-th largest block maximum lies in one of the k blocks with the largest
    maxima (ties give equal values), so the final top-k scans k blocks instead of the whole row.
    """
    n = similarity.shape[1]
    block = int(math.sqrt(n / k))
    if block < 4:
        return similarity.topk(k, dim=1).values
    n_blocks = n // block
    block_max = similarity[:, : n_blocks * block].unflatten(1, (block, n_blocks)).amax(1)
    tail = similarity[:, n_blocks * block :]
    if tail.shape[1]:
        block_max[:, : tail.shape[1]] = torch.maximum(block_max[:, : tail.shape[1]], tail)
    best = block_max.topk(k, dim=1, sorted=False).indices
    offsets = n_blocks * torch.arange(block + 1, device=similarity.device)
    columns = (best.unsqueeze(-1) + offsets).flatten(1)
    candidates = similarity.gather(1, columns.clamp_max(n - 1)).masked_fill_(columns >= n, float("-inf"))
    return candidates.topk(k, dim=1).values


@contextmanager
def _matmul_precision(device: torch.device, tf32: bool):
    """Allow TF32 (or force IEEE fp32) for CUDA matmuls inside the block only, not through global flags."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        name, value = "fp32_precision", "tf32" if tf32 else "ieee"
    else:
        name, value = "allow_tf32", tf32
    previous = getattr(matmul, name)
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, previous)


def multiscale_density(
    features: Tensor,
    memory: Tensor,
    ks: tuple[int, ...] = (8, 16, 32),
    *,
    chunk_mb: float | None = None,
    precision: Literal["fp32", "tf32", "bf16"] = "fp32",
    exclude_self: bool = False,
) -> Tensor:
    """Density D [M] of features [M, D] against memory [N, D] (dgcl.md §4.3): the mean over k in ``ks`` of
    the mean of each row's k largest cosine similarities. Both inputs are L2-normalised here.

    One top-k for max(ks) with prefix weights (§6.2). Query rows go in chunks whose similarity block
    takes at most ``chunk_mb`` MiB (default: DEFAULT_CHUNK_MB of the device), one buffer reused (§8).
    Autocast is off; ``precision`` picks fp32, TF32 (CUDA) or bf16 inputs. ``exclude_self``: the
    features are the memory rows themselves, and each row's similarity to itself is left out.
    No gradient flows.
    """
    ks = tuple(sorted(set(ks)))
    k_max = ks[-1]
    n_memory = memory.shape[0]
    if n_memory < k_max + exclude_self:
        raise ValueError(f"density needs at least {k_max + exclude_self} memory entries, got {n_memory}")
    if exclude_self and features.shape[0] != n_memory:
        raise ValueError("exclude_self needs the memory rows as features")
    device = features.device
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with torch.no_grad(), torch.autocast(device.type, enabled=False), _matmul_precision(device, precision == "tf32"):
        queries = F.normalize(features.float(), dim=1).to(dtype)
        keys = F.normalize(memory.float(), dim=1).to(dtype).T
        weights = density_weights(ks).to(device)
        budget = chunk_mb or DEFAULT_CHUNK_MB.get(device.type, DEFAULT_CHUNK_MB["cuda"])
        rows = max(1, int(budget * 2**20) // (n_memory * keys.element_size()))
        buffer = torch.empty(min(rows, len(queries)), n_memory, dtype=dtype, device=device)
        density = torch.empty(len(queries), device=device)
        for start in range(0, len(queries), rows):
            chunk = queries[start : start + rows]
            similarity = torch.mm(chunk, keys, out=buffer[: len(chunk)])
            if exclude_self:
                similarity.diagonal(start).fill_(float("-inf"))
            density[start : start + len(chunk)] = top_values(similarity, k_max).float() @ weights
    return density


# ---------------------------------------------------------------- memory bank (§4.5)


class MemoryBank(nn.Module):
    """Per-class FIFO queues of ``fts``, raw ``rep`` and stored density, newest first.

    Fixed-size buffers (saved in ``state_dict``) with a fill count per class.
    """

    def __init__(self, num_classes: int, size: int, fts_dim: int, rep_dim: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("fts", torch.zeros(num_classes, size, fts_dim))
        self.register_buffer("rep", torch.zeros(num_classes, size, rep_dim))
        self.register_buffer("density", torch.zeros(num_classes, size))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    def entries(self, c: int) -> tuple[Tensor, Tensor, Tensor]:
        """(fts, rep, density) of class c, newest first."""
        n = int(self.count[c])
        return self.fts[c, :n], self.rep[c, :n], self.density[c, :n]

    def push(self, c: int, fts: Tensor, rep: Tensor, density: Tensor) -> None:
        """Prepend entries (their order kept) and drop the oldest beyond ``size``."""
        new = min(len(fts), self.size)
        kept = min(int(self.count[c]), self.size - new)
        for buffer, values in ((self.fts, fts), (self.rep, rep), (self.density, density)):
            buffer[c, new : new + kept] = buffer[c, :kept].clone()
            buffer[c, :new] = values[:new]
        self.count[c] = new + kept


# ---------------------------------------------------------------- contrast (§4.4)


def info_nce(anchors: Tensor, prototype: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """mean_a −log(e^{a·p/τ} / (e^{a·p/τ} + Σ_j e^{a·n_j/τ})) on unit vectors, in fp32 (§4.4 step 6, §6.7)."""
    with torch.autocast(anchors.device.type, enabled=False):
        a = F.normalize(anchors.float(), dim=1)
        p = F.normalize(prototype.float(), dim=0)
        n = F.normalize(negatives.float(), dim=1)
        logits = torch.cat([(a @ p)[:, None], a @ n.T], dim=1) / temperature
        return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


def config_density(features: Tensor, memory: Tensor, cfg: DGCLConfig, exclude_self: bool = False) -> Tensor:
    """``multiscale_density`` with the config's k, chunk size and precision."""
    return multiscale_density(
        features, memory, cfg.density_ks, chunk_mb=cfg.density_chunk_mb, precision=cfg.density_precision,
        exclude_self=exclude_self,
    )


class ClassContrast(NamedTuple):
    """ℓ_c and what it was built from."""

    loss: Tensor  # ℓ_c
    anchors: Tensor  # pixel indices (into the group) of the anchors
    prototype: Tensor  # un-normalised positive prototype


def class_contrast(
    fts: Tensor,
    rep: Tensor,
    labels: Tensor,
    c: int,
    memory: tuple[Tensor, Tensor, Tensor],
    cfg: DGCLConfig,
    generator: torch.Generator,
) -> ClassContrast:
    """ℓ_c for class c of one group (§4.4): fts [n, D_f], rep [n, D_r], labels [n] (255 = none), memory c entries."""
    memory_fts, memory_rep, memory_density = memory
    pixels = (labels == c).nonzero().squeeze(1)
    if len(pixels) > cfg.max_pixels_per_class:
        pixels = pixels[torch.randperm(len(pixels), generator=generator)[: cfg.max_pixels_per_class].to(pixels.device)]
    n = len(pixels)
    density = config_density(fts[pixels].detach(), memory_fts, cfg)
    anchors = pixels[density.topk(min(cfg.num_anchors, n), largest=False).indices]
    batch_positives = rep.detach()[pixels[density.topk(min(cfg.batch_positives, n)).indices]]
    memory_positives = memory_rep.detach()[memory_density.topk(cfg.memory_positives).indices]
    prototype = torch.cat([batch_positives.float(), memory_positives]).mean(0)
    pool = ((labels != c) & (labels != IGNORE)).nonzero().squeeze(1)
    negatives = pool[torch.randperm(len(pool), generator=generator)[: cfg.num_negatives].to(pool.device)]
    loss = info_nce(rep[anchors], prototype, rep.detach()[negatives], cfg.temperature)
    return ClassContrast(loss, anchors, prototype)


def _graph_zero(tensor: Tensor) -> Tensor:
    """0 (never −0, float32 like every loss term) connected to ``tensor``'s graph, so DDP sees its parameters used."""
    return tensor.float().sum().abs() * 0.0


def _flatten(maps: Tensor) -> Tensor:
    """[B, D, h, w] → [B·h·w, D]."""
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


def _pixel_rows(maps: Tensor, index: Tensor) -> Tensor:
    """Rows [n, D] of maps [B, D, h, w] at flat pixel indices (over B·h·w), without flattening all of it."""
    pixels = maps.shape[-2] * maps.shape[-1]
    return maps.flatten(2)[index // pixels, :, index % pixels]


def select_per_class(keys: Tensor, classes: Tensor, cap: int) -> Tensor:
    """Indices of the ``cap`` smallest keys of each class, ordered by (class, key)."""
    order = torch.argsort(keys)
    order = order[torch.argsort(classes[order], stable=True)]
    sorted_classes = classes[order]
    first = torch.ones_like(sorted_classes, dtype=torch.bool)
    first[1:] = sorted_classes[1:] != sorted_classes[:-1]
    position = torch.arange(len(order), device=keys.device)
    start = torch.cummax(torch.where(first, position, 0), dim=0).values
    return order[position - start < cap]


def _all_gather_rows(tensors: list[Tensor]) -> list[Tensor]:
    """Each tensor's rows from every process, concatenated in rank order (row counts may differ)."""
    world_size = dist.get_world_size()
    count = torch.tensor([len(tensors[0])], device=tensors[0].device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    sizes = [int(n) for n in counts]
    gathered = []
    for tensor in tensors:
        padded = tensor.new_zeros((max(*sizes, 1), *tensor.shape[1:]))
        padded[: len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(parts, padded)
        gathered.append(torch.cat([part[:n] for part, n in zip(parts, sizes)]))
    return gathered


def _feature_dims(model: nn.Module) -> tuple[int, int]:
    """Channels of the model's ``fts`` and ``rep``, from one small forward in eval mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, 64, 64, device=next(model.parameters()).device))
    finally:
        for module, training in modes:
            module.training = training
    if "rep" not in out:
        raise ValueError("dgcl needs the projection head's `rep`: set model.proj_dim > 0 (256 in the reference)")
    return out["fts"].shape[1], out["rep"].shape[1]


@register_method("dgcl")
class DGCL(SelfTrain):
    """``selftrain`` plus the density-guided contrastive loss and its memory bank."""

    Config = DGCLConfig
    demo_overrides: ClassVar[dict[str, Any]] = {
        "iters": 240,
        "model": {"proj_dim": 32},
        "method": {  # 64x64 crops give 16x16 features: small memories that fill in a few iterations
            "memory_size": 512, "memory_update_cap": 128, "density_min_memory": 128, "min_memory": 128,
            "warmup_until_full": False, "num_anchors": 64, "num_negatives": 256,
        },
    }

    def __init__(self, model, cfg: DGCLConfig, context: MethodContext) -> None:
        super().__init__(model, cfg, context)
        bad = [c for c in cfg.ignore_classes if not 0 <= c < context.num_classes]
        if bad:
            raise ValueError(f"method.ignore_classes {bad} are not classes 0..{context.num_classes - 1}")
        fts_dim, rep_dim = _feature_dims(model)
        self.memory = MemoryBank(context.num_classes, cfg.memory_size, fts_dim, rep_dim)
        self.register_buffer("contrast_start", torch.tensor(-1))  # first iteration with L_c; -1: not yet
        self._candidates: tuple[Tensor, Tensor, Tensor] | None = None

    def loss_weights(self) -> dict[str, float]:
        return {**super().loss_weights(), "contrast": self.cfg.contrast_weight}

    def extra_logs(self) -> dict[str, Any]:
        fill = self.memory.count.min().item() / self.cfg.memory_size
        return {**super().extra_logs(), "memory_fill": fill, "contrast_start": int(self.contrast_start)}

    def extra_terms(self, outputs: StepOutputs) -> dict[str, Tensor]:
        rep = outputs.student["rep"]
        if not outputs.semi:
            return {"contrast": _graph_zero(rep)}  # keeps the projection head in the graph (DDP)
        n_labeled = len(outputs.labeled["image"])
        n_images = n_labeled + len(outputs.unlabeled["image"])
        fts, rep = outputs.student["fts"][:n_images], rep[:n_images]  # [x_l; x_u], unmixed (§4.1 step 4)
        labels = self.contrast_labels(outputs, tuple(fts.shape[-2:]))
        self._candidates = self.memory_candidates(fts.detach(), rep.detach(), labels, n_labeled, outputs.step)
        return {"contrast": self.contrast_loss(fts, rep, labels, n_labeled, outputs.step)}

    # ----------------------------------------------------------------- labels, gate, loss
    def contrast_labels(self, outputs: StepOutputs, size: tuple[int, int]) -> Tensor:
        """ỹ = [ỹ_l; ỹ_u] at feature resolution (§4.2): nearest-downsampled ground truth, and α-filtered
        teacher labels of the unmixed x_u (quantile per filter group, padding → 255)."""
        cfg = self.cfg
        n_labeled = len(outputs.labeled["image"])
        alpha = max(
            cfg.contrast_drop_percent * (1.0 - semi_progress(outputs.step, cfg.warmup_epochs)),
            cfg.contrast_drop_percent_min,
        )
        self._logs["contrast_drop_percent"] = alpha
        probs_u = outputs.teacher_pred[n_labeled:].softmax(1)
        valid_u = resize_nearest(outputs.unlabeled["valid"], size)
        labels_u = torch.empty(valid_u.shape, dtype=torch.long, device=valid_u.device)
        for group in outputs.filter_groups:
            labels_u[group.unlabeled] = filter_pseudo_labels(
                probs_u[group.unlabeled], valid_u[group.unlabeled], alpha, cfg.pseudo_label.filter == "per_class")
        return torch.cat([resize_nearest(outputs.labeled["mask"], size), labels_u])

    def contrast_classes(self) -> set[int]:
        """Classes whose memory allows contrast (§4.5 gate), minus ``ignore_classes``."""
        counts = self.memory.count.tolist()
        if self.cfg.warmup_until_full:
            ready = set(range(len(counts))) if min(counts) >= self.cfg.memory_size else set()
        else:
            ready = {c for c, n in enumerate(counts) if n >= self.cfg.min_memory}
        return ready - set(self.cfg.ignore_classes)

    def contrast_loss(self, fts: Tensor, rep: Tensor, labels: Tensor, n_labeled: int, step: Step) -> Tensor:
        """L_c: mean over contrast groups of the mean ℓ_c over the group's classes (0 for none), §4.4, §6.1.

        fts, rep: [B_l + B_u, D, h, w] for [x_l; x_u]; labels: [B_l + B_u, h, w].
        """
        classes = self.contrast_classes()
        zero = _graph_zero(rep)
        if not classes:
            return zero
        if self.contrast_start < 0:
            self.contrast_start.fill_(step.iteration)
        groups = split_groups(
            n_labeled, len(fts) - n_labeled, self.cfg.contrast_group_size,
            self.context.rank, self.context.world_size, fts.device,
        )
        group_losses = []
        for group in groups:
            images = torch.cat([group.labeled, n_labeled + group.unlabeled])
            group_fts, group_rep, group_labels = _flatten(fts[images]), _flatten(rep[images]), labels[images].flatten()
            generator = step_generator(self.context.seed, step.iteration, "contrast", group.index)
            present = [c for c in group_labels.unique().tolist() if c in classes]
            losses = [
                class_contrast(group_fts, group_rep, group_labels, c, self.memory.entries(c), self.cfg, generator).loss
                for c in present
            ]
            group_losses.append(torch.stack(losses).mean() if losses else zero)
        return torch.stack(group_losses).mean()

    # ----------------------------------------------------------------- memory update
    def memory_candidates(self, fts: Tensor, rep: Tensor, labels: Tensor, n_labeled: int, step: Step):
        """Up to ``memory_update_cap`` pixels per class of this process's [x_l; x_u] (§4.5, §6.8).

        Each pixel of the global batch gets a key from one permutation drawn alike on every process
        (seed, iteration); the pixels of class c with the smallest keys are a uniform sample without
        replacement, the same for any number of processes. Returns (keys, classes, [fts | rep]) in
        (class, key) order.
        """
        world_size, rank = self.context.world_size, self.context.rank
        n_images, pixels = len(labels), labels[0].numel()
        global_pixels = n_images * world_size * pixels
        generator = step_generator(self.context.seed, step.iteration, "memory")
        permutation = torch.randperm(global_pixels, generator=generator).to(labels.device)
        local = torch.arange(n_images, device=labels.device)
        unlabeled = local >= n_labeled
        # global image order: all labeled images, then all unlabeled ones; local j of rank r is j·W + r
        global_image = (local - unlabeled * n_labeled) * world_size + rank + unlabeled * n_labeled * world_size
        keys = permutation[(global_image[:, None] * pixels + torch.arange(pixels, device=labels.device)).flatten()]
        classes = labels.flatten()
        valid = (classes != IGNORE).nonzero().squeeze(1)
        keep = valid[select_per_class(keys[valid], classes[valid], self.cfg.memory_update_cap)]
        values = torch.cat([_pixel_rows(fts, keep), _pixel_rows(rep, keep)], dim=1).float()
        return keys[keep], classes[keep], values

    def after_optimizer_step(self, step: Step) -> None:
        """Memory update from this step's features (so the loss never saw them), then the teacher (§4.1 step 6)."""
        if self._candidates is not None:
            self.update_memory(*self._candidates)
            self._candidates = None
        super().after_optimizer_step(step)

    def update_memory(self, keys: Tensor, classes: Tensor, values: Tensor) -> None:
        """Insert the global batch's candidates: gathered from every process, then per class newest first,
        with their density against the memory before insertion (0 while it holds ≤ density_min_memory)."""
        cfg = self.cfg
        if self.context.world_size > 1:
            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError("dgcl with world_size > 1 needs torch.distributed to gather memory candidates")
            keys, classes, values = _all_gather_rows([keys, classes, values])
            keep = select_per_class(keys, classes, cfg.memory_update_cap)
            classes, values = classes[keep], values[keep]
        fts_dim = self.memory.fts.shape[-1]
        for c in classes.unique().tolist():
            rows = values[classes == c]
            memory_fts = self.memory.entries(c)[0]
            if len(memory_fts) > cfg.density_min_memory:
                density = config_density(rows[:, :fts_dim], memory_fts, cfg)
            else:
                density = rows.new_zeros(len(rows))
            self.memory.push(c, rows[:, :fts_dim], rows[:, fts_dim:], density)
            memory_fts = self.memory.entries(c)[0]
            if cfg.refresh_memory_density and len(memory_fts) > cfg.density_min_memory:
                refreshed = config_density(memory_fts, memory_fts, cfg, exclude_self=True)
                self.memory.density[c, : len(memory_fts)] = refreshed
