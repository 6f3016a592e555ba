"""FixMatch and the consistency base (depmatch.md §2, §6, §9.11-12): pseudo-label CE, CutMix, weighting, plug-in."""

import math

import pytest
import torch

from sparseg.build import resolve
from sparseg.config import config_from_dict
from sparseg.engine.trainer import Trainer
from sparseg.methods.base import Step
from sparseg.methods.consistency import PseudoLabels, confident_pixels, unsup_cross_entropy
from sparseg.methods.losses import ohem_cross_entropy

STEP = Step(iteration=3, epoch=0, iters_per_epoch=4, total_iters=8)
NO_PHOTOMETRIC = {"jitter_prob": 0.0, "gray_prob": 0.0, "blur_prob": 0.0}


def test_unsup_ce_keeps_confident_valid_pixels_and_divides_by_valid_count():
    a = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    logits = torch.stack([a, torch.zeros(2, 2)]).unsqueeze(0)  # class-0 logit a, class-1 logit 0
    conf = torch.tensor([[[0.99, 0.50], [0.97, 0.99]]])
    label = torch.tensor([[[0, 1], [1, 0]]])
    valid = torch.tensor([[[True, True], [True, False]]])

    def target(threshold, valid=valid):
        return PseudoLabels(conf, label, valid, confident_pixels(conf, label, valid, threshold))

    ce = {(0, 0): math.log(1 + math.exp(-0.0)), (1, 0): math.log(1 + math.exp(2.0))}  # confident and valid
    expected = sum(ce.values()) / 3  # three valid pixels, two of them confident
    assert unsup_cross_entropy(logits, target(0.95)).item() == pytest.approx(expected, rel=1e-6)
    # τ = 0 passes every valid pixel (§9.12); the invalid one never counts
    everything = ce[0, 0] + math.log(1 + math.exp(1.0)) + ce[1, 0]
    assert unsup_cross_entropy(logits, target(0.0)).item() == pytest.approx(everything / 3, rel=1e-6)
    empty = target(0.0, torch.zeros_like(valid))
    assert unsup_cross_entropy(logits.requires_grad_(), empty).item() == 0.0


def test_per_class_confidence_filter_keeps_each_class_at_the_kept_share():
    # 100 pixels: class 0 confident (0.96-0.99), class 1 (20 pixels) never reaches τ = 0.95
    conf = torch.cat([torch.linspace(0.96, 0.99, 80), torch.linspace(0.5, 0.7, 20)]).view(1, 10, 10)
    label = torch.cat([torch.zeros(80), torch.ones(20)]).long().view(1, 10, 10)
    valid = torch.ones(1, 10, 10, dtype=torch.bool)
    valid[0, 0, 0] = False
    plain = confident_pixels(conf, label, valid, 0.95)
    per_class = confident_pixels(conf, label, valid, 0.95, per_class=True)
    assert not (plain & (label == 1)).any()
    kept_share = float(plain.sum() / valid.sum())  # 79 of 99
    assert int((per_class & (label == 1)).sum()) == pytest.approx(kept_share * 20, abs=1)
    assert conf[per_class & (label == 1)].min() > conf[~per_class & (label == 1)].max()  # the most confident
    assert (plain <= per_class).all() and not per_class[~valid].any()
    nothing = confident_pixels(conf, label, valid, 1.0, per_class=True)  # τ keeps nothing: nor does a class
    assert not nothing.any()


