"""The run folder: one training at a time, and a run that is new, resumed or overwritten, never mixed.

- ``OUT/train.lock`` holds the pid, start time and host of the training that writes the folder; a second
  training is refused while that process lives (a lock left by a dead process on this host is taken over,
  also when its pid now belongs to another process: the start times differ, where the system tells them).
- A folder holding a run's files is continued with ``--resume`` (which needs ``last.pt``) or started over
  with ``--overwrite``, which moves those files into ``OUT/previous-<time>/``; nothing is deleted.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
import weakref
from pathlib import Path

LOCK_NAME = "train.lock"
# everything a run writes into its folder (`sparseg analyze` and the demo's predictions included)
RUN_FILES = ("last.pt", "best.pt", "pretrained.pt", "config.yaml", "config_history.yaml", "metrics.jsonl",
             "train.log", "tb", "curves.png", "predictions", "analysis")
HISTORY_NAME = "config_history.yaml"


class RunDirError(RuntimeError):
    """The run folder is in use, or holds a run that was neither resumed nor overwritten."""


def run_files(out_dir: Path) -> list[str]:
    """The names of ``RUN_FILES`` present in ``out_dir``."""
    return [name for name in RUN_FILES if (out_dir / name).exists()]


def check_run_dir(out_dir: Path, resume: bool, overwrite: bool, locked: bool = False) -> None:
    """Refuse a folder that another training holds (``locked``: this process holds its lock), or that this
    training would mix with another run's files."""
    if resume and overwrite:
        raise RunDirError("--resume continues OUT/last.pt and --overwrite starts over: pass one of them")
    _, owner = (None, None) if locked else _read_lock(out_dir / LOCK_NAME)
    if owner is not None and _owner_alive(owner):
        raise RunDirError(_in_use(out_dir / LOCK_NAME, owner, "training"))
    found = run_files(out_dir)
    last = out_dir / "last.pt"
    if resume and not last.is_file():
        held = f" ({out_dir} holds {', '.join(found)}; --overwrite starts over)" if found else ""
        raise RunDirError(f"nothing to resume: {last} does not exist{held}")
    if found and not resume and not overwrite:
        if "last.pt" in found:
            raise RunDirError(f"{last} exists: pass --resume to continue that run or --overwrite to start over "
                              f"(its files are moved into {out_dir}/previous-<time>/)")
        raise RunDirError(f"{out_dir} holds another run's {', '.join(found)} but no last.pt: pass --overwrite to "
                          f"move them into {out_dir}/previous-<time>/ and start over, or choose another --out")


def move_aside(out_dir: Path) -> Path | None:
    """Move the run files in ``out_dir`` into a new ``out_dir/previous-<time>/``; return it (None: nothing)."""
    found = run_files(out_dir)
    if not found:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("", *(f"-{n}" for n in range(1, 100))):
        target = out_dir / f"previous-{stamp}{suffix}"
        try:
            target.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise RunDirError(f"{out_dir}: cannot find a free previous-{stamp}-N folder name")
    for name in found:
        os.replace(out_dir / name, target / name)
    return target


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc``); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()[19]  # field 22, counted after the parenthesised command name


def _owner_alive(owner: dict) -> bool:
    """Whether the process named in a lock may still run (only a pid on this host can be checked)."""
    if owner.get("host") != socket.gethostname() or sys.platform == "win32":  # os.kill(pid, 0) kills on Windows
        return True
    pid = int(owner["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    recorded, current = owner.get("pid_start"), _process_start(pid)
    return recorded is None or current is None or recorded == current  # else the pid was reused


def _read_lock(path: Path) -> tuple[str, dict | None]:
    """A lock file's text and the owner it names (None when unreadable)."""
    try:
        text = path.read_text()
        owner = json.loads(text)
    except (OSError, ValueError):
        return "", None
    return text, owner if isinstance(owner, dict) and "pid" in owner else None


def _in_use(lock: Path, owner: dict | None, holder: str) -> str:
    """The refusal of a folder held by the ``holder`` (e.g. "training") that ``owner`` (the content of the lock
    file ``lock``) names."""
    held = (f"pid {owner['pid']} on {owner.get('host', '?')} since {owner.get('started', '?')}"
            if owner else "an unreadable lock file")
    return (f"{lock.parent} is in use by another {holder} ({held}); wait for it or choose another --out "
            f"(delete {lock} if no {holder} runs there)")


def _remove_if_ours(path: Path, content: str) -> None:
    """Delete the lock file if it still holds ``content`` (never another process's newer lock)."""
    try:
        if path.read_text() == content:
            path.unlink()
    except OSError:
        pass  # already gone or the folder was removed: nothing is held


class RunLock:
    """An exclusive claim on a folder (``OUT/<name>``, by default training's ``train.lock``; ``holder`` names
    the kind of process in the refusal), released by ``release()``, at garbage collection or at interpreter
    exit; a process killed outright leaves a stale lock that the next claimant on the same host takes over."""

    def __init__(self, out_dir: Path, name: str = LOCK_NAME, holder: str = "training") -> None:
        self.out_dir, self.holder = out_dir, holder
        self.path = out_dir / name
        self._release: weakref.finalize | None = None

    def acquire(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        content = json.dumps({"pid": os.getpid(), "pid_start": _process_start(os.getpid()), "host": socket.gethostname(),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "token": os.urandom(8).hex()})
        for attempt in range(2):
            if self._create(content):
                self._release = weakref.finalize(self, _remove_if_ours, self.path, content)
                return
            text, owner = _read_lock(self.path)
            stale = owner is not None and not _owner_alive(owner)
            if attempt == 0 and (stale or not self.path.exists()):  # its process is gone, or it was just released
                if stale:
                    _remove_if_ours(self.path, text)
                continue
            break
        raise RunDirError(_in_use(self.path, owner, self.holder))

    def _create(self, content: str) -> bool:
        """Create the lock file complete and atomically (link of a written temporary file); False if held."""
        fd, tmp = tempfile.mkstemp(dir=self.out_dir, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(content)
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def release(self) -> None:
        if self._release is not None:
            self._release()


def claim_run_dir(out_dir: Path, resume: bool, overwrite: bool) -> tuple[RunLock, Path | None]:
    """Lock ``out_dir``, check it again under the lock and, with ``overwrite``, move the old run aside.

    Returns the lock (release it when the training ends) and where the old run went (None: nowhere).
    """
    lock = RunLock(out_dir)
    lock.acquire()
    try:
        check_run_dir(out_dir, resume, overwrite, locked=True)
        return lock, move_aside(out_dir) if overwrite else None
    except BaseException:
        lock.release()
        raise


def record_config_changes(out_dir: Path, iteration: int, changes: dict[str, tuple]) -> Path:
    """Append the config changes a resumed run accepted to ``OUT/config_history.yaml`` (a YAML list, one entry
    per resume: time, iteration, key: {old, new}); return the file."""
    import yaml

    entry = {"resumed": time.strftime("%Y-%m-%d %H:%M:%S"), "iteration": iteration,
             "changes": {key: {"old": old, "new": new} for key, (old, new) in changes.items()}}
    path = out_dir / HISTORY_NAME
    with open(path, "a", encoding="utf-8") as file:
        file.write(yaml.safe_dump([entry], sort_keys=False))
    return path
