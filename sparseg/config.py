"""Run configuration: YAML files validated with pydantic.

Every section forbids unknown keys, so a typo is an error naming the key. This module knows no method: the
``method`` section is a mapping with a ``name`` here; the caller that knows the methods (``sparseg.build``)
passes ``method_config`` (validates the section) and ``method_schema`` (types ``--set method.*`` values).
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _pair(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    """An int or [height, width], both sides >= 1."""
    if isinstance(value, int):
        value = (value, value)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError("expected an int or [height, width]")
    if min(value) < 1:
        raise ValueError("each side must be >= 1")
    return (int(value[0]), int(value[1]))


def _all_at_least(minimum: int):
    """A validator: every element of a tuple is >= ``minimum`` (None passes)."""

    def check(value):
        if value is not None and min(value) < minimum:
            raise ValueError(f"every entry must be >= {minimum}")
        return value

    return check



class DataConfig(Section):
    dataset: str = "folder"
    root: str = "."
    train_list: str | None = None
    labeled_list: str | None = None
    unlabeled_list: str | None = None
    val_list: str | None = None
    # folder datasets (and overrides for the built-in ones)
    num_classes: int | None = Field(None, ge=1, le=254)  # labels 254 and 255 are reserved
    class_names: list[str] | None = None
    palette: list[tuple[int, int, int]] | None = None
    mask_mapping: dict[int, int] | None = None  # raw value (0..255) -> class or 255
    reduce_zero_label: bool = False
    # sparse labels (agmm.md §2): training masks with 254 = unlabeled, read in sparse_encoding
    label_format: Literal["dense", "sparse"] = "dense"
    sparse_encoding: Literal["canonical", "reference", "ignore255", "shifted"] = "canonical"
    # training-time augmentation
    crop_size: tuple[int, int] = (321, 321)
    scale_range: tuple[float, float] = (0.5, 2.0)
    base_size: int | None = Field(None, ge=1)  # resize the long side to this before scaling
    flip: bool = True
    batch_size: int = Field(8, ge=1)  # global labeled batch
    # depth maps for training lists (DepMatch, docs/methods/depmatch.md): None = no depth
    depth_dir: str | None = None  # relative to root: <depth_dir>/<image path, suffix replaced>.png|.npy
    depth_missing: Literal["error", "skip"] = "error"  # skip: the image's depth_valid is all False
    depth_norm: Literal["robust", "raw"] = "robust"  # robust: d~ in [0,1] (depmatch.md §3); raw: estimator units
    unlabeled_batch_size: int | None = Field(None, ge=1)  # global unlabeled batch (default: batch_size)
    workers: int = Field(2, ge=0)
    on_bad_image: Literal["error", "skip"] = "error"  # unreadable training image/mask: stop, or skip it (logged)

    _crop = field_validator("crop_size", mode="before")(_pair)

    @field_validator("palette")
    @classmethod
    def _rgb_ok(cls, v: list[tuple[int, int, int]] | None) -> list[tuple[int, int, int]] | None:
        if v is not None and any(not 0 <= c <= 255 for rgb in v for c in rgb):
            raise ValueError("colour components must be in 0..255")
        return v

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
    width: int = Field(64, ge=1)  # encoder base width (64 = standard ResNet; smaller for CPU demos)
    output_stride: Literal[8, 16] = 16
    multi_grid: tuple[int, int, int] | None = None
    aspp_rates: tuple[int, int, int] = (6, 12, 18)
    decoder_channels: int = Field(256, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    proj_dim: int = Field(0, ge=0)  # >0 adds the projection head returning ``rep``
    aux_head: bool = False
    pretrained: str | None = None  # encoder weights file, `sparseg pretrain` output, or (dpt) a HF Dinov2Model dir/id
    pretrained_layout: Literal["auto", "deepstem", "torchvision", "timm", "mmseg", "sparseg"] = "auto"
    # `sparseg pretrain` files: each conv that feeds a BatchNorm scaled back to its initial norm (same function;
    # SGD then steps as far as from scratch), docs/methods/pretrain.md "Fine-tuning: the weight scale"
    pretrained_rescale: bool = True
    dpt_layers: tuple[int, int, int, int] | None = None  # dpt: tapped transformer blocks (default: per encoder)

    _dilations = field_validator("multi_grid", "aspp_rates")(_all_at_least(1))
    _layers = field_validator("dpt_layers")(_all_at_least(0))

    @model_validator(mode="after")
    def _encoder_fits_model(self) -> ModelConfig:
        family = "dinov2" if self.name == "dpt" else "resnet"
        if not self.encoder.startswith(family):
            raise ValueError(f"model '{self.name}' needs a {family}* encoder, got '{self.encoder}'")
        return self


class OptimConfig(Section):
    name: Literal["sgd", "adamw"] = "sgd"
    base_lr: float = Field(0.001, gt=0)
    reference_batch: int | None = Field(None, ge=1)  # lr = base_lr * global_batch / reference_batch
    head_lr_mult: float = Field(10.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    weight_decay: float = Field(1e-4, ge=0)
    poly_power: float = Field(0.9, ge=0)
    lr_schedule_shift: int = Field(0, ge=0, le=1)  # 1: step i uses lr(i − 1), as the references set lr(i) after step i

    @field_validator("betas")
    @classmethod
    def _betas_ok(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError("each beta must be in [0, 1)")
        return v


class TrainConfig(Section):
    iters: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)  # one epoch = one pass over the (unlabeled or train) list
    eval_every: int = Field(0, ge=0)  # 0: only at the end
    log_every: int = Field(10, ge=1)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")  # auto | cpu | cuda | cuda:N
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = False
    compile: bool = False  # torch.compile the model (CUDA; first iterations are slow)
    deterministic: bool = False
    on_nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss stops the run, or skips that step
    max_val_images: int | None = Field(None, ge=1)  # cap validation during training (None: all)

    @model_validator(mode="after")
    def _one_length(self) -> TrainConfig:
        if (self.iters is None) == (self.epochs is None):
            raise ValueError("set exactly one of train.iters and train.epochs")
        return self


class EvalConfig(Section):
    mode: Literal["whole", "center_crop", "sliding_window"] = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    scales: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    flip: bool = False
    miou_over: Literal["all", "present"] = "all"  # classes with empty union: count 0, or skip

    _crop = field_validator("crop_size", "stride", mode="before")(
        lambda v: None if v is None else _pair(v)
    )

    @field_validator("scales")
    @classmethod
    def _scales_ok(cls, v: list[float]) -> list[float]:
        if min(v) <= 0:
            raise ValueError("scales must be > 0")
        return v

    @model_validator(mode="after")
    def _crop_for_crop_modes(self) -> EvalConfig:
        if self.mode != "whole" and self.crop_size is None:
            raise ValueError(f"eval.mode {self.mode} needs eval.crop_size")
        return self


class Config(Section):
    seed: int = Field(0, ge=0)
    out: str = "runs/default"  # load_config: runs/<config file stem> when neither the file nor --out sets it
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(iters=1000))
    eval: EvalConfig = Field(default_factory=EvalConfig)
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "supervised"})  # name + the method's keys

    @field_validator("method")
    @classmethod
    def _method_named(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(v.get("name"), str):  # pydantic turns a ValueError, not a TypeError, into its error
            raise ValueError("needs a name, e.g. method: {name: supervised} (README, Methods)")  # noqa: TRY004
        return v


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The section class of a field typed ``Section`` or ``Section | None``, else None."""
    options = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    sections = [o for o in options if isinstance(o, type) and issubclass(o, BaseModel)]
    return sections[0] if len(sections) == 1 else None


