"""What every method in ``METHOD_MODULES`` promises the engine (docs/architecture.md, "Method"): a finite
``loss``, a gradient for every parameter that trains (and the optimizer holds them all), DDP told about the
parameters that get none, a ``state_dict`` that round-trips through a checkpoint, and exact resume.

A new method gets these checks by its line in ``METHOD_MODULES``; ``SETUPS`` holds the options a method needs
to run its full step on tiny inputs (32-px images, 4 + 4 per batch)."""

import io

import pytest
import torch

from sparseg.build import resolve
from sparseg.config import config_from_dict
from sparseg.data import create_dataset_spec, sparsify_list
from sparseg.labels import IGNORE, UNLABELED
from sparseg.methods import METHOD_MODULES, build_method, list_methods, method_class
from sparseg.methods.base import Step

from .conftest import NUM_CLASSES, TINY_MODEL

SPARSE = {"labeled_list": "points/train.txt", "label_format": "sparse"}
SETUPS = {  # per method: method options, model options, data options (SPARSE: points from the labeled list)
    "agmm": ({}, {}, SPARSE),
    "partial_ce": ({"photometric": True}, {}, SPARSE),
    "selftrain": ({"warmup_epochs": 1, "filter_group_size": 2}, {}, {}),
    "dgcl": ({  # small memories that fill in one step, so the contrast runs from the second one
        "warmup_epochs": 0, "ignore_classes": [], "density_ks": (2, 4), "memory_size": 64, "memory_update_cap": 16,
        "density_min_memory": 4, "min_memory": 8, "memory_positives": 4, "batch_positives": 4, "num_anchors": 5,
        "num_negatives": 6, "warmup_until_full": False, "contrast_group_size": 2, "filter_group_size": 2,
    }, {"proj_dim": 8}, {}),
    "unimatch": ({"threshold": 0.0}, {}, {}),
    "fixmatch": ({"threshold": 0.0}, {}, {}),
    "unimatch_v2": ({"threshold": 0.0}, {}, {}),
}


def test_every_listed_method_is_registered_and_covered():
    assert len(list_methods()) == len(METHOD_MODULES)
    assert set(SETUPS) <= set(list_methods())


@pytest.fixture
def run_config(semi_run_config):
    """``config(name, out) -> dict``: the tiny run of ``semi_run_config`` with the method's ``SETUPS``."""

    def config(name, out):
        method, model, data = SETUPS.get(name, ({}, {}, {}))
        if data is SPARSE and not (semi_run_config.root / "points").exists():
            root = semi_run_config.root
            spec = create_dataset_spec(config_from_dict({"data": {"dataset": "synthetic", "root": str(root)}}).data)
            sparsify_list(root / "splits" / "labeled.txt", root, spec, "points", 0, root / "points")
        return semi_run_config({"name": name, **method}, out, {**TINY_MODEL, **model}, data)

    return config


def batch(seed: int = 0, n: int = 4, size: int = 32) -> dict[str, dict[str, torch.Tensor]]:
    """Labeled and unlabeled 32-px images with crop padding, sparse-style masks (half the pixels unlabeled),
    image tags and depth: every stream and key any method reads."""
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(n, size, size, dtype=torch.bool)
    valid[:, :, -4:] = False
    mask = torch.randint(0, NUM_CLASSES, (n, size, size), generator=g)
    mask = mask.masked_fill(torch.rand(n, size, size, generator=g) < 0.5, UNLABELED).masked_fill(~valid, IGNORE)
    tags = (mask[:, None] == torch.arange(NUM_CLASSES)[None, :, None, None]).any(3).any(2).float()
    return {
        "labeled": {"image": torch.rand(n, 3, size, size, generator=g), "mask": mask, "valid": valid, "tags": tags},
        "unlabeled": {"image": torch.rand(n, 3, size, size, generator=g), "valid": valid.clone(),
                      "depth": torch.rand(n, size, size, generator=g), "depth_valid": valid.clone()},
    }


def dense(batch_: dict) -> dict:
    """The batch with unlabeled pixels labeled (methods that train on dense masks)."""
    mask = batch_["labeled"]["mask"]
    return {**batch_, "labeled": {**batch_["labeled"], "mask": mask.masked_fill(mask == UNLABELED, 0)}}


def build(run_config, name: str, seed: int = 0):
    torch.manual_seed(seed)
    method = build_method(*resolve(config_from_dict(run_config(name, "unit"))), NUM_CLASSES)
    return method.train()


# the semi-supervised phase of selftrain and dgcl: epoch 1 of 2, the teacher copied at its first iteration
STEP = Step(iteration=4, epoch=1, iters_per_epoch=4, total_iters=8)


@pytest.mark.parametrize("name", list_methods())
def test_loss_is_finite_and_every_trained_parameter_gets_a_gradient(run_config, name):
    method = build(run_config, name)
    data = batch() if method_class(name).label_kind else dense(batch())
    losses = method(data, STEP)
    assert losses["loss"].dim() == 0 and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    trained = {k: p for k, p in method.named_parameters() if p.requires_grad}
    assert not any(k.startswith("teacher.") for k in trained)
    without_gradient = {k for k, p in trained.items() if p.grad is None}
    # DDP's find_unused_parameters: needed exactly when some trained parameter gets no gradient
    assert bool(without_gradient) == method.unused_parameters, sorted(without_gradient)


@pytest.mark.parametrize("name", list_methods())
def test_state_dict_round_trips_through_a_checkpoint(run_config, name):
    source, target = build(run_config, name, seed=0), build(run_config, name, seed=1)
    if name == "dgcl":  # memory banks and the contrast start are state too
        source.update_memory(torch.arange(4), torch.tensor([0, 0, 1, 2]), torch.randn(4, source.memory.fts.shape[-1]
                                                                                       + source.memory.rep.shape[-1]))
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target.load_state_dict(torch.load(buffer, weights_only=True))
    a, b = source.state_dict(), target.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", list_methods())
def test_resume_from_a_mid_run_checkpoint_is_exact_and_the_optimizer_holds_every_trained_parameter(
        assert_resume_is_exact, run_config, name):
    method, model, data = SETUPS.get(name, ({}, {}, {}))
    run_config(name, "prepare")  # writes the points lists of sparse-label methods
    trainer = assert_resume_is_exact({"name": name, **method}, data, **model)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    trained = {k for k, p in trainer.method.named_parameters() if p.requires_grad and id(p) not in optimized}
    assert not trained
