"""Rare-class copy-paste (sparseg/methods/copy_paste.py): what is sampled, what is pasted, state and methods."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pydantic import ValidationError

from sparseg.labels import IGNORE
from sparseg.methods import method_class
from sparseg.methods.base import Step
from sparseg.methods.consistency import PseudoLabels
from sparseg.methods.copy_paste import CopyPasteConfig, RareClassCopyPaste
from sparseg.methods.selftrain import split_groups

K = 4


def copy_paste(**options):
    return RareClassCopyPaste(CopyPasteConfig(**{"classes": 1, **options}), K)


def confident_logits(mask, good_classes, n_classes=K):
    """Logits whose argmax is right (probability ~0.98) on ``good_classes`` and uniform on the others."""
    logits = torch.zeros(len(mask), n_classes, *mask.shape[1:])
    for c in good_classes:
        logits[:, c][mask == c] = 6.0
    return logits


def striped_masks(n=2, size=8):
    """Every image holds all K classes in vertical stripes, and an ignored row."""
    mask = (torch.arange(size) * K // size).expand(n, size, size).clone()
    mask[:, 0] = IGNORE
    return mask


def test_confidence_follows_the_true_class_probability_and_weights_favour_poor_classes():
    paste = copy_paste(momentum=0.5)
    mask = striped_masks()
    paste.update(confident_logits(mask, good_classes=[0, 1]), mask)
    assert paste.confidence[:2].min() > 0.95
    assert torch.allclose(paste.confidence[2:], torch.full((2,), 0.25))
    paste.update(confident_logits(mask, good_classes=[0, 1, 2]), mask)  # EMA: halfway to the new mean
    assert 0.55 < paste.confidence[2] < 0.65
    weights = paste.weights()
    assert weights[3] > weights[2] > weights[0]
    assert torch.equal(copy_paste(power=0).weights(), torch.ones(K))


def test_classes_are_drawn_by_weight_among_those_present_in_the_source():
    paste = copy_paste()
    paste.confidence.copy_(torch.tensor([0.95, 0.95, 0.5, 0.0]))
    mask = striped_masks(n=1)
    generator = torch.Generator().manual_seed(0)
    picks = torch.stack([paste.sample(mask, torch.tensor([0]), generator).label.unique()[0] for _ in range(400)])
    frequency = torch.bincount(picks, minlength=K).float() / len(picks)
    expected = paste.weights() / paste.weights().sum()
    assert torch.allclose(frequency, expected, atol=0.05)
    only_road = torch.zeros(1, 8, 8, dtype=torch.long)
    assert set(paste.sample(only_road, torch.tensor([0]), generator).label.unique().tolist()) == {0}
    nothing = torch.full((1, 8, 8), IGNORE)
    assert not paste.sample(nothing, torch.tensor([0]), generator).mask.any()


def test_pasted_pixels_carry_the_source_image_and_true_label_and_nothing_else_changes():
    paste = copy_paste(classes=2)
    masks = striped_masks(n=3)
    sources = torch.rand(3, 3, 8, 8)
    targets, target_labels = torch.rand(2, 3, 8, 8), torch.full((2, 8, 8), 7)
    pasted = paste.sample(masks, torch.tensor([2, 0]), torch.Generator().manual_seed(1))
    images, labels = pasted.images(targets, sources), pasted.labels(target_labels)
    for t, s in enumerate([2, 0]):
        inside = pasted.mask[t]
        assert len(pasted.label[t][inside].unique()) == 2
        assert torch.equal(labels[t][inside], masks[s][inside])
        assert torch.equal(images[t][:, inside], sources[s][:, inside])
        assert torch.equal(images[t][:, ~inside], targets[t][:, ~inside])
        assert (labels[t][~inside] == 7).all()
    nothing = torch.zeros(2, 8, 8, dtype=torch.bool)
    weak = PseudoLabels(torch.full((2, 8, 8), 0.1), target_labels, nothing, nothing)
    target = weak.pasted(pasted)
    assert torch.equal(target.label, labels)
    assert torch.equal(target.valid, pasted.mask) and torch.equal(target.keep, pasted.mask)
    assert (target.conf[pasted.mask] == 1).all()


def test_off_saves_nothing_and_state_resumes_exactly():
    assert not copy_paste(classes=0).state_dict()
    mask = striped_masks()
    logits = [torch.randn(2, K, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    straight = copy_paste()
    for x in logits:
        straight.update(x, mask)
    first = copy_paste()
    for x in logits[:3]:
        first.update(x, mask)
    resumed = copy_paste()
    resumed.load_state_dict(first.state_dict())
    for x in logits[3:]:
        resumed.update(x, mask)
    assert set(straight.state_dict()) == {"confidence", "seen"}
    assert torch.equal(straight.confidence, resumed.confidence)


def _gloo_worker(rank, world_size, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        paste = copy_paste()
        mask = striped_masks(n=4)
        for i in range(5):
            logits = torch.randn(4, K, 8, 8, generator=torch.Generator().manual_seed(i))
            paste.update(logits[rank::world_size], mask[rank::world_size])  # each process holds half the batch
        torch.save(paste.state_dict(), f"{results}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_confidences_are_all_reduced_under_gloo(tmp_path):
    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = copy_paste()
    mask = striped_masks(n=4)
    for i in range(5):
        single.update(torch.randn(4, K, 8, 8, generator=torch.Generator().manual_seed(i)), mask)
    for rank in range(2):
        assert torch.allclose(torch.load(tmp_path / f"rank{rank}.pt")["confidence"], single.confidence, atol=1e-6)


def _batch():
    g = torch.Generator().manual_seed(0)
    valid = torch.ones(4, 32, 32, dtype=torch.bool)
    mask = torch.randint(0, K, (4, 32, 32), generator=g)
    return {"labeled": {"image": torch.rand(4, 3, 32, 32, generator=g), "mask": mask, "valid": valid},
            "unlabeled": {"image": torch.rand(4, 3, 32, 32, generator=g), "valid": valid.clone()}}


@pytest.mark.parametrize("name", ["selftrain", "dgcl", "fixmatch", "unimatch", "unimatch_v2"])
def test_every_pseudo_labelling_method_pastes_and_learns_the_confidences(name, make_pseudo_labelling):
    method = make_pseudo_labelling(name, K, copy_paste={"classes": 2})
    losses = method(_batch(), Step(0, 0, 10, 20))
    assert torch.isfinite(losses["loss"])
    assert bool(method.state_dict()["copy_paste.seen"].all())
    assert len(method.extra_logs()["copy_paste_confidence"]) == K
    assert not any(key.startswith("copy_paste.") for key in make_pseudo_labelling(name, K).state_dict())


def test_selftrain_pastes_within_each_filter_group_with_true_labels(make_pseudo_labelling):
    method = make_pseudo_labelling("selftrain", K, copy_paste={"classes": 1})
    batch = _batch()
    labeled = batch["labeled"]
    groups = split_groups(4, 4, 2)
    x_mix, y_mix = batch["unlabeled"]["image"].clone(), torch.full((4, 32, 32), IGNORE)
    pasted, x_out, y_out = method.paste_rare_classes(labeled, x_mix, y_mix, groups, Step(0, 0, 10, 20))
    for group in groups:
        for target in group.unlabeled.tolist():
            source = group.labeled[group.unlabeled.tolist().index(target) % len(group.labeled)]
            inside = y_out[target] != IGNORE
            assert inside.any()
            assert torch.equal(y_out[target][inside], labeled["mask"][source][inside])
            assert torch.equal(x_out[target][:, inside], labeled["image"][source][:, inside])
        for target, source in zip(group.labeled.tolist(), group.labeled.roll(-1).tolist()):
            moved = (pasted["image"][target] != labeled["image"][target]).any(0)
            assert moved.any()
            assert torch.equal(pasted["image"][target][:, moved], labeled["image"][source][:, moved])
            assert torch.equal(pasted["mask"][target][moved], labeled["mask"][source][moved])
            relabeled = pasted["mask"][target] != labeled["mask"][target]
            assert not (relabeled & ~moved).any()


def test_copy_paste_with_depmatch_is_refused():
    with pytest.raises(ValidationError, match="copy_paste"):
        method_class("unimatch").Config(copy_paste={"classes": 1}, depmatch={})


@pytest.mark.parametrize("method", [
    {"name": "selftrain", "warmup_epochs": 0, "filter_group_size": 2, "copy_paste": {"classes": 2}},
    {"name": "fixmatch", "copy_paste": {"classes": 1}},
])
def test_trainer_resumes_copy_paste_exactly(assert_resume_is_exact, method):
    trainer = assert_resume_is_exact(method)
    assert bool(trainer.method.copy_paste.seen.any())
