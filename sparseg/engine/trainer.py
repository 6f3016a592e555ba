"""The training loop. It knows no method: a method turns a batch into losses, the loop does the rest."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ConfigDict
from torch.utils.data import DataLoader

from sparseg.config import RESUME_FREE_KEYS, Config, ConfigError, config_changes, dump_config
from sparseg.data import (
    EvalTransform,
    SegmentationDataset,
    StreamSampler,
    TrainTransform,
    build_dataset,
    check_disjoint,
    create_dataset_spec,
    shard_indices,
)
from sparseg.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_module_state,
    save_checkpoint,
    stored_config,
)
from sparseg.engine.distributed import (
    DistInfo,
    init_distributed,
    resolve_device,
    share_from_main,
    shutdown_distributed,
    wrap_ddp,
)
from sparseg.engine.logger import RunLogger, plot_curves
from sparseg.engine.optim import build_optimizer, poly_factor, scaled_lr, set_lr
from sparseg.engine.rundir import RunDirError, RunLock, check_run_dir, claim_run_dir, record_config_changes
from sparseg.eval import EvalResult
from sparseg.methods import build_method, validate_method_section
from sparseg.methods.base import EvalRequest, Method, MethodConfig, Step


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, inconsistent resume, ...)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's random states as tensors and plain data (checkpoints load with weights_only=True)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),  # (version, tuple of 625 ints, gauss_next): plain already
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``rng_state()`` (numpy keys as a tensor, or as the uint32 array of format-1 checkpoints)."""
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Stream:
    """One training data stream (labeled or unlabeled) and its resumable sampler."""

    name: str
    dataset: SegmentationDataset
    sampler: StreamSampler
    loader: DataLoader


def label_class_counts(dataset: SegmentationDataset, dist_info: DistInfo) -> torch.Tensor:
    """Pixels of each class over the masks of ``dataset`` (each process reads its share; summed over processes)."""
    shard = shard_indices(len(dataset), dist_info.rank, dist_info.world_size)
    counts = torch.from_numpy(dataset.class_pixel_counts(shard)).double()
    if dist_info.enabled:
        torch.distributed.all_reduce(counts)
    return counts


class _StoredSection(MethodConfig):
    """A checkpoint's section of another method than this run's, as stored: compared key by key, not validated."""

    model_config = ConfigDict(extra="allow")


