"""Training methods: one file per method, each registered by name."""

from __future__ import annotations

import importlib
import pkgutil

from sparseg.registry import Registry

METHODS: Registry = Registry("method")
register_method = METHODS.register

_SHARED_MODULES = {"base", "losses"}  # helpers, not methods
# packages whose every module registers methods too: self-supervised pretraining (docs/methods/pretrain.md)
_METHOD_PACKAGES = (__name__, "sparseg.pretrain")


def _import_all() -> None:
    """Import every method file, so a new method is one new file in one of ``_METHOD_PACKAGES``."""
    for package in _METHOD_PACKAGES:
        path = importlib.import_module(package).__path__
        for info in pkgutil.iter_modules(path):
            if info.name not in _SHARED_MODULES and not info.name.startswith("_"):
                importlib.import_module(f"{package}.{info.name}")


def method_class(name: str):
    _import_all()
    return METHODS.get(name)


def list_methods() -> list[str]:
    _import_all()
    return METHODS.names()


def create_method(name: str, model, cfg, context):
    """Build method ``name`` around ``model`` with its validated config section."""
    return method_class(name)(model, cfg, context)


__all__ = ["METHODS", "create_method", "list_methods", "method_class", "register_method"]
