"""Process-group handling for torchrun. No rank arguments: everything comes from the environment."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from sparseg.config import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: bool = False  # a process group exists (a torchrun launch, even of one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """DDP, SyncBatchNorm (CUDA) and the cross-process checks are on: every torchrun launch."""
        return self.group


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK), with any number of
    processes (so `torchrun --nproc_per_node=1` runs NCCL, DDP and SyncBatchNorm on one GPU); a process
    not started by torchrun never creates one. NCCL on CUDA, gloo on CPU or when NCCL is missing."""
    if "RANK" not in os.environ:
        return DistInfo()
    world_size = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, group=True)


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """The torch device for ``train.device`` (auto | cpu | cuda | cuda:N); ConfigError when it is not there."""
    requested = name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{info.local_rank}"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={requested} but no CUDA GPU is available; use train.device=cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device={requested} but only {torch.cuda.device_count()} GPU(s) are visible")
        torch.cuda.set_device(device)
    return device


def wrap_ddp(module: torch.nn.Module, device: torch.device, find_unused_parameters: bool) -> DistributedDataParallel:
    """``module`` in DDP with ``broadcast_buffers=False`` (buffers such as BatchNorm statistics are not copied
    from rank 0, neither at the start nor before each forward). Its deprecation warning (torch 2.13) is
    silenced: the replacement ``forward_sync_buffers=False`` still copies them once at the start, a different
    behaviour, and torch 2.6 does not have it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
        return DistributedDataParallel(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
            find_unused_parameters=find_unused_parameters,
        )


def share_from_main(value: object, info: DistInfo) -> object:
    """``value`` as the main process holds it, on every process of a torchrun launch (else ``value``)."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown_distributed() -> None:
    """Destroy the process group ``init_distributed`` joined (nothing without one)."""
    if dist.is_initialized():
        dist.destroy_process_group()
