"""StreamSampler: determinism, repetition, sharding, exact resume; shard_indices."""

from collections import Counter

import pytest

from sparseg.data import StreamSampler, shard_indices


def items(sampler: StreamSampler, epoch: int = 0, start: int = 0) -> list[tuple[int, int]]:
    sampler.set_epoch(epoch, start=start)
    return list(sampler)


def test_deterministic_per_seed_and_epoch():
    a = items(StreamSampler(10, seed=1))
    assert a == items(StreamSampler(10, seed=1))
    assert a != items(StreamSampler(10, seed=2))
    assert a != items(StreamSampler(10, seed=1), epoch=1)
    assert sorted(i for i, _ in a) == list(range(10))
    assert len({s for _, s in a}) == 10


def test_short_list_is_repeated_to_length():
    sampler = StreamSampler(3, length=10, seed=0)
    indices = [i for i, _ in items(sampler)]
    assert len(sampler) == len(indices) == 10
    for start in (0, 3, 6):  # each pass is a permutation
        assert sorted(indices[start : start + 3]) == [0, 1, 2]
    assert set(Counter(indices).values()) <= {3, 4}


def test_no_shuffle_keeps_list_order():
    assert [i for i, _ in items(StreamSampler(3, length=7, shuffle=False))] == [0, 1, 2, 0, 1, 2, 0]


def test_rank_shards_are_disjoint_and_cover_the_global_sequence():
    whole = items(StreamSampler(5, length=11, seed=3))
    world = 3
    shards = [items(StreamSampler(5, length=11, seed=3, rank=r, world_size=world)) for r in range(world)]
    assert all(len(s) == 11 // world for s in shards)
    for r, shard in enumerate(shards):  # same indices and sample seeds as the single-process positions
        assert shard == whole[r : 9 : world]
    positions = sorted(p for r in range(world) for p in range(r, 9, world))
    assert positions == list(range(9))


def test_resume_equals_skipping():
    sampler = StreamSampler(7, length=20, seed=5, rank=1, world_size=2)
    full = items(sampler, epoch=2)
    resumed = items(sampler, epoch=2, start=4)
    assert resumed == full[4:] and len(sampler) == len(full) - 4 == sampler.epoch_size - 4
    with pytest.raises(ValueError):
        sampler.set_epoch(0, start=11)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        StreamSampler(0)
    with pytest.raises(ValueError):
        StreamSampler(5, rank=2, world_size=2)
    with pytest.raises(ValueError):
        StreamSampler(1, length=1, world_size=2)


@pytest.mark.parametrize(("n", "world"), [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_shard_indices_cover_each_index_once(n: int, world: int):
    shards = [shard_indices(n, r, world) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