def schema_keys(schema: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of a schema, nested sections included (``data.root``, ``method.weights.pce``)."""
    keys = []
    for name, field in schema.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        keys.append(key)
        section = _section_type(field.annotation)
        if section is not None:
            keys += schema_keys(section, key)
    return keys


def format_errors(
    err: ValidationError, prefix: str = "", schema: type[BaseModel] | None = None,
    origin: Callable[[str], str] | None = None,
) -> str:
    """One clause per error naming the key; unknown keys get the nearest key of ``schema`` as a hint and
    ``origin(key)`` (e.g. the file, or ``--set``) says where the key was set."""
    candidates = schema_keys(schema, prefix) if schema else []
    candidates += [f"{prefix}.name"] if prefix == "method" else []
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        key = f"{prefix}.{key}" if prefix and key else (prefix or key)
        if e["type"] == "extra_forbidden":
            siblings = [c for c in candidates if c.rpartition(".")[0] == key.rpartition(".")[0]]
            close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6) or difflib.get_close_matches(
                key, candidates, n=1, cutoff=0.6)
            text = f"unknown config key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
        else:
            message = e["msg"].removeprefix("Value error, ")
            got = "" if isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})"
            text = f"config key '{key}': {message}{got}"
        where = origin(key) if origin else ""
        lines.append(f"{where}: {text}" if where else text)
    return "; ".join(lines)


_NULL_WORDS = {"null", "Null", "NULL", "~"}


MethodSchema = Callable[[str], "type[BaseModel] | None"]  # method name -> its Config (None: unknown)
MethodValidator = Callable[[dict[str, Any], "Callable[[str], str] | None"], BaseModel]  # (section, origin)


def _field_annotation(parts: list[str], method_name: str, method_schema: MethodSchema | None) -> Any:
    """The type annotation of a dotted key in the schema (``method.*``: the named method's), None if unknown."""
    schema: type[BaseModel] | None = Config
    if parts[0] == "method" and len(parts) > 1:
        if parts[1:] == ["name"]:
            return str
        schema = method_schema(method_name) if method_schema else None
        parts = parts[1:]
    annotation = None
    for part in parts:
        field = schema.model_fields.get(part) if schema is not None else None
        if field is None:
            return None
        annotation = field.annotation
        schema = _section_type(annotation)
    return annotation


def _is_text(annotation: Any) -> bool:
    """True for str fields (also Literal strings, optional ones): their --set values are taken verbatim."""
    options = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    options = [o for o in options if o is not type(None)]
    return bool(options) and all(
        o is str or (get_origin(o) is Literal and all(isinstance(a, str) for a in get_args(o))) for o in options
    )


def _parse_value(key: str, text: str, annotation: Any) -> Any:
    """A --set value: verbatim for text fields (YAML only for quoted text and null), YAML for the rest.
    YAML would silently drop a `` #...`` comment or turn ``2024``/``off`` into a number/boolean."""
    if _is_text(annotation) and not text.startswith(("'", '"')):
        nullable = type(None) in get_args(annotation)
        return None if nullable and text in _NULL_WORDS else text
    if text == "":
        return ""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: not a valid YAML value: {' '.join(str(err).split())}") from None
    if node is not None and node.end_mark.index < len(text.rstrip()):
        raise ConfigError(f"--set {key}: the value '{text}' would be cut at '{text[node.end_mark.index:].strip()}' "
                          "(YAML comment); quote it")
    if isinstance(value, dict) and None in value.values() and re.search(r"\d:\d", text):
        spaced = re.sub(r":(?=\S)", ": ", text)
        raise ConfigError(f"--set {key}={text}: write a space after each ':' ({key}={spaced!r}); without it YAML "
                          "reads '255:1' as one number in base 60 (15301) and the key gets no value")
    return value


def _override_method(raw: dict[str, Any], overrides: list[str]) -> str:
    """The method name after overrides (the last ``method.name=`` wins)."""
    name = raw.get("method", {}).get("name", "supervised") if isinstance(raw.get("method"), dict) else "supervised"
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "method.name":
            name = value.strip()
    return name


def override_keys(overrides: list[str]) -> list[str]:
    """The dotted keys ``key=value`` overrides set."""
    return [item.split("=", 1)[0].strip() for item in overrides]


def apply_overrides(raw: dict[str, Any], overrides: list[str], method_schema: MethodSchema | None = None
                    ) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (``--set``) to a nested dict, each value converted for its field's type
    (``method.*`` keys typed by ``method_schema``, else parsed as YAML)."""
    method_name = _override_method(raw, overrides)
    if "method" not in raw and any(k.startswith("method.") for k in override_keys(overrides)):
        raw["method"] = {"name": method_name}  # the default method's section, as without overrides
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
            node = child
        node[parts[-1]] = _parse_value(key.strip(), value, _field_annotation(parts, method_name, method_schema))
    return raw


def config_from_dict(raw: dict[str, Any], origin: Callable[[str], str] | None = None,
                     method_config: MethodValidator | None = None) -> Config:
    """Validate a nested dict; ``origin(key)`` names where a bad key was set (a file, ``--set``);
    ``method_config(section, origin)`` validates the method section too (before any data is read)."""
    try:
        cfg = Config(**raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, schema=Config, origin=origin)) from None
    if method_config is not None:
        method_config(cfg.method, origin)
    return cfg


def override_origin(overrides: list[str], otherwise: str = "") -> Callable[[str], str]:
    """``origin`` for config_from_dict: ``--set`` for keys at, above or below an overridden key."""
    keys = override_keys(overrides)

    def origin(key: str) -> str:
        touched = any(k == key or k.startswith(f"{key}.") or key.startswith(f"{k}.") for k in keys)
        return "--set" if touched else otherwise

    return origin


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                method_config: MethodValidator | None = None, method_schema: MethodSchema | None = None) -> Config:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides (see
    ``config_from_dict`` and ``apply_overrides`` for the method arguments; ``sparseg.build.load_config`` passes
    them). Without an ``out`` in the file or the overrides, a file's runs go to ``runs/<file stem>``."""
    raw: dict[str, Any] = {}
    overrides = list(overrides or [])
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path} is a folder; give a YAML config file, e.g. configs/folder/supervised.yaml")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{_yaml_position(path, err)}: not valid YAML: {_yaml_problem(err)}") from None
        if raw is None:
            raise ConfigError(f"{path}: the config file is empty (configs/folder/supervised.yaml is a starting point)")
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    raw = apply_overrides(raw, overrides, method_schema)
    if path is not None and "out" not in raw:
        raw["out"] = f"runs/{path.stem}"
    return config_from_dict(raw, override_origin(overrides, str(path) if path is not None else ""), method_config)


