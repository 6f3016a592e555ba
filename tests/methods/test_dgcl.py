"""dgcl (dgcl.md §4): the §9 checklist on tiny tensors, world-size independence (gloo), trainer + resume."""

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sparseg.config import ConfigError, ModelConfig, config_from_dict
from sparseg.labels import IGNORE
from sparseg.methods import create_method, method_config
from sparseg.methods.base import MethodContext, Step, step_generator
from sparseg.methods.dgcl import (
    DGCLConfig,
    MemoryBank,
    class_contrast,
    density_weights,
    info_nce,
    multiscale_density,
    select_per_class,
    top_values,
)
from sparseg.models import create_model

K = 4
FTS_DIM, REP_DIM = 16, 8
SMALL = {  # memory and sampling sizes for tiny tensors
    "density_ks": (2, 4, 8), "memory_size": 64, "memory_update_cap": 16, "density_min_memory": 8, "min_memory": 8,
    "memory_positives": 4, "batch_positives": 4, "num_anchors": 5, "num_negatives": 6, "warmup_until_full": False,
    "contrast_group_size": 2, "filter_group_size": 2,
}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def naive_density(features, memory, ks):
    """Reference: full similarity matrix, one top-k per scale."""
    s = F.normalize(features.double(), dim=1) @ F.normalize(memory.double(), dim=1).T
    return torch.stack([s.topk(k, dim=1).values.mean(1) for k in ks]).mean(0)


def make_dgcl(world_size=1, rank=0, **options):
    torch.manual_seed(0)
    model_cfg = ModelConfig(encoder="resnet18", stem="plain", width=8, decoder_channels=FTS_DIM, proj_dim=REP_DIM)
    cfg = DGCLConfig(**{**SMALL, **options})
    context = MethodContext(num_classes=K, seed=0, world_size=world_size, rank=rank)
    return create_method("dgcl", create_model(model_cfg, K), cfg, context)


def fill_memory(method, n=20, seed=0):
    g = gen(seed)
    for c in range(K):
        method.memory.push(c, torch.randn(n, FTS_DIM, generator=g), torch.randn(n, REP_DIM, generator=g),
                           torch.rand(n, generator=g))


# ---------------------------------------------------------------- §9.1-3 density


def test_density_orders_tight_cluster_above_outliers():
    g = gen()
    u = F.normalize(torch.randn(32, generator=g), dim=0)
    cluster = u + 0.01 * torch.randn(64, 32, generator=g)
    outliers = torch.randn(64, 32, generator=g)
    memory = torch.cat([cluster, outliers])
    outlier_query = torch.randn(1, 32, generator=g)
    d = multiscale_density(torch.stack([u, outlier_query[0]]), memory)
    assert d[0] > d[1]
    exact = torch.cat([u.expand(32, -1), outliers])  # 32 entries equal to u
    assert multiscale_density(u[None], exact)[0] == pytest.approx(1.0, abs=1e-6)


def test_density_is_scale_invariant_and_bounded():
    g = gen(1)
    features, memory = torch.randn(50, 16, generator=g), torch.randn(200, 16, generator=g)
    d = multiscale_density(features, memory)
    scaled = multiscale_density(features * torch.rand(50, 1, generator=g) * 10, memory * 3.0)
    assert torch.allclose(d, scaled, atol=1e-6)
    assert d.min() >= -1 and d.max() <= 1
    v = memory[:1]
    opposite = multiscale_density(-v, v + 1e-3 * torch.randn(40, 16, generator=g))  # all neighbours opposite
    assert -1 <= opposite.item() < -0.99


def test_weights_and_single_topk_match_three_topks():
    assert torch.allclose(density_weights((8, 16, 32)), torch.tensor([7 / 96] * 8 + [3 / 96] * 8 + [1 / 96] * 16))
    assert density_weights((8, 16, 32)).sum() == pytest.approx(1.0)
    g = gen(2)
    features, memory = torch.randn(300, 24, generator=g), torch.randn(1234, 24, generator=g)
    expected = naive_density(features, memory, (8, 16, 32)).float()
    assert torch.allclose(multiscale_density(features, memory), expected, atol=1e-6)
    chunked = multiscale_density(features, memory, chunk_mb=0.05)  # 10 rows per chunk
    assert torch.allclose(chunked, multiscale_density(features, memory, chunk_mb=1e3), atol=1e-6)
    assert torch.allclose(multiscale_density(features, memory, (3, 5)), naive_density(features, memory, (3, 5)).float(),
                          atol=1e-6)


