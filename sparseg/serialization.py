"""Reading torch files without running code from them (``torch.load(..., weights_only=True)`` only), and
replacing files atomically."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

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


def write_atomic(path: str | Path, data: bytes | Callable[[BinaryIO], None], durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (bytes, or a function writing to the open file): a temporary file in the
    same folder, renamed over it, so readers and crashes see the old or the new file, never a torn one.
    ``durable``: also fsync the file before the rename and the folder after it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data) if isinstance(data, bytes) else data(file)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
