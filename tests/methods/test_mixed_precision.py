"""Under the CamVid recipes' bf16 autocast what must stay fp32 stays fp32: loss terms, the softmax statistics of
pseudo-labels (probabilities, entropy, confidence), the EMA teacher, BatchNorm statistics, dgcl's density."""

import pytest
import torch

from sparseg.config import ModelConfig
from sparseg.labels import IGNORE
from sparseg.methods import consistency, create_method, method_class, selftrain
from sparseg.methods.base import MethodContext, Step
from sparseg.methods.dgcl import multiscale_density
from sparseg.models import create_model

K = 3
OPTIONS = {
    "supervised": {},
    "selftrain": {"warmup_epochs": 0, "filter_group_size": 2},
    "dgcl": {"warmup_epochs": 0, "filter_group_size": 2, "contrast_group_size": 2, "min_memory": 32,
             "memory_size": 64, "density_min_memory": 32, "memory_positives": 8, "warmup_until_full": False},
    "fixmatch": {"teacher": "ema"},
    "unimatch": {},
    "unimatch_v2": {},
}


def batch(seed=0, n=4, size=32):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(n, size, size, dtype=torch.bool)
    mask = torch.randint(0, K, (n, size, size), generator=g).masked_fill(~valid, IGNORE)
    return {"labeled": {"image": torch.rand(n, 3, size, size, generator=g), "mask": mask, "valid": valid},
            "unlabeled": {"image": torch.rand(n, 3, size, size, generator=g), "valid": valid.clone()}}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_bf16_autocast_keeps_losses_statistics_teacher_and_bn_in_fp32(name, monkeypatch):
    seen = []  # dtypes of the probabilities pseudo-labels are made from

    def record(function):
        def wrapped(probs, *args, **kwargs):
            seen.append(probs.dtype)
            return function(probs, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(selftrain, "filter_pseudo_labels", record(selftrain.filter_pseudo_labels))
    from_logits = consistency.PseudoLabels.from_logits.__func__
    monkeypatch.setattr(consistency.PseudoLabels, "from_logits",
                        classmethod(lambda cls, logits, *a, **k: (seen.append(logits.dtype),
                                                                  from_logits(cls, logits, *a, **k))[1]))
    torch.manual_seed(0)
    model = create_model(ModelConfig(encoder="resnet18", stem="plain", width=8, decoder_channels=16,
                                     proj_dim=8 if name == "dgcl" else 0), K)
    method = create_method(name, model.to(memory_format=torch.channels_last), method_class(name).Config(
        **OPTIONS[name]), MethodContext(K, seed=0))
    optimizer = torch.optim.SGD(method.model.parameters(), lr=0.01)
    for iteration in range(3):  # dgcl: the memory fills at step 0, the contrast runs from step 1
        step = Step(iteration, 0, 10, 20)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = method(batch(iteration), step)
        assert {k: v.dtype for k, v in losses.items()} == {k: torch.float32 for k in losses}
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        method.after_optimizer_step(step)
    if name != "supervised":
        assert seen and set(seen) == {torch.float32}
    if name == "dgcl":
        assert int(method.contrast_start) == 1 and losses["contrast"] > 0
    floating = {k: v.dtype for k, v in method.state_dict().items() if v.is_floating_point()}
    assert set(floating.values()) == {torch.float32}  # weights, EMA teacher, BN running stats, memory bank


def test_density_ignores_autocast():
    g = torch.Generator().manual_seed(0)
    features, memory = torch.randn(50, 16, generator=g), torch.randn(300, 16, generator=g)
    plain = multiscale_density(features, memory, (4, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = multiscale_density(features, memory, (4, 8))
    assert autocast.dtype == torch.float32 and torch.equal(plain, autocast)
