"""UniMatch V1 (depmatch.md §2, §6): feature perturbation path, loss weighting, plug-in views, trainer."""

import pytest
import torch

from sparseg.build import resolve
from sparseg.config import config_from_dict
from sparseg.engine.trainer import Trainer
from sparseg.methods.base import Step, step_generator
from sparseg.methods.unimatch import channel_dropout

STEP = Step(iteration=5, epoch=1, iters_per_epoch=4, total_iters=8)


def test_channel_dropout_drops_whole_channels_and_rescales():
    features = {"layer1": torch.ones(8, 64, 3, 3), "layer4": torch.ones(8, 128, 2, 2)}
    dropped = channel_dropout(features, 0.5, step_generator(0, 1, "fp"))
    for name, x in dropped.items():
        assert set(x.unique().tolist()) <= {0.0, 2.0}
        assert torch.equal(x.amax(dim=(2, 3)), x.amin(dim=(2, 3))), name  # one value per (image, channel)
        assert 0.35 < (x[:, :, 0, 0] == 0).float().mean() < 0.65
    again = channel_dropout(features, 0.5, step_generator(0, 1, "fp"))
    assert all(torch.equal(dropped[k], again[k]) for k in features)
    assert not torch.equal(dropped["layer1"][:, :, 0, 0], dropped["layer4"][:, :64, 0, 0])  # a mask per map


def test_model_decodes_perturbed_encoder_maps(make_consistency, consistency_batch):
    method = make_consistency("unimatch")
    model = method.model.eval()
    x = consistency_batch()["unlabeled"]["image"]
    direct, split = model(x), model.decode(model.encode(x))
    assert direct.keys() == split.keys()
    assert all(torch.equal(direct[k], split[k]) for k in direct)
    model.train()
    # p = 0 perturbs nothing: the fp logits equal the clean weak logits (BN sees [A; A])
    batch = consistency_batch()
    lossless = make_consistency("unimatch", fp_dropout=0.0)
    out = lossless.run_student(batch["labeled"]["image"], batch["unlabeled"]["image"], [x, x], STEP)
    assert torch.allclose(out.fp, out.weak, atol=1e-5)
    perturbed = method.run_student(batch["labeled"]["image"], batch["unlabeled"]["image"], [x, x], STEP)
    assert not torch.allclose(perturbed.fp, perturbed.weak, atol=1e-3)
    assert perturbed.fp.requires_grad and len(perturbed.strong) == 2


def test_loss_is_half_of_labeled_quarter_views_and_half_fp(make_consistency, consistency_batch):
    method = make_consistency("unimatch", threshold=0.0)
    out = method(consistency_batch(), STEP)
    assert set(out) == {"loss", "sup", "unsup_s1", "unsup_s2", "fp"}
    expected = 0.5 * (out["sup"] + 0.25 * out["unsup_s1"] + 0.25 * out["unsup_s2"] + 0.5 * out["fp"])
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_plugin_views_carry_quarter_weights_and_own_boxes(make_consistency, consistency_batch, recording_plugin):
    method = make_consistency("unimatch", cutmix_prob=1.0, depmatch={})
    out = method(consistency_batch(), STEP)
    views = recording_plugin.instances[-1].views
    assert [v.weight for v in views] == [0.25, 0.25]
    assert not torch.equal(views[0].source, views[1].source)  # each view draws its own box
    out["loss"].backward()
    assert recording_plugin.instances[-1].term.grad.item() == pytest.approx(0.25)  # ½ · Σ_s w_s · λ (1)


def test_trainer_end_to_end(semi_run_config):
    trainer = Trainer(*resolve(config_from_dict(semi_run_config({"name": "unimatch"}, "unimatch"))), quiet=True)
    trainer.fit()
    assert trainer.iteration == 4 and set(trainer.method.extra_logs()) == {"mask_ratio"}