class Trainer:
    """Iteration-based training with periodic evaluation, atomic checkpoints and exact resume.

    The method comes resolved (``sparseg.build.resolve``): ``Trainer(*resolve(cfg), resume=...)``."""

    def __init__(self, cfg: Config, method_class: type[Method], method_cfg: MethodConfig, resume: bool = False,
                 overwrite: bool = False, quiet: bool = False, allow_config_change: bool = False) -> None:
        self.cfg = cfg
        self.method_class = method_class
        self.method_cfg = method_cfg
        self.allow_config_change = allow_config_change
        self.config_changes: dict[str, tuple[Any, Any]] = {}  # resumed with these edits (key: (old, new))
        self.out_dir = Path(cfg.out)
        self.dist = init_distributed("cuda" if cfg.train.device.startswith("cuda") or (
            cfg.train.device == "auto" and torch.cuda.is_available()) else "cpu")
        self.device = resolve_device(cfg.train.device, self.dist)
        if cfg.train.amp == "fp16" and self.device.type != "cuda":
            raise TrainingError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 or off on CPU")
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.seed + self.dist.rank)
        check_run_dir(self.out_dir, resume, overwrite)  # every process fails fast; the main one checks again locked

        self.spec = create_dataset_spec(cfg.data)
        self.num_classes = self.spec.num_classes
        # every list is read and its files checked (headers) before the model is built
        self.val_dataset = (
            build_dataset(cfg.data, "val_list", labeled=True, transform=EvalTransform()) if cfg.data.val_list else None
        )
        self.streams = self._build_streams()
        main = self.streams[-1]  # the unlabeled stream sets the epoch length when present
        self.iters_per_epoch = len(main.loader)
        if self.iters_per_epoch == 0:
            raise TrainingError(
                f"the '{main.name}' list has fewer images ({len(main.dataset)}) than one global batch; "
                "lower data.batch_size"
            )
        t = cfg.train
        self.total_iters = t.iters if t.iters is not None else t.epochs * self.iters_per_epoch

        prior = None
        if method_class.wants_class_prior(method_cfg):  # e.g. class-mix alignment of pseudo-labels
            labeled = next(s.dataset for s in self.streams if s.name == "labeled")
            prior = label_class_counts(labeled, self.dist)
        self.method = build_method(cfg, method_class, method_cfg, self.num_classes, self.dist.world_size,
                                   self.dist.rank, prior).to(self.device)
        if cfg.train.channels_last:
            self.method.to(memory_format=torch.channels_last)
        if cfg.train.compile:
            self.method.model.compile()
        if self.dist.enabled:
            if self.device.type == "cuda":  # student and teacher alike (CPU has no SyncBatchNorm)
                self.method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
            self.ddp = wrap_ddp(self.method, self.device, self.method.unused_parameters)
        else:
            self.ddp = self.method

        self.global_batch = cfg.data.batch_size
        self.lr = scaled_lr(cfg.optim, self.global_batch)
        self.optimizer = build_optimizer(self.method, cfg.optim, self.lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.amp == "fp16")
        self.iteration = 0
        self.skipped_steps = 0
        self.best_miou = -1.0
        self.resume_note = ""
        last = self.out_dir / "last.pt"
        if resume:
            self._resume(last)
        # the main process writes the run folder: lock it, and move an overwritten run aside; a refusal ends
        # every process with the same message (not rank 0 alone while the others wait for it)
        self.run_lock: RunLock | None = None
        moved_to = None
        failure = None
        if self.dist.is_main:
            try:
                self.run_lock, moved_to = claim_run_dir(self.out_dir, resume, overwrite)
            except Exception as err:  # noqa: BLE001 -- shared with the other processes, then raised as it is
                failure = err
        refusal = share_from_main(None if failure is None else str(failure), self.dist)
        if failure is not None:
            raise failure
        if refusal is not None:
            raise RunDirError(refusal)
        self.logger = RunLogger(
            self.out_dir, self.total_iters, start_iter=self.iteration, fresh=not resume,
            enabled=self.dist.is_main and not quiet,
        )
        if moved_to is not None:
            self.logger.message(f"the previous run's files were moved to {moved_to}")
        if resume:
            self.logger.message(f"resumed from {last} at iteration {self.iteration}")
            if self.resume_note:
                self.logger.message(f"[yellow]{self.resume_note}[/yellow]")
            if self.config_changes and self.dist.is_main:
                history = record_config_changes(self.out_dir, self.iteration, self.config_changes)
                self.logger.message(f"config changes since {last}: {_describe_changes(self.config_changes)} "
                                    f"(recorded in {history})")

    # ----------------------------------------------------------------- data
    def _build_streams(self) -> list[Stream]:
        """The loaders of the streams the method trains on (read from its class: the model is not built yet)."""
        cfg, method = self.cfg, self.method_class
        if cfg.data.label_format == "sparse" and method.label_kind is None:
            raise TrainingError(
                f"data.label_format is sparse but method '{cfg.method['name']}' needs dense labels; "
                "use a sparse-label method (agmm, partial_ce)"
            )
        # list of each stream: labeled + unlabeled (semi-supervised), labeled only (train_list or labeled_list),
        # or images only (pretraining: train_list or unlabeled_list, masks never read)
        streams = method.streams
        semi = "labeled" in streams and "unlabeled" in streams
        fallback = "train_list" if cfg.data.train_list else None
        keys = {
            "labeled": "labeled_list" if semi else fallback or "labeled_list",
            "unlabeled": "unlabeled_list" if semi else fallback or "unlabeled_list",
        }
        transform = TrainTransform(cfg.data.crop_size, cfg.data.scale_range, cfg.data.base_size, cfg.data.flip)
        datasets = {}
        for name in streams:
            if getattr(cfg.data, keys[name]) is None:
                raise TrainingError(f"method '{cfg.method['name']}' needs data.{keys[name]}")
            datasets[name] = build_dataset(cfg.data, keys[name], labeled=name == "labeled", transform=transform)
        batches = {"labeled": cfg.data.batch_size, "unlabeled": cfg.data.unlabeled_batch_size or cfg.data.batch_size}
        if semi:
            check_disjoint(datasets["labeled"].entries, datasets["unlabeled"].entries)
        # one epoch = one pass over the unlabeled list (or the labeled one); shorter lists repeat
        epoch_length = len(datasets["unlabeled" if "unlabeled" in datasets else "labeled"])
        streams = []
        for salt, name in enumerate(method.streams):
            global_batch = batches[name]
            if global_batch % self.dist.world_size:
                raise TrainingError(
                    f"data batch size {global_batch} for '{name}' is not divisible by {self.dist.world_size} processes"
                )
            sampler = StreamSampler(
                len(datasets[name]),
                length=epoch_length,
                seed=cfg.seed * 1000 + salt,
                shuffle=True,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
            loader = DataLoader(
                datasets[name],
                batch_size=global_batch // self.dist.world_size,
                sampler=sampler,
                drop_last=True,
                num_workers=cfg.data.workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=cfg.data.workers > 0,
                # its own generator: creating an iterator must not draw from the global RNG (exact resume)
                generator=torch.Generator().manual_seed(cfg.seed),
            )
            streams.append(Stream(name, datasets[name], sampler, loader))
        return streams

    def _batches(self, epoch: int, start: int) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
        """Batches of one epoch from every stream, skipping ``start`` already-seen iterations."""
        for stream in self.streams:
            stream.sampler.set_epoch(epoch, start=start * stream.loader.batch_size)
        memory_format = torch.channels_last if self.cfg.train.channels_last else torch.contiguous_format
        for parts in zip(*(s.loader for s in self.streams)):
            yield {
                s.name: {
                    k: v.to(self.device, non_blocking=True, memory_format=memory_format) if v.dim() == 4
                    else v.to(self.device, non_blocking=True)
                    for k, v in part.items()
                }
                for s, part in zip(self.streams, parts)
            }

    # ----------------------------------------------------------------- loop
    def _autocast(self):
        if self.cfg.train.amp == "off":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.train.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def fit(self) -> EvalResult | None:
        """Train to ``total_iters`` and evaluate; the run folder is released at the end, also on errors."""
        try:
            return self._fit()
        except KeyboardInterrupt:
            last = self.out_dir / "last.pt"
            self.logger.message(f"interrupted at iteration {self.iteration}; " + (
                f"--resume continues from {last}" if last.is_file() else "no checkpoint was written yet"))
            self._plot_curves()
            raise
        finally:
            self.close()

    def _plot_curves(self) -> None:
        if self.dist.is_main and (self.out_dir / "metrics.jsonl").exists():
            plot_curves(self.out_dir / "metrics.jsonl", self.out_dir / "curves.png")

    def close(self) -> None:
        """Close the logs, stop the loaders' persistent workers and release the run folder's lock (a second
        call does nothing)."""
        self.logger.close()
        for stream in self.streams:
            workers = stream.loader._iterator  # torch has no public call that stops persistent workers
            if workers is not None:
                workers._shutdown_workers()
                stream.loader._iterator = None
        if self.run_lock is not None:
            self.run_lock.release()

    def _fit(self) -> EvalResult | None:
        cfg, t = self.cfg, self.cfg.train
        started = time.perf_counter()
        self.logger.message(
            f"training '{cfg.method['name']}' for {self.total_iters} iterations ({self.iters_per_epoch}/epoch), "
            f"global batch {self.global_batch}, lr {self.lr:g} (base {cfg.optim.base_lr:g}"
            + (f" x {self.global_batch}/{cfg.optim.reference_batch})" if cfg.optim.reference_batch else ")")
            + f", device {self.device}, {self.dist.world_size} process(es)"
        )
        weights = ", ".join(f"{name} {weight:g}" for name, weight in self.method.loss_weights().items())
        self.logger.message(f"loss = Σ weight · term (logged terms are unweighted); weights: {weights or 'all'}"
                            + (", others 1" if weights else " 1"))
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            import yaml

            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(dump_config(cfg), sort_keys=False))
        result = None
        self.method.train()
        while self.iteration < self.total_iters:
            epoch, start = divmod(self.iteration, self.iters_per_epoch)
            for batch in self._batches(epoch, start):
                self._train_step(batch, epoch)
                done = self.iteration
                if t.eval_every and done % t.eval_every == 0 and done < self.total_iters:
                    result = self._evaluate_and_checkpoint()
                if done >= self.total_iters:
                    break
        result = self._evaluate_and_checkpoint()
        self.logger.message(f"finished in {time.perf_counter() - started:.0f}s; checkpoints in {self.out_dir}")
        self.logger.close()
        self._plot_curves()
        return result

    def _train_step(self, batch: dict[str, dict[str, torch.Tensor]], epoch: int) -> None:
        step = Step(self.iteration, epoch, self.iters_per_epoch, self.total_iters)
        optim = self.cfg.optim
        factor = poly_factor(self.iteration, self.total_iters, optim.poly_power, optim.lr_schedule_shift)
        set_lr(self.optimizer, factor)
        with self._autocast():
            losses = self.ddp(batch, step)
        bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v).all()}
        if bad:
            where = f"non-finite loss at iteration {self.iteration}: " + ", ".join(f"{k} = {v}" for k, v in bad.items())
            if self.cfg.train.on_nonfinite == "stop":
                raise TrainingError(f"{where}; the last good checkpoint is {self.out_dir / 'last.pt'} "
                                    "(train.on_nonfinite=skip skips such steps)")
            self.skipped_steps += 1
            self.logger.message(f"{where}: step skipped ({self.skipped_steps} so far)")
            self.iteration += 1
            return
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_optimizer_step(step)
        self.iteration += 1
        lr = self.optimizer.param_groups[0]["lr"]
        if self.iteration % self.cfg.train.log_every == 0 or self.iteration == self.total_iters:
            values = {k: float(v.detach()) for k, v in losses.items()}
            values.update(lr=lr, epoch=epoch, **self.method.extra_logs())
            self.logger.log(self.iteration, "train", values)
        self.logger.progress(self.iteration, float(losses["loss"].detach()), lr)

    # ----------------------------------------------------------------- eval and checkpoints
    def evaluate(self) -> dict[str, EvalResult]:
        """Evaluate every model the method exposes on (this process's share of) the val list."""
        results = {}
        n = len(self.val_dataset)
        if self.cfg.train.max_val_images:
            n = min(n, self.cfg.train.max_val_images)
        request = EvalRequest(self.cfg.eval, self.device, shard_indices(n, self.dist.rank, self.dist.world_size), n,
                              self.spec.class_names, self.cfg.seed)
        for name, model in self.method.eval_models().items():
            results[name] = self.method.evaluate(model, self.val_dataset, request)
        self.method.train()
        return results

    def _check_in_sync(self) -> None:
        """Every process must hold the same parameters; a divergence is a bug worth stopping for."""
        if not self.dist.enabled:
            return
        params = [p.detach().double() for p in self.method.model.parameters()]
        local = torch.stack([torch.stack([p.sum(), p.abs().sum()]) for p in params]).flatten().cpu()
        gathered = [torch.empty_like(local) for _ in range(self.dist.world_size)]
        torch.distributed.all_gather_object(gathered, local)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise TrainingError(f"processes hold different parameters at iteration {self.iteration}")

    def _average_buffers(self) -> None:
        """Without SyncBN (CPU/gloo) each process keeps its own BN running statistics; average
        them so evaluation shards and the checkpoint all use one model. Other buffers (memory banks)
        are identical on every process by construction and are left alone."""
        if not self.dist.enabled:
            return
        for module in self.method.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                for buffer in (module.running_mean, module.running_var):
                    torch.distributed.all_reduce(buffer)
                    buffer /= self.dist.world_size

    def _evaluate_and_checkpoint(self) -> EvalResult | None:
        """Write last.pt, then evaluate (a crash in evaluation leaves the checkpoint). An improvement writes
        best.pt and last.pt again, so last.pt holds the best mIoU including its own evaluation and a resumed
        run never replaces best.pt by a worse model. Evaluation draws no random numbers: the RNG state saved
        before it is the one after it."""
        self._check_in_sync()
        self._average_buffers()
        rng = rng_state()
        if self.dist.enabled:  # every process's RNG, so each resumes exactly where it was
            states = [None] * self.dist.world_size
            torch.distributed.all_gather_object(states, rng)
            rng = {"per_rank": states}
        state = None
        if self.dist.is_main:
            state = self._state(rng)
            save_checkpoint(self.out_dir / "last.pt", state)
            for name, content in self.method.checkpoint_files(state).items():
                save_checkpoint(self.out_dir / name, content)
        primary = None
        if self.val_dataset is not None:
            results = self.evaluate()
            primary_name = next(iter(results))
            primary = results[primary_name]
            values = {"miou": primary.miou, **{f"{k}_miou": r.miou for k, r in results.items()}}
            self.logger.log(self.iteration, "val", values)
            self.logger.message(
                f"iter {self.iteration}: {self.method.score_name} mIoU "
                + ", ".join(f"{k} {r.miou:.2f}" for k, r in results.items())
                + (f" (first {cap} of {len(self.val_dataset)} val images)"
                   if (cap := self.cfg.train.max_val_images) and cap < len(self.val_dataset) else ""),
                to_file=False,  # train.log has the record logged just above
            )
            if primary.miou > self.best_miou:
                self.best_miou = primary.miou
                if state is not None:
                    state["best_miou"] = self.best_miou
                    save_checkpoint(self.out_dir / "best.pt", state)
                    save_checkpoint(self.out_dir / "last.pt", state)
        return primary

    def _state(self, rng: dict[str, Any]) -> dict[str, Any]:
        return {
            "config": dump_config(self.cfg),
            "num_classes": self.num_classes,
            "class_names": list(self.spec.class_names),
            "palette": [list(c) for c in self.spec.palette],
            "iteration": self.iteration,
            "total_iters": self.total_iters,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_miou": self.best_miou,
            "skipped_steps": self.skipped_steps,
            "rng": rng,
        }

    def _resume(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        saved = state["config"]
        if saved["model"] != dump_config(self.cfg)["model"] or state["num_classes"] != self.num_classes:
            raise CheckpointError(f"{path} was trained with another model or class count; cannot resume")
        if state["total_iters"] != self.total_iters:
            raise CheckpointError(
                f"{path} was written for {state['total_iters']} iterations but this run has {self.total_iters}"
            )
        self.config_changes = config_changes(stored_config(state, path), self.cfg, self._method_section)
        refused = {k: v for k, v in self.config_changes.items() if k not in RESUME_FREE_KEYS}
        if refused and not self.allow_config_change:
            raise ConfigError(
                f"the config differs from the one {path} was trained with: {_describe_changes(refused)}; resume "
                f"with that config ({self.out_dir / 'config.yaml'}), or pass --allow-config-change to go on with "
                f"the new values (recorded in {self.out_dir}/config_history.yaml); "
                f"{', '.join(RESUME_FREE_KEYS[1:])} may change without it"
            )
        load_module_state(self.method, state["method"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = state["iteration"]
        self.best_miou = state["best_miou"]
        self.skipped_steps = state.get("skipped_steps", 0)
        rng = state["rng"]
        saved_world = len(rng["per_rank"]) if "per_rank" in rng else 1
        if saved_world != self.dist.world_size:
            # data order and method state carry over; per-process random streams cannot
            self.resume_note = (f"{path} was written by {saved_world} process(es), resumed with "
                                f"{self.dist.world_size}: dropout randomness is reseeded")
            seed_everything(self.cfg.seed + self.dist.rank + self.iteration)
        else:
            set_rng_state(rng["per_rank"][self.dist.rank] if "per_rank" in rng else rng)

    def _method_section(self, section: dict[str, Any], origin=None) -> MethodConfig:
        """A method section with its defaults, by this run's method ``Config``; another method's section (a
        checkpoint trained with it) as stored."""
        if section["name"] != self.cfg.method["name"]:
            return _StoredSection(**{key: value for key, value in section.items() if key != "name"})
        return validate_method_section(self.method_class, section, origin)


def _describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())


def train(cfg: Config, method_class: type[Method], method_cfg: MethodConfig, resume: bool = False,
          overwrite: bool = False, allow_config_change: bool = False) -> EvalResult | None:
    """Train ``cfg`` with its resolved method to the end (``train(*sparseg.build.resolve(cfg))``); the process
    group of a torchrun launch is destroyed afterwards."""
    try:
        trainer = Trainer(cfg, method_class, method_cfg, resume=resume, overwrite=overwrite,
                          allow_config_change=allow_config_change)
        if trainer.iteration >= trainer.total_iters:
            trainer.logger.message(f"{cfg.out}/last.pt already finished {trainer.total_iters} iterations")
            trainer.close()
            return None
        return trainer.fit()
    finally:
        shutdown_distributed()
