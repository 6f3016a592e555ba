"""Fixtures of the method tests: tiny models and batches, tiny training runs and the exact-resume check."""

from typing import ClassVar

import pytest
import torch

from sparseg.build import resolve
from sparseg.config import ModelConfig, config_from_dict
from sparseg.data import create_dataset_spec, make_synthetic_dataset, write_splits
from sparseg.engine.trainer import Trainer
from sparseg.labels import IGNORE
from sparseg.methods import consistency, create_method, method_class
from sparseg.methods.base import MethodContext
from sparseg.models import create_model

NUM_CLASSES = 3
TINY_MODEL = {"encoder": "resnet18", "stem": "plain", "width": 8, "decoder_channels": 16}


@pytest.fixture
def make_consistency():
    """``make(name, **method_options)``: the method around a tiny DeepLabV3+ (resnet18, width 8)."""

    def make(name, **options):
        torch.manual_seed(0)
        cfg = ModelConfig(encoder="resnet18", stem="plain", width=8, decoder_channels=16, dropout=0.0)
        model = create_model(cfg, NUM_CLASSES)
        return create_method(name, model, method_class(name).Config(**options), MethodContext(NUM_CLASSES, seed=0))

    return make


@pytest.fixture
def make_pseudo_labelling():
    """``make(name, num_classes, class_prior=None, **method_options)``: any pseudo-labelling method around a tiny
    DeepLabV3+, with the group and memory sizes a batch of 4 images at 32x32 needs and no warm-up."""

    def make(name, num_classes, class_prior=None, **options):
        if name in ("selftrain", "dgcl"):
            options.update(warmup_epochs=0, filter_group_size=2)
        if name == "dgcl":
            options.update(contrast_group_size=2, min_memory=32, memory_size=64, density_min_memory=32,
                           memory_positives=8, warmup_until_full=False)
        torch.manual_seed(0)
        model = create_model(ModelConfig(**TINY_MODEL, proj_dim=8 if name == "dgcl" else 0), num_classes)
        context = MethodContext(num_classes=num_classes, seed=0, class_prior=class_prior)
        return create_method(name, model, method_class(name).Config(**options), context)

    return make


@pytest.fixture
def consistency_batch():
    """``batch(n=4, size=32)``: labeled and unlabeled images with crop padding on the right, and depth."""

    def batch(n=4, size=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        valid = torch.ones(n, size, size, dtype=torch.bool)
        valid[:, :, -4:] = False
        mask = torch.randint(0, NUM_CLASSES, (n, size, size), generator=g).masked_fill(~valid, IGNORE)
        return {
            "labeled": {"image": torch.rand(n, 3, size, size, generator=g), "mask": mask, "valid": valid},
            "unlabeled": {
                "image": torch.rand(n, 3, size, size, generator=g), "valid": valid.clone(),
                "depth": torch.rand(n, size, size, generator=g), "depth_valid": valid.clone(),
            },
        }

    return batch


class RecordingPlugin:
    """Stands in for ``sparseg.plugins.depmatch.DepMatch``: records its views, returns one term c (λ = 1)."""

    instances: ClassVar[list["RecordingPlugin"]] = []
    cddp_feature = "undropped"

    def __init__(self, options, num_classes, seed):
        self.options, self.num_classes, self.seed = options, num_classes, seed
        self.views = []
        self.term = None
        RecordingPlugin.instances.append(self)

    def loss_weights(self):
        return {"depmatch_term": 1.0}

    def __call__(self, views, step):
        self.views = views
        self.term = torch.tensor(0.25, requires_grad=True)
        return {"depmatch_term": self.term + 0.0 * views[0].logits.sum()}


@pytest.fixture
def recording_plugin(monkeypatch):
    """Installs ``RecordingPlugin`` as the DepMatch plug-in; yields the class (see ``.instances``)."""
    monkeypatch.setattr(consistency, "DepMatch", RecordingPlugin)
    RecordingPlugin.instances = []
    return RecordingPlugin


@pytest.fixture
def semi_run_config(tmp_path):
    """``config(method: dict, out: str, model: dict | None = None, data: dict | None = None) -> dict``:
    4 iterations on 8 + 8 synthetic 32-px images (batch 4 + 4), evaluation and checkpoint every 2; ``data``
    extends the data section (its root is ``config.root``)."""
    root = make_synthetic_dataset(tmp_path / "data", n_train=16, n_val=2, size=32)
    spec = create_dataset_spec(config_from_dict({"data": {"dataset": "synthetic", "root": str(root)}}).data)
    write_splits(root / "train.txt", root, spec, "1/2", 0, root / "splits")

    def config(method, out, model=None, data=None):
        return {
            "seed": 0,
            "out": str(tmp_path / out),
            "data": {
                "dataset": "synthetic", "root": str(root), "labeled_list": "splits/labeled.txt",
                "unlabeled_list": "splits/unlabeled.txt", "val_list": "val.txt", "crop_size": 32,
                "batch_size": 4, "workers": 0, **(data or {}),
            },
            "model": model or TINY_MODEL,
            "optim": {"base_lr": 0.01, "head_lr_mult": 1.0},
            "train": {"iters": 4, "eval_every": 2, "log_every": 1, "device": "cpu"},
            "method": method,
        }

    config.root = root
    return config


class Crash(Exception):
    pass


class CrashAfterCheckpoint(Trainer):
    """Stops the run by an exception right after the checkpoint of iteration 2."""

    def _evaluate_and_checkpoint(self):
        result = super()._evaluate_and_checkpoint()
        if self.iteration == 2:
            raise Crash
        return result


@pytest.fixture
def assert_resume_is_exact(semi_run_config):
    """``check(method: dict, data=None, **model_options) -> Trainer``: 4 iterations straight and 2 + crash +
    fresh process state + resume 2 end with identical method state (model, teacher, memories, ...); returns the
    straight run. ``data`` extends the data section, ``model_options`` the tiny model."""

    def check(method, data=None, **model_options):
        model = {**TINY_MODEL, **model_options}
        straight = Trainer(*resolve(config_from_dict(semi_run_config(method, "straight", model, data))), quiet=True)
        straight.fit()
        cfg = config_from_dict(semi_run_config(method, "resumed", model, data))
        with pytest.raises(Crash):
            CrashAfterCheckpoint(*resolve(cfg), quiet=True).fit()
        resumed = Trainer(*resolve(cfg), resume=True, quiet=True)
        assert resumed.iteration == 2
        resumed.fit()
        a, b = straight.method.state_dict(), resumed.method.state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
        return straight

    return check