@pytest.mark.parametrize("n", [40, 1000, 1237, 4096])
def test_block_topk_is_exact_with_ties_and_tails(n):
    g = gen(n)
    s = torch.randn(64, n, generator=g)
    s[:8] = torch.randint(0, 5, (8, n), generator=g).float()  # heavy ties
    s[8, :] = float("-inf")
    s[8, 7] = 1.0
    s[8, :40] = torch.arange(40.0)  # enough finite values in row 8 for k = 32
    assert torch.equal(top_values(s, 32), s.topk(32, dim=1).values)


def test_exclude_self_and_large_sizes():
    g = gen(3)
    memory = torch.randn(100, 8, generator=g)
    with_self = multiscale_density(memory, memory, (4,))
    without = multiscale_density(memory, memory, (4,), exclude_self=True)
    s = F.normalize(memory, dim=1) @ F.normalize(memory, dim=1).T
    s.fill_diagonal_(float("-inf"))
    assert torch.allclose(without, s.topk(4, dim=1).values.mean(1), atol=1e-6)
    assert (with_self > without).all()
    # M, N >= 10,000 in bounded chunks (8 MiB of similarities at a time)
    features, big = torch.randn(10_000, 4, generator=g), torch.randn(10_000, 4, generator=g)
    d = multiscale_density(features, big, chunk_mb=8)
    assert d.shape == (10_000,) and torch.isfinite(d).all()
    assert torch.allclose(d[:50], naive_density(features[:50], big, (8, 16, 32)).float(), atol=1e-6)
    with pytest.raises(ValueError, match="at least 32"):
        multiscale_density(features[:2], big[:31])


# ---------------------------------------------------------------- §9.4-7 anchors, prototype, InfoNCE, gradients


def contrast_case(n_pixels=30, seed=4):
    g = gen(seed)
    fts = torch.randn(n_pixels, FTS_DIM, generator=g, requires_grad=True)
    rep = torch.randn(n_pixels, REP_DIM, generator=g, requires_grad=True)
    labels = torch.randint(0, 3, (n_pixels,), generator=g)
    labels[:3] = IGNORE
    memory = (torch.randn(40, FTS_DIM, generator=g), torch.randn(40, REP_DIM, generator=g),
              torch.rand(40, generator=g))
    return fts, rep, labels, memory


def test_anchors_are_the_lowest_density_pixels():
    fts, rep, labels, memory = contrast_case()
    cfg = DGCLConfig(**{**SMALL, "num_anchors": 3})
    result = class_contrast(fts, rep, labels, 1, memory, cfg, gen())
    pixels = (labels == 1).nonzero().squeeze(1)
    density = multiscale_density(fts[pixels], memory[0], cfg.density_ks)
    assert set(result.anchors.tolist()) == set(pixels[density.argsort()[:3]].tolist())
    everything = class_contrast(fts, rep, labels, 1, memory, DGCLConfig(**{**SMALL, "num_anchors": 100}), gen())
    assert sorted(everything.anchors.tolist()) == pixels.tolist()  # n <= N_q: every pixel is an anchor


def test_prototype_is_raw_mean_of_batch_and_memory_positives():
    fts, rep, labels, memory = contrast_case()
    cfg = DGCLConfig(**{**SMALL, "batch_positives": 2, "memory_positives": 3})
    result = class_contrast(fts, rep, labels, 2, memory, cfg, gen())
    pixels = (labels == 2).nonzero().squeeze(1)
    density = multiscale_density(fts[pixels], memory[0], cfg.density_ks)
    batch_top = rep[pixels[density.argsort(descending=True)[:2]]]
    memory_top = memory[1][memory[2].argsort(descending=True)[:3]]  # by stored density
    expected = torch.cat([batch_top, memory_top]).mean(0)
    assert torch.allclose(result.prototype, expected.detach(), atol=1e-6)
    assert not torch.allclose(result.prototype, F.normalize(torch.cat([batch_top, memory_top]), dim=1).mean(0))


