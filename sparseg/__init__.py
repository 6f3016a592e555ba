"""sparseg: label-efficient semantic segmentation (semi-supervised and sparsely annotated) in PyTorch."""

from sparseg.config import Config, ConfigError, load_config
from sparseg.data import build_dataset, create_dataset_spec
from sparseg.methods import create_method, list_methods
from sparseg.models import create_model, list_models

__version__ = "0.1.0"

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
