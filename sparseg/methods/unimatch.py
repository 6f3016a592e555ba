"""UniMatch V1: two strong views and a feature-perturbed weak view (depmatch.md §2, §6).

L = ½ [L_x + ¼ L_s1 + ¼ L_s2 + ½ L_fp], where L_fp is the CE of the decoder run on the weak view's
encoder maps with channel dropout (Dropout2d, p = ``fp_dropout``) against the unmixed pseudo-labels.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from sparseg.methods import register_method
from sparseg.methods.consistency import ConsistencyConfig, ConsistencyMethod, StudentOutputs, split_outputs


class UniMatchConfig(ConsistencyConfig):
    fp_dropout: float = Field(0.5, ge=0, lt=1)  # channel dropout of the feature perturbation


def channel_dropout(features: dict[str, Tensor], p: float, generator: torch.Generator) -> dict[str, Tensor]:
    """Dropout2d on every map [B,C,h,w] with an explicit generator: each (image, channel) is zeroed with
    probability ``p``, the others scaled by 1/(1 − p)."""
    dropped = {}
    for name, x in features.items():
        keep = torch.rand(x.shape[:2], generator=generator, device=generator.device) >= p
        dropped[name] = x * (keep / (1 - p)).to(x)[..., None, None]
    return dropped


@register_method("unimatch")
class UniMatch(ConsistencyMethod):
    """UniMatch V1 (``unimatch.py`` of LiheYoung/UniMatch)."""

    Config = UniMatchConfig
    num_views = 2
    view_weight = 0.25
    fp_weight = 0.5

    def run_student(self, x_l, x_u, strong, step) -> StudentOutputs:
        """[x_l; x_w] through the encoder, the decoder on its maps and on dropped copies in one batch;
        then [s1; s2] unperturbed."""
        n = len(x_l) + len(x_u)
        features = self.model.encode(torch.cat([x_l, x_u]))
        dropped = channel_dropout(features, self.cfg.fp_dropout, self.generator(step, "fp"))
        clean, perturbed = split_outputs(
            self.model.decode({k: torch.cat([v, dropped[k]]) for k, v in features.items()}), [n, n]
        )
        labeled, weak = split_outputs(clean, [len(x_l), len(x_u)])
        strong_out = split_outputs(self.model(torch.cat(strong)), [len(x_u)] * 2)
        return StudentOutputs(labeled, strong_out, weak=weak["pred"], fp=perturbed["pred"][len(x_l):])
