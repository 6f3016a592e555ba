"""CPU threads for sparseg commands on a machine that other processes may share.

An OpenMP team is as fast as its slowest thread, and by default idle OpenMP threads spin. With two
threads on two cores while another process held one core, the demo ran at 0.8 it/s against 9.1 it/s
with one thread. So ``sparseg`` commands (i) let idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``,
set before torch loads the OpenMP runtime) and (ii) use only the cores that are not busy: the usable
cores minus the 1-minute load average, at least one. ``SPARSEG_THREADS=N`` (or ``OMP_NUM_THREADS=N``)
fixes the count. Results are reproducible per thread count on one machine, not across thread counts or CPU
models (either changes the floating-point sums).
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping

from sparseg.config import ConfigError

THREADS_ENV = "SPARSEG_THREADS"


def prepare_openmp(environ: MutableMapping[str, str] = os.environ) -> None:
    """Idle OpenMP threads sleep instead of spinning, unless the user chose a policy.

    OpenMP reads the variable once, when torch loads it: call this before the first ``import torch``.
    """
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def idle_cores(cores: int, load: float) -> int:
    """Cores left by the other processes: ``cores - load`` rounded, between 1 and ``cores``."""
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def choose_threads(environ: MutableMapping[str, str], cores: int, load: float) -> tuple[int | None, str]:
    """The intra-op thread count and why; ``None`` keeps torch's own choice (from ``OMP_NUM_THREADS``).

    ``SPARSEG_THREADS`` is a positive integer or ``auto`` (the default, :func:`idle_cores`).
    """
    requested = environ.get(THREADS_ENV, "auto").strip().lower()
    if requested != "auto":
        if not requested.isdigit() or int(requested) < 1:
            raise ConfigError(f"{THREADS_ENV}={environ[THREADS_ENV]}: expected a positive integer or 'auto'")
        return int(requested), f"{THREADS_ENV}={requested}"
    if environ.get("OMP_NUM_THREADS"):
        return None, f"OMP_NUM_THREADS={environ['OMP_NUM_THREADS']}"
    return idle_cores(cores, load), f"{cores} usable cores, 1-minute load average {load:.1f}"


def apply_thread_policy(environ: MutableMapping[str, str] = os.environ) -> str:
    """Set torch's intra-op threads by :func:`choose_threads`; return a one-line description."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    threads, reason = choose_threads(environ, usable_cores(), load)
    if threads is not None:
        torch.set_num_threads(threads)
    policy = environ.get("OMP_WAIT_POLICY", "unset")
    return f"{torch.get_num_threads()} CPU thread(s) ({reason}; OMP_WAIT_POLICY {policy})"
