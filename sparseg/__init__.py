"""sparseg: label-efficient semantic segmentation (semi-supervised and sparsely annotated) in PyTorch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Loaded on first use: `import sparseg.cli` must not import torch, so that the command line can set up
# OpenMP before torch loads it (sparseg.threads).
_EXPORTS = {
    "Config": "sparseg.config",
    "ConfigError": "sparseg.config",
    "load_config": "sparseg.build",
    "build_dataset": "sparseg.data",
    "create_dataset_spec": "sparseg.data",
    "create_method": "sparseg.methods",
    "list_methods": "sparseg.methods",
    "create_model": "sparseg.models",
    "list_models": "sparseg.models",
}

__all__ = [
    "Config",
    "ConfigError",
    "__version__",
    "build_dataset",
    "create_dataset_spec",
    "create_method",
    "create_model",
    "list_methods",
    "list_models",
    "load_config",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sparseg' has no attribute {name!r}")


if TYPE_CHECKING:
    from sparseg.build import load_config
    from sparseg.config import Config, ConfigError
    from sparseg.data import build_dataset, create_dataset_spec
    from sparseg.methods import create_method, list_methods
    from sparseg.models import create_model, list_models
