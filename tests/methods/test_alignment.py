"""Class-mix alignment (sparseg/methods/alignment.py): moves argmax shares to π, no-op at π, exact resume, gloo."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from sparseg.build import load_trained
from sparseg.config import ModelConfig
from sparseg.labels import IGNORE
from sparseg.methods import create_method, method_class
from sparseg.methods.alignment import ClassMixAlignment, PseudoLabelConfig
from sparseg.methods.base import MethodContext, Step
from sparseg.models import create_model

K = 3
PRIOR = torch.tensor([0.5, 0.3, 0.2])


def logit_stream(steps, seed=0, n=4, size=8):
    """Logits whose argmax almost never picks class 2 (an early teacher that never predicts a rare class)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        logits = torch.randn(n, K, size, size, generator=g)
        logits[:, 2] -= 2.0
        yield logits, torch.ones(n, size, size, dtype=torch.bool)


def argmax_shares(logits, valid):
    counts = torch.bincount(logits.argmax(1)[valid], minlength=K).float()
    return counts / counts.sum()


def aligner(align="hard_share", prior=PRIOR, **options):
    return ClassMixAlignment(PseudoLabelConfig(align=align, **options), K, prior)


def test_hard_share_moves_argmax_shares_towards_the_prior():
    align = aligner()
    first = last = None
    for logits, valid in logit_stream(200):
        shares = argmax_shares(align(logits, valid), valid)
        first = shares if first is None else first
        last = shares
    assert first[2] < 0.05  # unaligned: the rare class is (almost) never the argmax
    assert (last - PRIOR).abs().max() < 0.06
    assert (first - PRIOR).abs().sum() > 4 * (last - PRIOR).abs().sum()
    assert align.bias[2] > 1.0  # the rare class's logit is raised


def test_hard_share_is_a_no_op_when_shares_equal_the_prior():
    # 10 pixels: classes 0, 1, 2 win 5, 3 and 2 of them, exactly π
    logits = torch.full((1, K, 1, 10), -5.0)
    for pixel, c in enumerate([0] * 5 + [1] * 3 + [2] * 2):
        logits[0, c, 0, pixel] = 5.0
    valid = torch.ones(1, 1, 10, dtype=torch.bool)
    align = aligner()
    for _ in range(20):
        out = align(logits, valid)
        assert torch.equal(out, logits)
    assert align.bias.abs().max() < 1e-5


def test_mean_prob_matches_the_mean_probability_to_the_prior():
    align = aligner("mean_prob", momentum=0.0)
    logits, valid = next(logit_stream(1))
    mean_before = logits.softmax(1).mean((0, 2, 3))
    aligned = align(logits, valid)
    assert torch.allclose(align.bias, PRIOR.log() - mean_before.log(), atol=1e-5)
    reweighted = logits.softmax(1) * (PRIOR / mean_before)[:, None, None]
    assert torch.allclose(aligned.softmax(1), reweighted / reweighted.sum(1, keepdim=True), atol=1e-5)


def test_none_passes_logits_and_saves_nothing():
    align = aligner("none", prior=None)
    logits, valid = next(logit_stream(1))
    assert align(logits, valid) is logits
    assert align.state_dict() == {} and align.logs() == {}


def test_classes_absent_from_the_labels_keep_a_zero_bias():
    align = aligner(prior=torch.tensor([0.6, 0.4, 0.0]))
    for logits, valid in logit_stream(50):
        align(logits, valid)
    assert align.bias[2] == 0


def test_alignment_needs_a_prior_to_label_but_not_to_load():
    logits, valid = next(logit_stream(1))
    with pytest.raises(ValueError, match="labeled class prior"):
        aligner(prior=None)(logits, valid)
    trained = aligner()
    trained(logits, valid)
    loaded = aligner(prior=None)  # as `sparseg eval` rebuilds a trained method: π comes with the state
    loaded.load_state_dict(trained.state_dict())
    assert torch.equal(loaded(logits, valid), logits + trained.bias[:, None, None])


