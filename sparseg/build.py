"""Assembling a run, above config, models, methods and engine: a config loaded with its method section validated
(before any data is read) and resolved once into the method's class and typed section, a trained model rebuilt
from a checkpoint, and predictions written with it. The command line, the demo, ``sparseg annotate`` and the
benchmarks import these instead of passing callbacks."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from sparseg.config import Config, apply_overrides, config_from_dict, override_keys, override_origin
from sparseg.config import load_config as load_config_file
from sparseg.engine.checkpoint import CheckpointError, load_checkpoint, load_module_state, stored_config
from sparseg.methods import build_method, method_class, method_config, method_schema, validate_method_section

if TYPE_CHECKING:
    from sparseg.methods.base import Method, MethodConfig


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """``sparseg.config.load_config`` with the method section validated by the method's own ``Config`` (a typo
    is one line with the nearest key) and ``--set method.*`` values typed by it."""
    return load_config_file(path, overrides, method_config=method_config, method_schema=method_schema)


class Resolved(NamedTuple):
    """A config with its method resolved: the class ``method.name`` names and the section typed by its
    ``Config``. It unpacks into ``engine.trainer.train``/``Trainer`` and ``methods.build_method``."""

    config: Config
    method_class: type[Method]
    method_config: MethodConfig


def resolve(cfg: Config) -> Resolved:
    """Look the method of ``cfg`` up and validate its section: the one place a run's method is resolved."""
    cls = method_class(cfg.method["name"])
    return Resolved(cfg, cls, validate_method_section(cls, cfg.method))


def inference_device(cfg: Config) -> torch.device:
    """The device ``train.device`` names, for one process (``auto``: CUDA when available)."""
    from sparseg.engine.distributed import DistInfo, resolve_device

    return resolve_device(cfg.train.device, DistInfo())


class Trained(NamedTuple):
    """A model rebuilt from a checkpoint: the run's config (with overrides), the checkpoint's contents, the chosen
    model (eval mode) and its name among the method's models."""

    config: Config
    state: dict[str, Any]
    model: nn.Module
    name: str


def load_trained(checkpoint: str | Path, overrides: list[str], model_name: str | None = None) -> Trained:
    """Rebuild the config, method and chosen model stored in a checkpoint (``model.*`` keys cannot be overridden)."""
    state = load_checkpoint(checkpoint)
    trained = stored_config(state, checkpoint, method_config)
    cfg = config_from_dict(apply_overrides(copy.deepcopy(state["config"]), overrides, method_schema),
                           override_origin(overrides), method_config)
    if cfg.model != trained.model:
        key = next((k for k in override_keys(overrides) if k.startswith("model")), "model.*")
        raise CheckpointError(f"--set {key}: model.* keys come from the checkpoint and cannot be overridden "
                              f"({checkpoint} holds a {trained.model.name} with encoder {trained.model.encoder})")
    cfg.model.pretrained = None  # the checkpoint holds the weights
    method = build_method(*resolve(cfg), state["num_classes"])
    load_module_state(method, state["method"], checkpoint)
    models = method.eval_models()
    name = model_name or next(iter(models))
    if name not in models:
        raise CheckpointError(f"--model {name}: this checkpoint has {', '.join(models)}")
    return Trained(cfg, state, models[name].eval(), name)


class Predictions(NamedTuple):
    """What ``predict_files`` wrote: the output folder as given, the number of masks, the images skipped."""

    out: str | Path
    written: int
    skipped: list[Path]

    def summary(self) -> str:
        """The line ``sparseg predict`` prints."""
        skipped = f"; skipped {len(self.skipped)} unreadable image(s)" if self.skipped else ""
        return f"wrote {self.written} predictions to {self.out}{skipped}"


def predict_files(checkpoint: str | Path, inputs: Sequence[str | Path], out: str | Path, overlay: bool = False,
                  overwrite: bool = False, overrides: Sequence[str] = (), model_name: str | None = None) -> Predictions:
    """Palette PNG masks (and overlays) of the images and folders ``inputs`` under ``out`` by the checkpoint's
    model (``sparseg predict``); every output is checked before the checkpoint is read."""
    from sparseg.eval.predict import plan_predictions, write_predictions

    plan = plan_predictions(inputs, Path(out), overlay, overwrite)
    cfg, state, model, _ = load_trained(checkpoint, list(overrides), model_name)
    device = inference_device(cfg)
    palette = [tuple(c) for c in state["palette"]]
    skipped = write_predictions(model.to(device), plan, state["num_classes"], palette, cfg.eval, device,
                                on_bad_image=cfg.data.on_bad_image)
    return Predictions(out, len(plan) - len(skipped), skipped)