def test_info_nce_closed_form():
    a = torch.tensor([[1.0, 0.0, 0.0]])
    p = torch.tensor([0.3, math.sqrt(1 - 0.09), 0.0])
    n = torch.tensor([[0.6, 0.0, 0.8]])
    assert info_nce(a, p, n, 0.5).item() == pytest.approx(1.03749, abs=1e-5)
    n2 = torch.tensor([[0.6, 0.0, 0.8], [-0.2, 0.0, math.sqrt(1 - 0.04)]])
    expected = math.log(1 + math.exp((0.6 - 0.3) / 0.5) + math.exp((-0.2 - 0.3) / 0.5))
    assert info_nce(a * 3, p * 2, n2 * 5, 0.5).item() == pytest.approx(expected, abs=1e-5)  # normalised inside


def test_only_anchor_reps_get_gradients():
    fts, rep, labels, memory = contrast_case()
    memory = tuple(m.requires_grad_() for m in memory)
    result = class_contrast(fts, rep, labels, 1, memory, DGCLConfig(**{**SMALL, "num_anchors": 2}), gen())
    result.loss.backward()
    assert fts.grad is None and all(m.grad is None for m in memory)
    has_grad = rep.grad.abs().sum(1) > 0
    assert set(has_grad.nonzero().squeeze(1).tolist()) == set(result.anchors.tolist())


# ---------------------------------------------------------------- §9.8, §9.11 class loop and gate


def flat_case(method, n_images=4, size=4, seed=5):
    g = gen(seed)
    fts = torch.randn(n_images, FTS_DIM, size, size, generator=g)
    rep = torch.randn(n_images, REP_DIM, size, size, generator=g, requires_grad=True)
    labels = torch.randint(0, K, (n_images, size, size), generator=g)
    labels[:, 0] = IGNORE
    return fts, rep, labels


def test_class_loop_skips_ignore_and_averages_processed_classes():
    method = make_dgcl(contrast_group_size=None, ignore_classes=[0])
    fill_memory(method)
    fts, rep, labels = flat_case(method)
    loss = method.contrast_loss(fts, rep, labels, 2, Step(3, 1, 2, 8))
    generator = step_generator(0, 3, "contrast", 0)  # the method's draws for (seed 0, iteration 3, group 0)
    flat = (fts.permute(0, 2, 3, 1).reshape(-1, FTS_DIM), rep.permute(0, 2, 3, 1).reshape(-1, REP_DIM),
            labels.flatten())
    expected = torch.stack([
        class_contrast(*flat, c, method.memory.entries(c), method.cfg, generator).loss for c in (1, 2, 3)
    ]).mean()
    assert torch.allclose(loss, expected)
    assert int(method.contrast_start) == 3
    only_ignored = torch.where(labels == IGNORE, IGNORE, 0)  # class 0 is ignored, 255 never a class
    zero = method.contrast_loss(fts, rep, only_ignored, 2, Step(4, 2, 2, 8))
    assert zero.item() == 0.0 and zero.requires_grad


def test_gate_until_full_and_per_class():
    full_gate = make_dgcl(warmup_until_full=True, ignore_classes=[])
    fill_memory(full_gate, n=64)
    full_gate.memory.count[2] = 63
    assert full_gate.contrast_classes() == set()
    fts, rep, labels = flat_case(full_gate)
    assert full_gate.contrast_loss(fts, rep, labels, 2, Step(0, 0, 2, 8)).item() == 0.0
    assert int(full_gate.contrast_start) == -1
    full_gate.memory.count[2] = 64
    assert full_gate.contrast_classes() == {0, 1, 2, 3}

    per_class = make_dgcl(warmup_until_full=False, min_memory=10, ignore_classes=[3])
    fill_memory(per_class, n=20)
    per_class.memory.count[1] = 9
    assert per_class.contrast_classes() == {0, 2}
    with pytest.raises(ValueError, match="min_memory"):
        DGCLConfig(min_memory=16)  # below max(density_ks) = 32


# ---------------------------------------------------------------- §9.9-10 memory bank