def test_state_resumes_exactly():
    stream = list(logit_stream(40))
    straight = aligner()
    for logits, valid in stream:
        straight(logits, valid)
    first = aligner()
    for logits, valid in stream[:15]:
        first(logits, valid)
    resumed = aligner(prior=torch.ones(K))  # the saved π replaces whatever this run would count
    resumed.load_state_dict(first.state_dict())
    for logits, valid in stream[15:]:
        resumed(logits, valid)
    assert set(straight.state_dict()) == {"prior", "bias", "share", "updates"}
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def _gloo_worker(rank, world_size, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        align = aligner()
        for logits, valid in logit_stream(30):
            align(logits[rank::world_size], valid[rank::world_size])  # each process holds half of the batch
        torch.save(align.state_dict(), f"{results}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_statistics_are_all_reduced_under_gloo(tmp_path):
    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = aligner()
    for logits, valid in logit_stream(30):
        single(logits, valid)
    for rank in range(2):
        state = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(state["bias"], single.bias, atol=1e-6)
        assert torch.allclose(state["share"], single.share, atol=1e-6)


PSEUDO_LABELLING = ["selftrain", "dgcl", "fixmatch", "unimatch", "unimatch_v2"]


def random_batch():
    g = torch.Generator().manual_seed(0)
    valid = torch.ones(4, 32, 32, dtype=torch.bool)
    mask = torch.randint(0, K, (4, 32, 32), generator=g).masked_fill(~valid, IGNORE)
    return {"labeled": {"image": torch.rand(4, 3, 32, 32, generator=g), "mask": mask, "valid": valid},
            "unlabeled": {"image": torch.rand(4, 3, 32, 32, generator=g), "valid": valid.clone()}}


@pytest.mark.parametrize("name", PSEUDO_LABELLING)
def test_every_pseudo_labelling_method_aligns(name, make_pseudo_labelling):
    method = make_pseudo_labelling(name, K, class_prior=PRIOR * 100, pseudo_label={"align": "hard_share"})
    assert type(method).wants_class_prior(method.cfg)
    losses = method(random_batch(), Step(0, 0, 10, 20))
    assert torch.isfinite(losses["loss"])
    state = method.state_dict()
    assert torch.allclose(state["alignment.prior"], PRIOR)
    assert int(state["alignment.updates"]) == 1 and state["alignment.bias"].abs().sum() > 0
    assert {"align_bias", "align_measured_share", "class_prior"} <= set(method.extra_logs())


@pytest.mark.parametrize("name", PSEUDO_LABELLING)
def test_every_pseudo_labelling_method_filters_per_class(name, make_pseudo_labelling):
    # a threshold the untrained model's confidences straddle; selftrain and dgcl drop 20 % by entropy
    options = {} if name in ("selftrain", "dgcl") else {"threshold": 0.39}
    kept = {}
    for rule in ("global", "per_class"):
        method = make_pseudo_labelling(name, K, class_prior=PRIOR * 100,
                                       pseudo_label={"align": "hard_share", "filter": rule}, **options)
        losses = method(random_batch(), Step(0, 0, 10, 20))
        assert torch.isfinite(losses["loss"])
        kept[rule] = method.extra_logs()["pseudo_label_share"]
    assert kept["per_class"] != kept["global"]  # the rule reaches the pseudo-labels of every method
    assert sum(v > 0 for v in kept["per_class"]) >= sum(v > 0 for v in kept["global"])


@pytest.mark.parametrize("name", ["selftrain", "fixmatch"])
def test_align_none_asks_for_no_prior_and_saves_nothing(name):
    cfg = method_class(name).Config()
    assert not method_class(name).wants_class_prior(cfg)
    method = create_method(name, create_model(ModelConfig(encoder="resnet18", stem="plain", width=8,
                                                          decoder_channels=16), K), cfg, MethodContext(K))
    assert not any(key.startswith("alignment.") for key in method.state_dict())


@pytest.mark.parametrize("method", [
    {"name": "selftrain", "warmup_epochs": 0, "filter_group_size": 2, "pseudo_label": {"align": "hard_share"}},
    {"name": "fixmatch", "pseudo_label": {"align": "mean_prob"}},
])
def test_trainer_counts_the_prior_and_resumes_alignment_exactly(assert_resume_is_exact, method):
    trainer = assert_resume_is_exact(method)
    labeled = next(s.dataset for s in trainer.streams if s.name == "labeled")
    counts = torch.zeros(trainer.num_classes)
    for entry in labeled.entries:
        labels = torch.from_numpy(labeled.read_mask(entry, Image.open(entry.mask).size).astype("int64"))
        counts += torch.bincount(labels[labels < trainer.num_classes].flatten(), minlength=trainer.num_classes)
    assert torch.equal(torch.from_numpy(labeled.class_pixel_counts()).float(), counts)
    assert torch.allclose(trainer.method.alignment.prior, counts / counts.sum())
    assert int(trainer.method.alignment.updates) == 4
    _, _, _, name = load_trained(str(trainer.out_dir / "last.pt"), [], None)  # what `sparseg eval` does
    assert name == ("teacher" if method["name"] == "selftrain" else "student")
