"""Run configuration: YAML files validated with pydantic.

Every section forbids unknown keys, so a typo is an error naming the key. The ``method``
section is validated in two steps: ``method.name`` picks the method, whose own ``Config``
class then validates the remaining keys (see ``sparseg.methods``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _pair(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ValueError("expected an int or [height, width]")
    return (int(value[0]), int(value[1]))


class DataConfig(Section):
    dataset: str = "folder"
    root: str = "."
    train_list: str | None = None
    labeled_list: str | None = None
    unlabeled_list: str | None = None
    val_list: str | None = None
    # folder datasets (and overrides for the built-in ones)
    num_classes: int | None = None
    class_names: list[str] | None = None
    palette: list[tuple[int, int, int]] | None = None
    mask_mapping: dict[int, int] | None = None
    reduce_zero_label: bool = False
    # sparse labels (agmm.md §2): training masks with 254 = unlabeled, read in sparse_encoding
    label_format: Literal["dense", "sparse"] = "dense"
    sparse_encoding: Literal["canonical", "reference", "ignore255", "shifted"] = "canonical"
    # training-time augmentation
    crop_size: tuple[int, int] = (321, 321)
    scale_range: tuple[float, float] = (0.5, 2.0)
    base_size: int | None = None  # resize the long side to this before scaling
    flip: bool = True
    batch_size: int = 8  # global labeled batch
    # depth maps for training lists (DepMatch, docs/methods/depmatch.md): None = no depth
    depth_dir: str | None = None  # relative to root: <depth_dir>/<image path, suffix replaced>.png|.npy
    depth_missing: Literal["error", "skip"] = "error"  # skip: the image's depth_valid is all False
    depth_norm: Literal["robust", "raw"] = "robust"  # robust: d~ in [0,1] (depmatch.md §3); raw: estimator units
    unlabeled_batch_size: int | None = None  # global unlabeled batch (default: batch_size)
    workers: int = 2

    _crop = field_validator("crop_size", mode="before")(_pair)

    @field_validator("scale_range")
    @classmethod
    def _scale_ok(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("need 0 < min <= max")
        return v


class ModelConfig(Section):
    name: str = "deeplabv3plus"  # deeplabv3plus (ResNet encoders) | dpt (DINOv2 encoders)
    encoder: Literal[
        "resnet18", "resnet34", "resnet50", "resnet101", "dinov2_small", "dinov2_base", "dinov2_large"
    ] = "resnet101"
    stem: Literal["deep", "plain"] = "deep"
    width: int = 64  # encoder base width (64 = standard ResNet; smaller for CPU demos)
    output_stride: Literal[8, 16] = 16
    multi_grid: tuple[int, int, int] | None = None
    aspp_rates: tuple[int, int, int] = (6, 12, 18)
    decoder_channels: int = 256
    dropout: float = 0.1
    proj_dim: int = 0  # >0 adds the projection head returning ``rep``
    aux_head: bool = False
    pretrained: str | None = None  # local encoder weights file; dpt: a Hugging Face Dinov2Model directory or hub id
    pretrained_layout: Literal["auto", "deepstem", "torchvision", "timm", "mmseg"] = "auto"
    dpt_layers: tuple[int, int, int, int] | None = None  # dpt: tapped transformer blocks (default: per encoder)

    @model_validator(mode="after")
    def _encoder_fits_model(self) -> ModelConfig:
        family = "dinov2" if self.name == "dpt" else "resnet"
        if not self.encoder.startswith(family):
            raise ValueError(f"model '{self.name}' needs a {family}* encoder, got '{self.encoder}'")
        return self


class OptimConfig(Section):
    name: Literal["sgd", "adamw"] = "sgd"
    base_lr: float = 0.001
    reference_batch: int | None = None  # lr = base_lr * global_batch / reference_batch
    head_lr_mult: float = 10.0
    momentum: float = 0.9  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    weight_decay: float = 1e-4
    poly_power: float = 0.9


class TrainConfig(Section):
    iters: int | None = None
    epochs: int | None = None  # one epoch = one pass over the (unlabeled or train) list
    eval_every: int = 0  # 0: only at the end
    log_every: int = 10
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = False
    compile: bool = False  # torch.compile the model (CUDA; first iterations are slow)
    deterministic: bool = False
    on_nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss stops the run, or skips that step
    max_val_images: int | None = None  # cap validation during training (None: all)

    @model_validator(mode="after")
    def _one_length(self) -> TrainConfig:
        if (self.iters is None) == (self.epochs is None):
            raise ValueError("set exactly one of train.iters and train.epochs")
        return self


class EvalConfig(Section):
    mode: Literal["whole", "center_crop", "sliding_window"] = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    scales: list[float] = Field(default_factory=lambda: [1.0])
    flip: bool = False
    miou_over: Literal["all", "present"] = "all"  # classes with empty union: count 0, or skip

    _crop = field_validator("crop_size", "stride", mode="before")(
        lambda v: None if v is None else _pair(v)
    )


class Config(Section):
    seed: int = 0
    out: str = "runs/default"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(iters=1000))
    eval: EvalConfig = Field(default_factory=EvalConfig)
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "supervised"})

    def method_config(self):
        """The method section validated by the method's own schema."""
        from sparseg.methods import method_class

        options = dict(self.method)
        name = options.pop("name", "supervised")
        cls = method_class(name)
        try:
            return cls.Config(**options)
        except ValidationError as err:
            raise ConfigError(_format_errors(err, prefix="method")) from None


def _format_errors(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        key = f"{prefix}.{key}" if prefix and key else (prefix or key)
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        else:
            lines.append(f"config key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{key}': '{part}' is not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return raw


def config_from_dict(raw: dict[str, Any]) -> Config:
    try:
        cfg = Config(**raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None
    cfg.method_config()  # validate the method section now, not at training time
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    raw = apply_overrides(raw, overrides or [])
    try:
        return config_from_dict(raw)
    except ConfigError as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from None


def dump_config(cfg: Config) -> dict[str, Any]:
    """Plain, YAML-safe dict of the resolved config (stored in checkpoints and run dirs)."""
    return cfg.model_dump(mode="json")
