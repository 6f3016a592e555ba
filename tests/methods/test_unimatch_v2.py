"""UniMatch V2 (depmatch.md §2, §6, §9.12): complementary dropout, EMA teacher, weighting, exact resume, DPT."""

import pytest
import torch

from sparseg.build import resolve
from sparseg.config import config_from_dict
from sparseg.engine.trainer import Trainer
from sparseg.methods.base import Step, step_generator
from sparseg.methods.unimatch_v2 import complementary_masks

STEP = Step(iteration=5, epoch=1, iters_per_epoch=4, total_iters=8)


@pytest.mark.parametrize("n", [1, 4, 5])
def test_complementary_masks_sum_to_two_with_half_the_pairs_undropped(n):
    masks = complementary_masks(n, 64, step_generator(0, 3, "drop"))
    first, second = masks[:n], masks[n:]
    assert masks.shape == (2 * n, 64)
    assert torch.equal(first + second, torch.full((n, 64), 2.0))  # §9.12: sum to 2 per channel
    undropped = (first == 1).all(1)
    assert int(undropped.sum()) == n // 2  # exactly ⌊B/2⌋ pairs left undropped
    assert set(first[~undropped].unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(masks, complementary_masks(n, 64, step_generator(0, 3, "drop")))


def test_defaults_are_the_v2_recipe(make_consistency):
    method = make_consistency("unimatch_v2")
    assert method.cfg.teacher == "ema" and method.cfg.cutmix_partner == "reverse"
    assert method.partner(5, torch.device("cpu")).tolist() == [4, 3, 2, 1, 0]
    assert list(method.eval_models()) == ["teacher", "student"]


def test_ema_averages_parameters_and_buffers_with_the_capped_ramp(make_consistency):
    method = make_consistency("unimatch_v2", ema_momentum=0.996)
    student, teacher = method.model, method.teacher
    with torch.no_grad():
        for p in student.parameters():
            p.fill_(1.0)
    student.reduce[1].running_mean.fill_(1.0)
    method.after_optimizer_step(Step(0, 0, 4, 8))  # α(0) = 0: the teacher becomes the student
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))
    assert torch.equal(teacher.reduce[1].running_mean, student.reduce[1].running_mean)
    with torch.no_grad():
        for p in teacher.parameters():
            p.fill_(3.0)
    teacher.reduce[1].running_mean.fill_(3.0)
    student.reduce[1].num_batches_tracked.fill_(7)
    method.after_optimizer_step(Step(9, 2, 4, 40))  # α = 1 − 1/10 = 0.9
    assert method.extra_logs()["ema_decay"] == pytest.approx(0.9)
    assert all(torch.allclose(t, torch.full_like(t, 2.8)) for t in teacher.parameters())
    assert torch.allclose(teacher.reduce[1].running_mean, torch.full((48,), 2.8))
    assert teacher.reduce[1].num_batches_tracked.item() == 7  # integer buffers are copied
    method.after_optimizer_step(Step(10_000, 99, 4, 20_000))
    assert method.extra_logs()["ema_decay"] == 0.996  # capped


def test_loss_is_half_of_labeled_plus_mean_of_views(make_consistency, consistency_batch):
    method = make_consistency("unimatch_v2", threshold=0.0)
    out = method(consistency_batch(), STEP)
    assert set(out) == {"loss", "sup", "unsup_s1", "unsup_s2"}
    expected = 0.5 * (out["sup"] + 0.5 * (out["unsup_s1"] + out["unsup_s2"]))
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert not method.teacher.training  # the EMA teacher predicts in eval mode


def test_plugin_sees_half_weights_and_the_undropped_feature(make_consistency, consistency_batch, recording_plugin):
    method = make_consistency("unimatch_v2", depmatch={})
    batch = consistency_batch()
    out = method(batch, STEP)
    views = recording_plugin.instances[-1].views
    assert [v.weight for v in views] == [0.5, 0.5]
    x_u = batch["unlabeled"]["image"]
    partner = method.partner(len(x_u), x_u.device)
    strong = torch.cat([method.strong_view(x_u, partner, STEP, v)[0] for v in range(2)])
    undropped = method.model.decode(method.model.encode(strong))["fts"]
    assert torch.allclose(torch.cat([v.feature for v in views]), undropped, atol=1e-5)
    dropped = method.run_student(batch["labeled"]["image"], x_u, list(strong.split(len(x_u))), STEP)
    assert not torch.allclose(dropped.strong[0]["pred"], method.model(strong)["pred"][: len(x_u)], atol=1e-3)
    out["loss"].backward()
    assert recording_plugin.instances[-1].term.grad.item() == pytest.approx(0.5)


def test_resume_is_exact(assert_resume_is_exact):
    """4 iterations straight == 2, crash, resume, 2 (student, EMA teacher, optimizer-driven state)."""
    trainer = assert_resume_is_exact({"name": "unimatch_v2", "cutmix_prob": 1.0})
    assert any(key.startswith("teacher.") for key in trainer.method.state_dict())


def test_trainer_end_to_end_with_tiny_dpt(semi_run_config, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=28
    )
    transformers.Dinov2Model(config).save_pretrained(tmp_path / "dinov2_tiny")
    model = {"name": "dpt", "encoder": "dinov2_small", "pretrained": str(tmp_path / "dinov2_tiny"),
             "dpt_layers": [0, 1, 2, 3]}
    raw = semi_run_config({"name": "unimatch_v2"}, "dpt", model=model)
    raw["optim"] = {"name": "adamw", "base_lr": 1e-4, "head_lr_mult": 10.0, "weight_decay": 0.01}
    trainer = Trainer(*resolve(config_from_dict(raw)), quiet=True)
    result = trainer.fit()
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert trainer.iteration == 4 and 0.0 <= result.miou <= 100.0
