"""FixMatch with CutMix: one strong view, L = ½ (L_x + L_u) (depmatch.md §2, §6)."""

from __future__ import annotations

import torch

from sparseg.methods import register_method
from sparseg.methods.consistency import ConsistencyMethod, StudentOutputs, split_outputs


@register_method("fixmatch")
class FixMatch(ConsistencyMethod):
    """``teacher: online`` is UniMatch's FixMatch, ``teacher: ema`` UniMatch V2's."""

    num_views = 1
    view_weight = 1.0

    def run_student(self, x_l, x_u, strong, step) -> StudentOutputs:
        (s1,) = strong
        sizes = [len(x_l), len(x_u)]
        if self.teacher is None:  # labeled and weak images in one batch, the strong view apart
            labeled, weak = split_outputs(self.model(torch.cat([x_l, x_u])), sizes)
            return StudentOutputs(labeled, [self.model(s1)], weak=weak["pred"])
        labeled, strong_out = split_outputs(self.model(torch.cat([x_l, s1])), sizes)
        return StudentOutputs(labeled, [strong_out])
