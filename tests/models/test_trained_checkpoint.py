"""A `sparseg train` checkpoint as `model.pretrained`: the whole model (teacher where there is one), heads where
they fit, one report line, and the teacher of a semi-supervised method started from the same weights."""

import logging

import pytest
import torch

from sparseg.config import ModelConfig
from sparseg.methods import create_method, method_class
from sparseg.methods.base import MethodContext
from sparseg.models import WeightsError, create_model

K = 3
TINY = {"encoder": "resnet18", "stem": "plain", "width": 8, "decoder_channels": 16, "dropout": 0.0}


def trained_checkpoint(path, name, num_classes=K, **model_options):
    """A training checkpoint of method ``name`` whose teacher (if any) differs from its student."""
    model_cfg = ModelConfig(**{**TINY, **model_options})
    torch.manual_seed(1)
    cfg = method_class(name).Config(**({"teacher": "ema"} if name == "fixmatch" else {}))
    method = create_method(name, create_model(model_cfg, num_classes), cfg, MethodContext(num_classes))
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(0.5)
        for p in getattr(method, "teacher", None).parameters() if getattr(method, "teacher", None) else ():
            p.sub_(0.25)
    torch.save({"config": {"method": {"name": name}, "model": model_cfg.model_dump()}, "num_classes": num_classes,
                "iteration": 7, "method": method.state_dict()}, path)
    return getattr(method, "teacher", None) or method.model


@pytest.mark.parametrize("name", ["supervised", "selftrain", "fixmatch", "agmm"])
def test_each_method_family_loads_its_reported_model(tmp_path, name, caplog):
    expected = trained_checkpoint(tmp_path / "last.pt", name)
    with caplog.at_level(logging.INFO, logger="sparseg"):
        model = create_model(ModelConfig(**TINY, pretrained=str(tmp_path / "last.pt")), K)
    for key, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    source = "teacher" if name in ("selftrain", "fixmatch") else "model"
    (line,) = [r.getMessage() for r in caplog.records if "model.pretrained" in r.getMessage()]
    assert str(tmp_path / "last.pt") in line and f"{source} of a '{name}' run at iteration 7" in line


def test_another_class_count_keeps_the_heads_at_their_initialisation(tmp_path, caplog):
    trained = trained_checkpoint(tmp_path / "last.pt", "supervised", num_classes=5)
    torch.manual_seed(2)
    fresh = create_model(ModelConfig(**TINY), K)
    torch.manual_seed(2)
    with caplog.at_level(logging.INFO, logger="sparseg"):
        model = create_model(ModelConfig(**TINY, pretrained=str(tmp_path / "last.pt")), K)
    assert torch.equal(model.encoder.conv1.weight, trained.encoder.conv1.weight)
    assert torch.equal(model.classifier.weight, fresh.classifier.weight)
    assert "heads kept at their initialisation: classifier" in caplog.text


def test_another_encoder_is_refused(tmp_path):
    trained_checkpoint(tmp_path / "last.pt", "supervised", encoder="resnet34")
    with pytest.raises(WeightsError, match="does not fit this model.*trained with model.name=deeplabv3plus"):
        create_model(ModelConfig(**TINY, pretrained=str(tmp_path / "last.pt")), K)


def test_a_semi_supervised_teacher_starts_from_the_loaded_weights(tmp_path):
    trained_checkpoint(tmp_path / "last.pt", "supervised")
    model = create_model(ModelConfig(**TINY, pretrained=str(tmp_path / "last.pt")), K)
    method = create_method("selftrain", model, method_class("selftrain").Config(), MethodContext(K))
    for (key, teacher), student in zip(method.teacher.state_dict().items(), method.model.state_dict().values()):
        assert torch.equal(teacher, student), key