def _yaml_position(path: Path, err: yaml.YAMLError) -> str:
    """``path:line:column`` of a YAML error (1-based), or the path alone."""
    mark = getattr(err, "problem_mark", None)
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error's own words in one line, without PyYAML's quoted source lines."""
    parts = [getattr(err, "context", None), getattr(err, "problem", None)]
    return ": ".join(" ".join(p.split()) for p in parts if p) or " ".join(str(err).split())


def dump_config(cfg: Config) -> dict[str, Any]:
    """Plain, YAML-safe dict of the resolved config (stored in checkpoints and run dirs)."""
    return cfg.model_dump(mode="json")


# keys that a resumed run may change without --allow-config-change: they change neither the model nor its training
RESUME_FREE_KEYS = ("out", "train.eval_every", "train.log_every", "train.max_val_images", "train.device",
                    "data.workers")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of nested sections; a mapping value whose keys are not names (data.mask_mapping) stays whole."""
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        if isinstance(value, dict) and value and all(str(k).isidentifier() for k in value):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def config_changes(old: Config, new: Config, method_config: MethodValidator) -> dict[str, tuple[Any, Any]]:
    """``key: (old value, new value)`` for every dotted key that differs (method keys with their defaults, from
    ``method_config``)."""
    def resolved(cfg: Config) -> dict[str, Any]:
        method = {"name": cfg.method["name"], **method_config(cfg.method, None).model_dump(mode="json")}
        return _flatten({**dump_config(cfg), "method": method})

    a, b = resolved(old), resolved(new)
    return {key: (a.get(key), b.get(key)) for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)}
