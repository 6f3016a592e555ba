"""Supervised baseline: cross-entropy (or OHEM) on fully labeled images."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from sparseg.methods import register_method
from sparseg.methods.base import Method, MethodConfig, Step
from sparseg.methods.losses import cross_entropy, ohem_cross_entropy


class SupervisedConfig(MethodConfig):
    loss: Literal["ce", "ohem"] = "ce"
    ohem_thresh: float = Field(0.7, gt=0, le=1)
    ohem_min_kept: int = Field(100_000, ge=0)
    aux_weight: float = Field(0.4, ge=0)  # used when the model has an aux head


def supervised_loss(cfg: SupervisedConfig, out: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """L_sup on the model outputs for labeled images (dgcl.md §2), with the aux term when present (unweighted:
    its weight is ``cfg.aux_weight``)."""

    def loss_fn(logits: torch.Tensor) -> torch.Tensor:
        if cfg.loss == "ohem":
            return ohem_cross_entropy(logits, mask, cfg.ohem_thresh, cfg.ohem_min_kept)
        return cross_entropy(logits, mask)

    terms = {"sup": loss_fn(out["pred"])}
    if "aux" in out:
        terms["aux"] = loss_fn(out["aux"])
    return terms


@register_method("supervised")
class Supervised(Method):
    Config = SupervisedConfig

    def loss_terms(self, batch, step: Step):
        labeled = batch["labeled"]
        return supervised_loss(self.cfg, self.model(labeled["image"]), labeled["mask"])

    def loss_weights(self) -> dict[str, float]:
        return {"aux": self.cfg.aux_weight}
