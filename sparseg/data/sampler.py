"""Seeded, resumable, shardable index stream yielding ``(index, sample_seed)`` pairs."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

_PERMUTATION, _SAMPLE = 0, 1  # seed-sequence tags keeping the two kinds of draws apart


class StreamSampler(Sampler):
    """One epoch = a global sequence of ``length`` indices (default ``num_items``).

    The sequence concatenates seeded permutations of ``range(num_items)``, so a short labeled list
    is repeated to the unlabeled length. Rank r takes positions r, r+W, ... of the sequence
    truncated to a multiple of W. Each position's ``sample_seed`` depends only on (seed, epoch,
    position): an item's augmentation is the same for any number of workers or processes.
    """

    def __init__(
        self,
        num_items: int,
        length: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        length = num_items if length is None else length
        if num_items < 1:
            raise ValueError("StreamSampler needs at least one item")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if length < world_size:
            raise ValueError(f"epoch length {length} is shorter than the world size {world_size}")
        self.num_items = num_items
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    @property
    def epoch_size(self) -> int:
        """Items this rank yields in a whole epoch."""
        return self.length // self.world_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch; skip the first ``start`` items of this rank (exact resume)."""
        if not 0 <= start <= self.epoch_size:
            raise ValueError(f"start {start} is not in 0..{self.epoch_size}")
        self.epoch = epoch
        self.start = start

    def global_sequence(self) -> np.ndarray:
        """The current epoch's indices for all ranks, before sharding."""
        repeats = -(-self.length // self.num_items)
        chunks = [
            np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, _PERMUTATION, k])).permutation(
                self.num_items
            )
            if self.shuffle
            else np.arange(self.num_items)
            for k in range(repeats)
        ]
        return np.concatenate(chunks)[: self.length]

    def sample_seed(self, position: int) -> int:
        """Augmentation seed of a global position in the current epoch."""
        sequence = np.random.SeedSequence([self.seed, self.epoch, _SAMPLE, position])
        return int(sequence.generate_state(1, dtype=np.uint64)[0])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        sequence = self.global_sequence()
        first = self.rank + self.start * self.world_size
        for position in range(first, self.epoch_size * self.world_size, self.world_size):
            yield int(sequence[position]), self.sample_seed(position)

    def __len__(self) -> int:
        return self.epoch_size - self.start


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """This rank's share of ``range(n)`` without padding: every index exactly once across ranks."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    return list(range(rank, n, world_size))
