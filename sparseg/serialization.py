"""Reading torch files without running code from them: ``torch.load(..., weights_only=True)`` only."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

REFUSED = "refused to load: it contains objects other than tensors and plain data"


def safe_torch_load(
    path: str | Path,
    error: type[Exception],
    why: str = "",
    map_location: str | torch.device = "cpu",
    allowed: Sequence[Callable[..., Any]] = (),
    mmap: bool = False,
) -> Any:
    """``torch.load`` restricted to tensors and plain data (plus the ``allowed`` classes and functions).

    A file holding anything else is not unpickled: ``error("<path>: refused to load: ... (<why>); not
    loaded")`` is raised, one line. Other failures (missing, truncated, not a torch file) propagate.
    ``mmap`` maps the tensors instead of reading them (zip-format files only): a cheap look inside a big file.
    """
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):  # torch's marker for an object it refused
            raise
        raise error(f"{path}: {REFUSED}{f' ({why})' if why else ''}; not loaded") from None
