"""Checkpoints: written atomically, refused clearly when unreadable."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparseg.config import Config, MethodValidator, config_from_dict
from sparseg.serialization import safe_torch_load, write_atomic

FORMAT_VERSION = 2  # 2: tensors and plain data only (1 also held numpy's RNG state as an array)
# format 1 files load with numpy's uint32 array reconstruction allowed, and nothing else. numpy 1 pickles
# name it numpy.core.multiarray._reconstruct, numpy 2 numpy._core...: both names are allowed (torch >= 2.6
# matches a global by the name given with it), so a file outlives a numpy upgrade or downgrade.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_FORMAT_1_GLOBALS = (
    *((_RECONSTRUCT, f"{module}.multiarray._reconstruct") for module in ("numpy.core", "numpy._core")),
    np.ndarray, np.dtype, type(np.dtype(np.uint32)),
)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the run."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``.

    A crash at any point leaves either the old checkpoint or the new one, never half of one; a failed write
    (a full disk: torch reports it as a RuntimeError) is a CheckpointError naming the file and the free space.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, lambda file: torch.save({"format_version": FORMAT_VERSION, **state}, file))
    except (OSError, RuntimeError) as err:
        free = shutil.disk_usage(path.parent).free / 2**20
        reason = re.sub(r"^\[enforce fail at [^]]*\][ .]*", "", " ".join(str(err).split()))
        raise CheckpointError(f"cannot write the checkpoint {path} ({free:.0f} MiB free on its disk; "
                              f"{reason}); the previous one, if any, is unchanged") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a sparseg checkpoint, refusing missing, truncated or foreign files and, without unpickling
    them, files holding anything but tensors and plain data (``torch.load(..., weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = safe_torch_load(path, CheckpointError, "a sparseg checkpoint never does", map_location,
                                allowed=_FORMAT_1_GLOBALS)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 -- truncated zip, not a torch file, ...: all one refusal
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated and was not loaded ({err})") from None
    if not isinstance(state, dict) or "format_version" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a sparseg checkpoint (no format_version/config)")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer sparseg (format {state['format_version']})")
    return state


def stored_config(state: dict[str, Any], path: str | Path, method_config: MethodValidator | None = None) -> Config:
    """The config a checkpoint's run was trained with; a stored key that no longer validates (renamed or
    retired since) is named as coming from the checkpoint ``path``."""
    return config_from_dict(state["config"], lambda key: f"{path} (the config stored in the checkpoint)",
                            method_config)


def load_module_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``module.load_state_dict(state)``, refusing a state of another architecture in one line that names
    the first differing tensor and the number of differences (not PyTorch's page of key mismatches)."""
    own = module.state_dict()
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if shapes or missing or unexpected:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} tensor(s) of another shape, first {k}: {list(state[k].shape)} in the file, "
                         f"{list(own[k].shape)} in the model")
        if missing:
            parts.append(f"{len(missing)} missing, first {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, first {unexpected[0]}")
        raise CheckpointError(f"{source} does not fit this model ({'; '.join(parts)}): "
                              "was it written with other model.* or method settings or another class count?")
    module.load_state_dict(state)
