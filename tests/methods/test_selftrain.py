"""selftrain (dgcl.md §2): groups, filters (§9.13), CutMix (§9.14), EMA (§9.15), losses, trainer + resume."""

import pytest
import torch

from sparseg.config import ModelConfig
from sparseg.labels import IGNORE
from sparseg.methods import create_method, method_class
from sparseg.methods.base import MethodContext, Step
from sparseg.methods.losses import resize_nearest
from sparseg.methods.selftrain import (
    filter_pseudo_labels,
    pseudo_label_and_mix,
    split_groups,
    unsup_loss,
)
from sparseg.models import create_model
from sparseg.stats import entropy, quantile

K = 3


def tiny_model(proj_dim=0):
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="resnet18", stem="plain", width=8, decoder_channels=16, proj_dim=proj_dim, dropout=0.0)
    return create_model(cfg, K)


def make_method(name="selftrain", num_classes=K, proj_dim=0, **options):
    cfg = method_class(name).Config(**{"filter_group_size": 2, **options})
    return create_method(name, tiny_model(proj_dim), cfg, MethodContext(num_classes=num_classes, seed=0))


def fake_batch(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(n, size, size, dtype=torch.bool)
    valid[:, :, -4:] = False  # crop padding
    mask = torch.randint(0, K, (n, size, size), generator=g).masked_fill(~valid, IGNORE)
    return {
        "labeled": {"image": torch.rand(n, 3, size, size, generator=g), "mask": mask, "valid": valid},
        "unlabeled": {"image": torch.rand(n, 3, size, size, generator=g), "valid": valid.clone()},
    }


# ---------------------------------------------------------------- groups and quantiles (§6.1, §6.11)


def test_groups_are_round_robin_and_match_ranks():
    groups = split_groups(4, 8, 2)
    assert [g.index for g in groups] == [0, 1, 2, 3]
    assert groups[1].unlabeled.tolist() == [1, 5] and groups[1].labeled.tolist() == [1]
    # the sampler deals global image q to rank q mod W as local image q div W: with W = 2, rank 1 holds
    # global images 1, 3, 5, 7 and its local group 0 (local images 0, 2) is global images 1, 5 = group 1
    rank1 = split_groups(2, 4, 2, rank=1, world_size=2)
    assert [g.index for g in rank1] == [1, 3] and rank1[0].unlabeled.tolist() == [0, 2]
    assert len(split_groups(4, 4, None)) == 1
    with pytest.raises(ValueError, match="not divisible"):
        split_groups(4, 6, 4)
    with pytest.raises(ValueError, match="does not split"):
        split_groups(3, 4, 2)


def test_quantile_matches_torch_linear_interpolation():
    values = torch.randn(1001, generator=torch.Generator().manual_seed(0))
    for q in (0.0, 0.2, 0.5, 0.8, 0.9999, 1.0):
        assert torch.allclose(quantile(values, q), torch.quantile(values, q))
    assert quantile(torch.tensor([3.0]), 0.8) == 3.0


# ---------------------------------------------------------------- §9.13 filters


def probs_with_distinct_entropy(n, h, w):
    confidence = torch.linspace(0.34, 0.99, n * h * w).view(n, h, w)  # entropy falls as confidence rises
    rest = (1 - confidence) / (K - 1)
    return torch.stack([confidence] + [rest] * (K - 1), dim=1)


def test_filter_drops_the_highest_entropy_share_of_valid_pixels():
    probs = probs_with_distinct_entropy(2, 10, 10)
    valid = torch.ones(2, 10, 10, dtype=torch.bool)
    valid[0, :5] = False  # padding, here with the highest entropies: must not count in the quantile
    for drop in (20.0, 80.0, 10.0):
        labels = filter_pseudo_labels(probs, valid, drop)
        assert (labels[~valid] == IGNORE).all()
        dropped = int((labels[valid] == IGNORE).sum())
        assert dropped == pytest.approx(drop / 100 * int(valid.sum()), abs=1)
        ent = entropy(probs)
        assert ent[valid & (labels == IGNORE)].min() > ent[valid & (labels != IGNORE)].max()
    assert (filter_pseudo_labels(probs, valid, 0.0)[valid] == 0).all()


def test_per_class_filter_keeps_each_class_share_and_everything_the_global_filter_keeps():
    n, h, w = 2, 10, 10
    rare = torch.zeros(n, h, w, dtype=torch.bool)
    rare[:, :2] = True  # 40 of 200 pixels: pseudo-class 1, each less confident than any pixel of class 0
    top = rare.long()
    confidence = torch.where(rare, torch.linspace(0.35, 0.45, n * h * w).view(n, h, w),
                             torch.linspace(0.8, 0.99, n * h * w).view(n, h, w))
    probs = ((1 - confidence) / (K - 1)).unsqueeze(1).repeat(1, K, 1, 1)
    probs.scatter_(1, top.unsqueeze(1), confidence.unsqueeze(1))
    valid = torch.ones(n, h, w, dtype=torch.bool)
    drop = 20.0
    global_labels = filter_pseudo_labels(probs, valid, drop)
    per_class = filter_pseudo_labels(probs, valid, drop, per_class=True)
    assert not (global_labels == 1).any()  # one global threshold erases the uncertain class
    assert int((per_class == 1).sum()) == pytest.approx((1 - drop / 100) * int(rare.sum()), abs=1)
    assert ((global_labels != IGNORE) <= (per_class != IGNORE)).all()  # a superset of the global filter
    assert torch.equal(filter_pseudo_labels(probs, valid, 0.0, per_class=True), top)


def test_schedules_beta_at_e0_and_decay():
    method = make_method(warmup_epochs=1)
    batch = fake_batch()
    logs = {}
    for epoch in (1, 9):  # E = 10 epochs of 2 iterations, e0 = 1
        method(batch, Step(2 * epoch, epoch, 2, 20))
        logs[epoch] = method.extra_logs()["unsup_drop_percent"]
    assert logs[1] == 20.0  # β_e0 = β0
    assert logs[9] == pytest.approx(20.0 / 9)  # β_{E-1} = β0 / (E - e0): it does not stop at 10 %


# ---------------------------------------------------------------- §9.14 CutMix


def test_cutmix_boxes_partner_and_label_alignment():
    n, size = 4, 16
    images = torch.arange(n, dtype=torch.float).view(n, 1, 1, 1).expand(n, 3, size, size).clone()
    pred = torch.zeros(n, K, size // 4, size // 4)
    pred[:, 1] = 5.0  # confident class 1 everywhere
    valid = torch.ones(n, size, size, dtype=torch.bool)
    valid[1, :, -3:] = False  # padding of image 1 only
    groups = split_groups(n, n, 2)  # groups {0, 2} and {1, 3}
    x_mix, y_mix = pseudo_label_and_mix(pred, images, valid, groups, 0.0, 1.0, seed=0, iteration=7)
    for group in groups:
        members = group.unlabeled.tolist()
        for i, own in enumerate(members):
            partner = members[(i + 1) % len(members)]  # (i + 1) mod n within the group
            box = x_mix[own, 0] != own
            assert set(x_mix[own, 0][box].unique().tolist()) == {partner}
            assert abs(int(box.sum()) - size * size / 2) <= size  # half of the image, up to rounding
            # labels and padding follow the same box: padding of the partner shows up inside it only
            expected = torch.where(box, torch.where(valid[partner], 1, IGNORE), torch.where(valid[own], 1, IGNORE))
            assert torch.equal(y_mix[own], expected)
    unmixed, _ = pseudo_label_and_mix(pred, images, valid, groups, 0.0, 0.0, seed=0, iteration=7)
    assert torch.equal(unmixed, images)


# ---------------------------------------------------------------- §9.15 EMA teacher in the method


def perturb(model, amount):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(amount)


def test_teacher_equals_student_through_epoch_e0_then_ema():
    method = make_method(warmup_epochs=1, teacher_sync_epochs=1, ema_momentum=0.999)
    batch = fake_batch()
    L, total = 2, 8
    teacher0 = [p.clone() for p in method.teacher.parameters()]
    for i in range(2 * L):
        step = Step(i, i // L, L, total)
        method(batch, step)
        perturb(method.model, 0.01)  # stands for the optimizer step
        if step.epoch == 0:  # warm-up: the teacher's parameters do not move
            method.after_optimizer_step(step)
            assert all(torch.equal(t, t0) for t, t0 in zip(method.teacher.parameters(), teacher0))
        elif step.epoch == 1:  # e0: a copy, never an alias
            method.after_optimizer_step(step)
            for t, s in zip(method.teacher.parameters(), method.model.parameters()):
                assert torch.equal(t, s) and t.data_ptr() != s.data_ptr()
    step = Step(2 * L, 2, L, total)  # first EMA step: d = 1 - 1/(i - L e0 + 1) = 1 - 1/3
    method(batch, step)
    before = [t.clone() for t in method.teacher.parameters()]
    perturb(method.model, 0.01)
    method.after_optimizer_step(step)
    d = 1 - 1 / 3
    assert method.extra_logs()["ema_decay"] == pytest.approx(d)
    for t, t_old, s in zip(method.teacher.parameters(), before, method.model.parameters()):
        assert torch.allclose(t, d * t_old + (1 - d) * s, atol=1e-6)


def test_warmup_updates_teacher_bn_only_and_returns_sup_loss():
    method = make_method(warmup_epochs=1)
    bn = next(m for m in method.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    out = method(fake_batch(), Step(0, 0, 2, 8))
    assert not torch.equal(bn.running_mean, before)
    assert out["unsup"] == 0 and torch.equal(out["loss"], out["sup"])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_teacher_mode_and_its_bn_statistics(mode):
    method = make_method(warmup_epochs=0, teacher_mode=mode)
    bn = next(m for m in method.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    bn.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    before = bn.running_mean.clone()
    method(fake_batch(), Step(0, 0, 2, 8))
    assert seen == ([True] if mode == "train" else [False, True])  # eval: labels, then a BN-statistics pass
    assert not torch.equal(bn.running_mean, before)


def test_class_shares_of_pseudo_labels_and_labels_are_logged_per_window():
    method = make_method(warmup_epochs=0, cutmix_prob=0.0, unsup_drop_percent=0.0)
    batches = [fake_batch(seed=s) for s in (0, 1)]
    labels, pseudo = torch.zeros(K), torch.zeros(K)
    for i, batch in enumerate(batches):
        method(batch, Step(i, 0, 2, 8))
        labels += torch.bincount(batch["labeled"]["mask"][batch["labeled"]["valid"]], minlength=K)
        with torch.no_grad():  # nothing dropped, no mixing: the pseudo-labels are the teacher's argmax on x_u
            method.teacher.train()
            pred = method.teacher(torch.cat([batch["labeled"]["image"], batch["unlabeled"]["image"]]))["pred"][4:]
        argmax = torch.nn.functional.interpolate(pred, size=(32, 32), mode="bilinear", align_corners=True).argmax(1)
        pseudo += torch.bincount(argmax[batch["unlabeled"]["valid"]], minlength=K)
    logs = method.extra_logs()
    assert logs["label_share"] == pytest.approx((labels / labels.sum()).tolist(), abs=1e-5)
    assert logs["pseudo_label_share"] == pytest.approx((pseudo / pseudo.sum()).tolist(), abs=1e-5)
    assert "label_share" not in method.extra_logs()  # the window restarts after each call


@pytest.mark.parametrize("name", ["selftrain", "dgcl"])
def test_teacher_runs_in_fp32_outside_the_trainers_autocast(name):
    """Reference: the teacher forward is outside autocast, so under bf16/fp16 training its logits (and the
    pseudo-labels, entropies and filters built on them) equal a plain fp32 forward; ``amp`` keeps them inside."""
    batch = fake_batch()
    x_teacher = torch.cat([batch["labeled"]["image"], batch["unlabeled"]["image"]])
    step = Step(iteration=5, epoch=1, iters_per_epoch=4, total_iters=16)  # after the one warm-up epoch
    for precision in ("fp32", "amp"):
        method = make_method(name, proj_dim=8 if name == "dgcl" else 0, teacher_precision=precision)
        seen = []
        method.extra_terms = lambda outputs, seen=seen: seen.append(outputs.teacher_pred) or {}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = method(batch, step)
            assert method.model(x_teacher[:2])["pred"].dtype == torch.bfloat16  # autocast is on for the student
            inside = method.teacher_forward(x_teacher)["pred"]
        assert torch.isfinite(losses["loss"])
        with torch.no_grad():
            reference = method.teacher(x_teacher)["pred"]  # train mode: the same batch statistics
        assert reference.dtype == torch.float32
        if precision == "fp32":
            assert inside.dtype == torch.float32
            assert torch.equal(seen[0], reference)
        else:
            assert inside.dtype == torch.bfloat16
            assert not torch.allclose(seen[0], reference, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- losses


def test_unsup_loss_divides_mean_ce_by_valid_fraction():
    logits = torch.randn(2, K, 4, 4)
    target = torch.randint(0, K, (2, 4, 4))
    target[0] = IGNORE  # half the pixels valid
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE)
    assert torch.allclose(unsup_loss(logits, target), 2 * ce)
    assert unsup_loss(logits, torch.full_like(target, IGNORE)).item() == 0.0


def test_loss_is_mean_over_groups():
    method = make_method(warmup_epochs=0, cutmix_prob=0.0, filter_group_size=2)
    batch = fake_batch()
    torch.manual_seed(1)
    out = method(batch, Step(0, 0, 2, 8))
    assert torch.allclose(out["loss"], out["sup"] + 0.5 * out["unsup"])
    one_group = make_method(warmup_epochs=0, cutmix_prob=0.0, filter_group_size=4)
    torch.manual_seed(1)
    out_one = one_group(batch, Step(0, 0, 2, 8))
    assert not torch.allclose(out["unsup"], out_one["unsup"])  # quantiles are per group


def test_resize_nearest_keeps_ids_and_ignore():
    labels = torch.randint(0, 21, (1, 513, 513))
    labels[0, ::7] = IGNORE
    small = resize_nearest(labels, (129, 129))
    assert set(small.unique().tolist()) <= set(labels.unique().tolist())
    assert (small == IGNORE).any()
    assert torch.equal(resize_nearest(labels.bool(), (129, 129)), small.bool())


# ---------------------------------------------------------------- trainer end to end, exact resume


def test_trainer_end_to_end_and_exact_resume(assert_resume_is_exact):
    method = {"name": "selftrain", "warmup_epochs": 1, "teacher_sync_epochs": 0, "filter_group_size": 2}
    trainer = assert_resume_is_exact(method)
    assert trainer.iters_per_epoch == 2  # 8 unlabeled images, batch 4
    assert list(trainer.method.eval_models()) == ["teacher", "student"]
    assert trainer.method.extra_logs()["ema_decay"] == pytest.approx(0.5)  # i = 3, L e0 = 2
