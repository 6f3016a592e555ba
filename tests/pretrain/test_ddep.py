"""DDeP denoising pretraining (docs/methods/pretrain.md): the corruption, the loss, the collapse monitor,
training on a toy problem, exact resume and the file `model.pretrained` loads."""

import math

import pytest
import torch
import torch.nn.functional as F

from sparseg.build import resolve
from sparseg.config import ModelConfig, config_from_dict
from sparseg.data import make_synthetic_dataset
from sparseg.engine.trainer import Trainer
from sparseg.methods import create_method, method_class
from sparseg.methods.base import MethodContext, Step, step_generator
from sparseg.models import create_model
from sparseg.pretrain.base import embedding_spread
from sparseg.pretrain.ddep import corrupt

TINY = {"encoder": "resnet18", "stem": "plain", "width": 8, "decoder_channels": 16}


def make_ddep(**options):
    torch.manual_seed(0)
    model = create_model(ModelConfig(**TINY, dropout=0.0), 3)
    return create_method("ddep", model, method_class("ddep").Config(**options), MethodContext(3, seed=0))


def image_batch(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(n, size, size, dtype=torch.bool)
    valid[:, :, -4:] = False
    return {"unlabeled": {"image": torch.rand(n, 3, size, size, generator=g), "valid": valid}}


def test_corruption_follows_the_scaled_additive_formula():
    g = torch.Generator().manual_seed(0)
    x, noise = torch.rand(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    gamma, sigma = torch.tensor([1.0, 0.0, 0.64]), 0.2
    out = corrupt(x, noise, gamma, sigma)
    assert torch.allclose(out[0], x[0])  # γ = 1: the clean image
    assert torch.allclose(out[1], (sigma * noise[1] + 1) / 2)  # γ = 0: noise only
    expected = (0.8 * (2 * x[2] - 1) + 0.6 * sigma * noise[2] + 1) / 2  # √0.64, √0.36 on u = 2x - 1
    assert torch.allclose(out[2], expected, atol=1e-6)


def test_noise_lives_on_the_decoder_grid_and_is_spread_smoothly_over_the_pixels():
    method = make_ddep(gamma=(0.0, 0.0), sigma=1.0)  # x̃ = (ε + 1) / 2: the noise itself is the input
    seen = {}

    def record(x):
        seen["x"] = x
        return {"fts": torch.zeros(x.shape[0], 16, 8, 8)}

    method.model.forward = record
    method(image_batch(n=4, size=32), Step(5, 0, 10, 10))
    assert method.stride == 4
    generator = step_generator(0, 5, "ddep", 0)
    grid_noise = torch.randn((4, 3, 8, 8), generator=generator)  # one value per 4x4 decoder cell
    smooth = F.interpolate(grid_noise, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(2 * seen["x"] - 1, smooth, atol=1e-6)


def test_spread_is_zero_for_collapsed_features_and_near_one_for_spread_ones():
    g = torch.Generator().manual_seed(0)
    collapsed = torch.ones(2, 64, 8, 8) * torch.randn(1, 64, 1, 1)
    assert embedding_spread(collapsed, g, 128) < 1e-5
    spread = embedding_spread(torch.randn(2, 64, 8, 8), g, 128)
    assert 0.9 < spread < 1.1


def test_noise_is_a_function_of_seed_and_iteration():
    method = make_ddep().eval()
    batch = image_batch()
    a = method(batch, Step(3, 0, 10, 10))["loss"]
    b = method(batch, Step(3, 0, 10, 10))["loss"]
    c = method(batch, Step(4, 0, 10, 10))["loss"]
    assert a == b and a != c


def smooth_images(n=8, size=32):
    """Smooth toy images: the noise is what does not fit them, as in photographs at the noise's scale."""
    return F.interpolate(torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(0)), size=(size, size),
                         mode="bilinear", align_corners=False)


def train_toy(method, steps=50):
    optimizer = torch.optim.AdamW(method.parameters(), lr=3e-3)
    batch = {"unlabeled": {"image": smooth_images(), "valid": torch.ones(8, 32, 32, dtype=torch.bool)}}
    losses = []
    for i in range(steps):
        loss = method(batch, Step(i, 0, steps, steps))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses[:10]) / 10, sum(losses[-10:]) / 10


def test_denoising_learns_on_a_toy_problem_without_collapse():
    method = make_ddep()
    first, last = train_toy(method)
    assert last < 0.92 * first and last < 0.97  # below 1 = E[ε²], the loss of predicting no noise
    spread = method.extra_logs()["embed_spread"]
    assert not math.isnan(spread) and spread > 0.5


def test_class_heads_get_no_gradient_and_are_declared_unused():
    method = make_ddep()
    method(image_batch(), Step(0, 0, 1, 1))["loss"].backward()
    assert method.model.classifier.weight.grad is None
    assert method.model.encoder.conv1.weight.grad is not None and method.model.fuse[0].weight.grad is not None
    assert method.unused_parameters and method.pretraining and method.streams == ("unlabeled",)


def test_bad_noise_range_is_refused():
    with pytest.raises(ValueError, match="gamma"):
        method_class("ddep").Config(gamma=(0.5, 1.5))


@pytest.fixture
def pretrain_config(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=4, size=32)

    def config(out, iters=4):
        return {
            "seed": 0, "out": str(tmp_path / out),
            "data": {"dataset": "synthetic", "root": str(root), "train_list": "train.txt", "val_list": "val.txt",
                     "crop_size": 32, "batch_size": 4, "workers": 0},
            "model": TINY, "optim": {"name": "adamw", "base_lr": 0.001},
            "train": {"iters": iters, "eval_every": 2, "log_every": 1, "device": "cpu"},
            "method": {"name": "ddep"},
        }

    return config


class Crash(Exception):
    pass


def test_resume_is_exact_and_pretrained_file_follows_each_checkpoint(pretrain_config, tmp_path):
    straight = Trainer(*resolve(config_from_dict(pretrain_config("straight"))), quiet=True)
    straight.fit()

    class CrashAtTwo(Trainer):
        def _evaluate_and_checkpoint(self):
            result = super()._evaluate_and_checkpoint()
            if self.iteration == 2:
                raise Crash
            return result

    cfg = config_from_dict(pretrain_config("resumed"))
    with pytest.raises(Crash):
        CrashAtTwo(*resolve(cfg), quiet=True).fit()
    assert torch.load(tmp_path / "resumed" / "pretrained.pt", weights_only=True)["iteration"] == 2
    resumed = Trainer(*resolve(cfg), resume=True, quiet=True)
    resumed.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    exported = torch.load(tmp_path / "resumed" / "pretrained.pt", weights_only=True)
    assert exported["iteration"] == 4 and exported["format"] == "sparseg-pretrained"
    assert not any(k.startswith("classifier.") for k in exported["state_dict"])
    assert torch.equal(exported["state_dict"]["encoder.conv1.weight"], b["model.encoder.conv1.weight"])
