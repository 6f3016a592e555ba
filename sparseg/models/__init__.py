"""Segmentation models: ``create_model(cfg.model, num_classes)`` (docs/architecture.md, "Model")."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from sparseg.config import ModelConfig
from sparseg.models.deeplabv3plus import DeepLabV3Plus, SegmentationModel
from sparseg.models.dpt import DINOV2_PRESETS, DPT, dinov2_encoder
from sparseg.models.resnet import ResNet
from sparseg.models.weights import (
    TRAINED_FORMAT,
    LoadReport,
    WeightsError,
    load_encoder_weights,
    load_pretrained_model,
    load_trained_model,
    read_pretrained,
)
from sparseg.registry import Registry

logger = logging.getLogger(__name__)

MODELS: Registry[Callable[[ModelConfig, int], SegmentationModel]] = Registry("model")


def _resnet(cfg: ModelConfig) -> ResNet:
    return ResNet(
        depth=int(cfg.encoder.removeprefix("resnet")),
        stem=cfg.stem,
        width=cfg.width,
        output_stride=cfg.output_stride,
        multi_grid=cfg.multi_grid,
    )


@MODELS.register("deeplabv3plus")
def _deeplabv3plus(cfg: ModelConfig, num_classes: int) -> DeepLabV3Plus:
    model = DeepLabV3Plus(
        _resnet(cfg),
        num_classes,
        aspp_rates=cfg.aspp_rates,
        decoder_channels=cfg.decoder_channels,
        dropout=cfg.dropout,
        proj_dim=cfg.proj_dim,
        aux_head=cfg.aux_head,
    )
    if cfg.pretrained:
        _load_resnet_weights(model.encoder, cfg)
    return model


@MODELS.register("dpt")
def _dpt(cfg: ModelConfig, num_classes: int) -> DPT:
    """DINOv2 + DPT; ``cfg.pretrained`` is a Hugging Face directory or hub id (sparseg/models/dpt.py)."""
    preset = DINOV2_PRESETS[cfg.encoder]
    return DPT(
        dinov2_encoder(cfg.encoder, cfg.pretrained),
        num_classes,
        layers=cfg.dpt_layers or preset.layers,
        features=preset.features,
        out_channels=preset.out_channels,
    )


def _load_resnet_weights(encoder: ResNet, cfg: ModelConfig) -> None:
    report = load_encoder_weights(encoder, cfg.pretrained, cfg.pretrained_layout)
    logger.info("model.pretrained: encoder weights from %s: %s", cfg.pretrained, report)
    if report.unexpected:
        logger.warning(
            "%d keys in %s are not in the encoder: %s",
            len(report.unexpected),
            cfg.pretrained,
            ", ".join(report.unexpected[:10]),
        )


def probe_forward(model: nn.Module, size: int = 112) -> dict[str, torch.Tensor]:
    """The outputs for one zero image of ``size`` x ``size`` (112: a multiple of 14 and 16) in eval mode and
    without gradients, every module's mode restored afterwards: how a method reads the feature grid and sizes."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for module, training in modes:
            module.training = training


def list_models() -> list[str]:
    """Registered model names (values of ``model.name``)."""
    return MODELS.names()


def _sparseg_pretrained(cfg: ModelConfig) -> dict | None:
    """The ``sparseg pretrain`` file named by ``model.pretrained``, if it is one (layout ``auto`` or ``sparseg``)."""
    if not cfg.pretrained or cfg.pretrained_layout not in ("auto", "sparseg"):
        return None
    path = Path(cfg.pretrained)
    if cfg.pretrained_layout == "sparseg" and not path.is_file():
        raise WeightsError(f"model.pretrained: {path} not found (layout sparseg needs a `sparseg pretrain` file)")
    contents = read_pretrained(path) if path.is_file() else None
    if contents is None and cfg.pretrained_layout == "sparseg":
        raise WeightsError(f"model.pretrained: {path} is neither a `sparseg pretrain` file (OUT/pretrained.pt) nor "
                           "a `sparseg train` checkpoint; set model.pretrained_layout to auto for other weights")
    return contents


def create_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Build model ``cfg.name`` and load ``cfg.pretrained``: a ``sparseg pretrain`` file fills the encoder and
    decoder, a ``sparseg train`` checkpoint the whole model (heads where they fit); other weights files fill the
    encoder (the factory's job). Each load is reported in one line on the ``sparseg`` logger."""
    pretrained = _sparseg_pretrained(cfg)
    if pretrained is None:
        return MODELS.get(cfg.name)(cfg, num_classes)
    model = MODELS.get(cfg.name)(cfg.model_copy(update={"pretrained": None}), num_classes)
    if pretrained["format"] == TRAINED_FORMAT:
        report = load_trained_model(model, pretrained, cfg.pretrained)
        logger.info("model.pretrained: whole model from %s: %s", cfg.pretrained, report)
    else:
        report = load_pretrained_model(model, pretrained, cfg.pretrained, rescale=cfg.pretrained_rescale)
        logger.info("model.pretrained: encoder and decoder from %s: %s", cfg.pretrained, report)
    return model


__all__ = [
    "DPT",
    "MODELS",
    "DeepLabV3Plus",
    "LoadReport",
    "ResNet",
    "SegmentationModel",
    "WeightsError",
    "create_model",
    "list_models",
    "load_encoder_weights",
    "probe_forward",
]