def test_memory_fifo_newest_first():
    bank = MemoryBank(2, 5, 2, 1)
    for start in (0, 3, 6):
        values = torch.arange(start, start + 3.0)
        bank.push(1, values[:, None].expand(3, 2), values[:, None], values)
    fts, rep, density = bank.entries(1)
    assert rep.squeeze(1).tolist() == [6, 7, 8, 3, 4]  # newest first, oldest gone
    assert int(bank.count[0]) == 0 and torch.equal(fts[:, 0], density)


def test_memory_update_cap_and_pre_insertion_density():
    method = make_dgcl(memory_update_cap=5, density_min_memory=8)
    g = gen(6)
    classes = torch.tensor([1] * 12 + [2] * 3)
    keys = torch.randperm(15, generator=g)
    values = torch.randn(15, FTS_DIM + REP_DIM, generator=g)
    keep = select_per_class(keys, classes, 5)
    assert (classes[keep] == 1).sum() == 5 and (classes[keep] == 2).sum() == 3
    assert keys[keep][:5].tolist() == sorted(keys[classes == 1].tolist())[:5]
    method.update_memory(keys[keep], classes[keep], values[keep])
    assert method.memory.count.tolist() == [0, 5, 3, 0]
    assert (method.memory.entries(1)[2] == 0).all()  # memory held <= density_min_memory entries: density 0
    fill_memory(method, n=20)
    before = method.memory.entries(1)[0].clone()
    method.update_memory(keys[keep], classes[keep], values[keep])
    new_fts = values[keep][classes[keep] == 1, :FTS_DIM]
    expected = multiscale_density(new_fts, before, method.cfg.density_ks)
    assert torch.allclose(method.memory.entries(1)[2][:5], expected)
    assert torch.equal(method.memory.entries(1)[0][:5], new_fts)


def test_refresh_memory_density_recomputes_every_entry_without_itself():
    method = make_dgcl(refresh_memory_density=True, memory_update_cap=5)
    fill_memory(method, n=20)
    g = gen(8)
    method.update_memory(torch.arange(5), torch.full((5,), 1), torch.randn(5, FTS_DIM + REP_DIM, generator=g))
    memory_fts, _, density = method.memory.entries(1)
    assert len(density) == 25
    assert torch.allclose(density, multiscale_density(memory_fts, memory_fts, method.cfg.density_ks, exclude_self=True))


def test_no_leakage_memory_changes_only_after_the_optimizer_step():
    method = make_dgcl(warmup_epochs=0)
    fill_memory(method, n=20)
    batch = {
        "labeled": {"image": torch.rand(2, 3, 32, 32), "mask": torch.randint(0, K, (2, 32, 32)),
                    "valid": torch.ones(2, 32, 32, dtype=torch.bool)},
        "unlabeled": {"image": torch.rand(2, 3, 32, 32), "valid": torch.ones(2, 32, 32, dtype=torch.bool)},
    }
    before = {k: v.clone() for k, v in method.memory.state_dict().items()}
    out = method(batch, Step(0, 0, 2, 8))
    assert out["contrast"] > 0
    assert all(torch.equal(v, before[k]) for k, v in method.memory.state_dict().items())
    method.after_optimizer_step(Step(0, 0, 2, 8))
    assert (method.memory.count > 20).any()


# ---------------------------------------------------------------- §9.13 α schedule, §9.16 resolution


def test_contrast_filter_schedule():
    method = make_dgcl(warmup_epochs=1)
    batch = {
        "labeled": {"image": torch.rand(2, 3, 32, 32), "mask": torch.randint(0, K, (2, 32, 32)),
                    "valid": torch.ones(2, 32, 32, dtype=torch.bool)},
        "unlabeled": {"image": torch.rand(2, 3, 32, 32), "valid": torch.ones(2, 32, 32, dtype=torch.bool)},
    }
    alphas = {}
    for epoch in (1, 19):  # E = 20, e0 = 1
        method(batch, Step(epoch, epoch, 1, 20))
        alphas[epoch] = method.extra_logs()["contrast_drop_percent"]
    assert alphas == {1: 80.0, 19: 10.0}


@pytest.mark.parametrize("size,expected", [(513, 129), (769, 193)])
def test_feature_resolution(size, expected):
    cfg = ModelConfig(encoder="resnet18", stem="deep", width=4, decoder_channels=8, output_stride=16)
    with torch.no_grad():
        out = create_model(cfg, 2).eval()(torch.rand(1, 3, size, size))
    assert out["fts"].shape[-2:] == (expected, expected)


