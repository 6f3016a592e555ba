"""Reading torch files without running code from them (``torch.load(..., weights_only=True)`` only), and
replacing files atomically."""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

REFUSED = "refused to load: it contains objects other than tensors and plain data"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
LEGACY_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # older torch.save files open with this pickled number


def _torch_file_kind(path: str | Path) -> str | None:
    """None for a file torch.save could have written (from its first bytes), else what it is instead."""
    with open(path, "rb") as file:
        head = file.read(32)
    if head.startswith(ZIP_MAGIC) or LEGACY_MAGIC in head:
        return None
    return "a plain Python pickle" if head.startswith(b"\x80") else "neither a zip archive nor a pickle"


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
    loaded")`` is raised, one line; so is a file that torch.save did not write (random bytes, a plain pickle).
    Other failures (missing, truncated) propagate.
    ``mmap`` maps the tensors instead of reading them (zip-format files only): a cheap look inside a big file.
    """
    kind = _torch_file_kind(path)
    if kind is not None:
        raise error(f"{path}: not a checkpoint: {kind}, not a file written by torch.save; not loaded")
    try:
        with torch.serialization.safe_globals(list(allowed)), warnings.catch_warnings():
            # a crafted pickle's protocol draws torch's 3-line warning before the refusal below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):  # torch's marker for an object it refused
            raise
        raise error(f"{path}: {REFUSED}{f' ({why})' if why else ''}; not loaded") from None


def write_atomic(path: str | Path, data: bytes | Callable[[BinaryIO], None], durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (bytes, or a function writing to the open file): a temporary file in the
    same folder, renamed over it, so readers and crashes see the old or the new file, never a torn one.
    ``durable``: also fsync the file before the rename and the folder after it. The file gets the mode a new
    file gets under the process's umask (a temporary file alone would be 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # POSIX
            os.fchmod(fd, 0o666 & ~_umask())
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


def _umask() -> int:
    """The process's umask, read without changing it where Linux reports it (threads may create files)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask
