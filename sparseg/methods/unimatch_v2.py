"""UniMatch V2: EMA teacher, two strong views with Complementary Dropout (depmatch.md §2, §6).

L = ½ [L_x + ½ (L_s1 + L_s2)]. The strong batch [s1; s2] goes through the encoder once; its maps are
scaled per channel by 2m for s1 and 2(1 − m) for s2, m ~ Bernoulli(0.5), with ⌊B/2⌋ random image pairs
left undropped; the same mask acts on every map (the first C channels of one mask for maps of C channels).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from sparseg.methods import register_method
from sparseg.methods.consistency import ConsistencyConfig, ConsistencyMethod, StudentOutputs, split_outputs


class UniMatchV2Config(ConsistencyConfig):
    teacher: Literal["online", "ema"] = "ema"
    cutmix_partner: Literal["roll", "reverse"] = "reverse"


def complementary_masks(n: int, channels: int, generator: torch.Generator) -> Tensor:
    """Channel scales [2n, C] for [s1; s2]: rows i and n + i sum to 2; ⌊n/2⌋ random pairs are all ones."""
    m = (torch.rand(n, channels, generator=generator, device=generator.device) < 0.5).float() * 2.0
    m[torch.randperm(n, generator=generator, device=generator.device)[: n // 2]] = 1.0
    return torch.cat([m, 2.0 - m])


@register_method("unimatch_v2")
class UniMatchV2(ConsistencyMethod):
    """UniMatch V2 (``unimatch_v2.py`` of LiheYoung/UniMatch-V2)."""

    Config = UniMatchV2Config
    num_views = 2
    view_weight = 0.5
    demo_overrides: ClassVar[dict[str, Any]] = {"iters": 200, "method": {"ema_momentum": 0.98}}  # a teacher horizon of ~50 of 200 steps

    def run_student(self, x_l, x_u, strong, step) -> StudentOutputs:
        """x_l alone ([x_l; x_w] with the online teacher), then [s1; s2] with complementary dropout (§2 step 3)."""
        weak = None
        if self.teacher is None:
            labeled, weak_out = split_outputs(self.model(torch.cat([x_l, x_u])), [len(x_l), len(x_u)])
            weak = weak_out["pred"]
        else:
            labeled = self.model(x_l)
        features = self.model.encode(torch.cat(strong))
        width = max(f.shape[1] for f in features.values())
        masks = complementary_masks(len(x_u), width, self.generator(step, "drop")).to(x_u.device)
        dropped = {k: v * masks[:, : v.shape[1], None, None].to(v) for k, v in features.items()}
        strong_out = split_outputs(self.model.decode(dropped), [len(x_u)] * 2)
        if self.plugin is not None and self.plugin.cddp_feature == "undropped":
            # depmatch.md §4.2: the plug-in regularises a second head pass on the undropped maps
            undropped = self.model.decode(features)["fts"].split(len(x_u))
            for view, fts in zip(strong_out, undropped):
                view["fts"] = fts
        return StudentOutputs(labeled, strong_out, weak=weak)