def test_strong_view_and_pseudo_labels_share_one_box(make_consistency):
    method = make_consistency("fixmatch", cutmix_prob=1.0, **NO_PHOTOMETRIC)
    n, size = 4, 32
    x_u = torch.arange(n, dtype=torch.float).div(n).view(n, 1, 1, 1).expand(n, 3, size, size).clone()
    partner = method.partner(n, x_u.device)
    assert partner.tolist() == [1, 2, 3, 0]  # roll
    image, boxes = method.strong_view(x_u, partner, STEP, 0)
    assert boxes.any(dim=(1, 2)).all()
    for i in range(n):
        assert torch.equal(image[i, 0], torch.where(boxes[i], x_u[partner[i], 0], x_u[i, 0]))
    logits = torch.randn(n, 3, size, size)
    valid = torch.ones(n, size, size, dtype=torch.bool)
    valid[2, :, -5:] = False
    weak = PseudoLabels.from_logits(logits, valid, 0.5, keep_probs=True)
    mixed = weak.mixed(boxes, partner)
    for field in ("conf", "label", "valid", "keep"):
        own, pasted = getattr(weak, field), getattr(weak, field)[partner]
        assert torch.equal(getattr(mixed, field), torch.where(boxes, pasted, own)), field
    assert torch.equal(mixed.probs.argmax(1), mixed.label)
    # the draws are a function of (seed, iteration, purpose): the same step gives the same view
    again, again_boxes = method.strong_view(x_u, partner, STEP, 0)
    assert torch.equal(again, image) and torch.equal(again_boxes, boxes)
    other, _ = method.strong_view(x_u, partner, Step(4, 1, 4, 8), 0)
    assert not torch.equal(other, image)


@pytest.mark.parametrize("teacher", ["online", "ema"])
def test_loss_is_half_of_labeled_plus_unlabeled(make_consistency, consistency_batch, teacher):
    method = make_consistency("fixmatch", teacher=teacher, threshold=0.0)
    out = method(consistency_batch(), STEP)
    assert set(out) == {"loss", "sup", "unsup_s1"}
    assert out["loss"].item() == pytest.approx(0.5 * (out["sup"] + out["unsup_s1"]).item(), rel=1e-6)
    expected_models = ["student"] if teacher == "online" else ["teacher", "student"]
    assert list(method.eval_models()) == expected_models
    assert 0.0 <= method.extra_logs()["mask_ratio"] <= 1.0


def test_labeled_loss_can_be_ohem(make_consistency, consistency_batch):
    method = make_consistency("fixmatch", labeled_loss="ohem", ohem_thresh=0.7, ohem_min_kept=10)
    batch = consistency_batch()
    out = method(batch, STEP)
    x_l, mask = batch["labeled"]["image"], batch["labeled"]["mask"]
    pred = method.model(torch.cat([x_l, batch["unlabeled"]["image"]]))["pred"][: len(x_l)]  # the same BN batch
    assert out["sup"].item() == pytest.approx(ohem_cross_entropy(pred, mask, 0.7, 10).item(), rel=1e-5)


def test_plugin_gets_one_view_and_its_terms_enter_the_bracket(make_consistency, consistency_batch, recording_plugin):
    method = make_consistency("fixmatch", cutmix_prob=1.0, threshold=0.0, depmatch={"lambda_cdp": 0.03})
    batch = consistency_batch()
    out = method(batch, STEP)
    plugin = recording_plugin.instances[-1]
    assert plugin.options.lambda_cdp == 0.03 and plugin.num_classes == 3  # the section typed at load
    (view,) = plugin.views
    assert view.weight == 1.0
    n, k, size = 4, 3, 32
    assert view.logits.shape[:2] == (n, k) and view.logits.requires_grad and view.feature.requires_grad
    assert view.teacher_probs.shape == (n, k, size, size)
    assert torch.equal(view.pseudo_label, view.teacher_probs.argmax(1))
    partner = method.partner(n, view.source.device)
    depth = batch["unlabeled"]["depth"]
    assert torch.equal(view.depth, torch.where(view.source, depth[partner], depth))
    depth_valid = batch["unlabeled"]["depth_valid"]
    assert torch.equal(view.depth_valid, torch.where(view.source, depth_valid[partner], depth_valid))
    valid = batch["unlabeled"]["valid"]
    assert torch.equal(view.valid, torch.where(view.source, valid[partner], valid))
    out["loss"].backward()
    assert plugin.term.grad.item() == pytest.approx(0.5)  # ½ [... + plug-in terms]
    assert out["loss"].item() == pytest.approx(0.5 * (out["sup"] + out["unsup_s1"] + 0.25).item(), rel=1e-6)


def test_trainer_end_to_end(semi_run_config):
    trainer = Trainer(*resolve(config_from_dict(semi_run_config({"name": "fixmatch"}, "fixmatch"))), quiet=True)
    result = trainer.fit()
    assert trainer.iteration == 4 and 0.0 <= result.miou <= 100.0