# ---------------------------------------------------------------- §9.12 world-size independence


GROUPS = 2  # one process with 2 contrast groups vs 2 processes with one group each


def world_data():
    g = gen(7)
    n = 2 * GROUPS  # global labeled and unlabeled images
    return {
        "fts": torch.randn(2 * n, FTS_DIM, 4, 4, generator=g).relu(),
        "base_rep": torch.randn(2 * n, REP_DIM, 4, 4, generator=g),
        "labels": torch.randint(0, K, (2 * n, 4, 4), generator=g).masked_fill(
            torch.rand(2 * n, 4, 4, generator=g) < 0.1, IGNORE),
        "weight": torch.randn(REP_DIM, REP_DIM, generator=g),
    }


def world_step(rank, world_size):
    """L_c, its gradient and the updated memory of one process's share of the global batch."""
    data = world_data()
    n = 2 * GROUPS
    # the sampler deals global image q to rank q mod W: local images of each stream are q = r, r + W, ...
    local = torch.cat([torch.arange(rank, n, world_size), n + torch.arange(rank, n, world_size)])
    method = make_dgcl(world_size, rank, max_pixels_per_class=10, memory_update_cap=5, density_min_memory=8)
    fill_memory(method)
    weight = data["weight"].clone().requires_grad_()
    rep = torch.einsum("ij,bjhw->bihw", weight, data["base_rep"][local])
    fts, labels, n_labeled = data["fts"][local], data["labels"][local], n // world_size
    step = Step(5, 1, 4, 20)
    loss = method.contrast_loss(fts, rep, labels, n_labeled, step)
    loss.backward()
    method.update_memory(*method.memory_candidates(fts, rep.detach(), labels, n_labeled, step))
    memory = torch.cat([t.flatten().float() for t in method.memory.state_dict().values()])
    return loss.detach(), weight.grad, memory


def _world_worker(rank, world_size, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        loss, grad, memory = world_step(rank, world_size)
        dist.all_reduce(loss)  # the value DDP users see: the mean over processes
        dist.all_reduce(grad)  # DDP averages gradients
        memories = [torch.empty_like(memory) for _ in range(world_size)]
        dist.all_gather(memories, memory)
        torch.save({"loss": loss / world_size, "grad": grad / world_size, "memories": memories},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_world_size_independence_gloo(tmp_path, monkeypatch):
    single_loss, single_grad, single_memory = world_step(0, 1)
    assert single_loss > 0 and single_grad.abs().sum() > 0
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # children import this module
    mp.spawn(_world_worker, args=(GROUPS, free_port(), str(tmp_path)), nprocs=GROUPS, join=True)
    for rank in range(GROUPS):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(result["loss"], single_loss, atol=1e-5)
        assert torch.allclose(result["grad"], single_grad, atol=1e-5)
        for memory in result["memories"]:  # identical on every process, and equal to one process's
            assert torch.equal(memory, result["memories"][0])
            assert torch.allclose(memory, single_memory, atol=1e-6)


# ---------------------------------------------------------------- config, trainer end to end, exact resume


def test_config_checks():
    with pytest.raises(ConfigError, match="forward_unmixed_u"):
        config_from_dict({"method": {"name": "dgcl", "forward_unmixed_u": False}}, method_config=method_config)
    with pytest.raises(ValueError, match="proj_dim"):
        create_method("dgcl", create_model(ModelConfig(encoder="resnet18", stem="plain", width=8), K), DGCLConfig(),
                      MethodContext(num_classes=K))
    with pytest.raises(ValueError, match="ignore_classes"):
        make_dgcl(ignore_classes=[K])


def test_trainer_end_to_end_and_exact_resume(assert_resume_is_exact):
    method = {"name": "dgcl", "warmup_epochs": 0, "teacher_sync_epochs": 0, "ignore_classes": [], **SMALL}
    trainer = assert_resume_is_exact(method, proj_dim=REP_DIM)
    assert int(trainer.method.contrast_start) == 1  # the memory filled at iteration 0 allows L_c at 1
    assert trainer.method.memory.count.sum() > 0
    assert {"memory_fill", "contrast_start", "contrast_drop_percent", "ema_decay"} <= set(trainer.method.extra_logs())
