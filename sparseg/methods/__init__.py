"""Training methods: one file per method, each registered by name, all listed in ``METHOD_MODULES``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from sparseg.config import Config, ConfigError, format_errors
from sparseg.registry import Registry

if TYPE_CHECKING:
    import torch

    from sparseg.methods.base import Method, MethodConfig

METHODS: Registry = Registry("method")
register_method = METHODS.register

# every module that registers a method; a new method is one new file and one line here. Imported on the first
# lookup, not with this package: plug-ins import `methods.base`, and the consistency methods import plug-ins.
METHOD_MODULES = (
    "sparseg.methods.supervised",
    "sparseg.methods.partial_ce",
    "sparseg.methods.agmm",
    "sparseg.methods.selftrain",
    "sparseg.methods.dgcl",
    "sparseg.methods.fixmatch",
    "sparseg.methods.unimatch",
    "sparseg.methods.unimatch_v2",
    "sparseg.pretrain.ddep",  # self-supervised pretraining (docs/methods/pretrain.md)
    "sparseg.pretrain.mim",
)


def _import_methods() -> None:
    for module in METHOD_MODULES:
        importlib.import_module(module)


def method_class(name: str) -> type[Method]:
    _import_methods()
    return METHODS.get(name)


def list_methods() -> list[str]:
    _import_methods()
    return METHODS.names()


def validate_method_section(cls: type[Method], section: dict[str, Any], origin=None) -> MethodConfig:
    """The ``method`` section (``name`` and the method's keys) validated by ``cls.Config``; ``origin(key)``
    names where a bad key was set (see ``sparseg.config.config_from_dict``)."""
    options = {key: value for key, value in section.items() if key != "name"}
    try:
        return cls.Config(**options)
    except ValidationError as err:
        raise ConfigError(format_errors(err, prefix="method", schema=cls.Config, origin=origin)) from None


def method_config(section: dict[str, Any], origin=None) -> MethodConfig:
    """The ``method`` section validated by the ``Config`` of the method it names (a ``MethodValidator``)."""
    return validate_method_section(method_class(section["name"]), section, origin)


def method_schema(name: str):
    """The ``Config`` class of method ``name``, None for an unknown name (for typing ``--set method.*``)."""
    _import_methods()
    return METHODS.get(name).Config if name in METHODS else None


def create_method(name: str, model, cfg, context):
    """Build method ``name`` around ``model`` with its validated config section."""
    return method_class(name)(model, cfg, context)


def build_method(cfg: Config, cls: type[Method], method_cfg: MethodConfig, num_classes: int, world_size: int = 1,
                 rank: int = 0, class_prior: torch.Tensor | None = None) -> Method:
    """The model of ``cfg`` inside method ``cls`` with its validated section ``method_cfg`` (no weights loaded
    besides ``model.pretrained``); ``build_method(*sparseg.build.resolve(cfg), num_classes)``."""
    from sparseg.methods.base import MethodContext
    from sparseg.models import create_model

    model = create_model(cfg.model, num_classes)
    context = MethodContext(num_classes=num_classes, seed=cfg.seed, world_size=world_size, rank=rank,
                            class_prior=class_prior)
    return cls(model, method_cfg, context)


__all__ = ["METHODS", "METHOD_MODULES", "build_method", "create_method", "list_methods", "method_class",
           "method_config", "method_schema", "register_method", "validate_method_section"]
