"""What a consistency method hands a plug-in for each strong view (depmatch.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StrongView:
    """One CutMixed strong view of the unlabeled batch, as the student saw it.

    Spatial maps at input resolution are [B,H,W]; model outputs keep the model's resolution.
    """

    logits: torch.Tensor  # student logits [B,K,h,w] (model resolution, with gradient)
    feature: torch.Tensor  # student decoder feature [B,C,h',w'] the plug-in regularises (with gradient)
    teacher_probs: torch.Tensor  # teacher softmax on the weak view, CutMixed like the image [B,K,H,W]
    pseudo_label: torch.Tensor  # argmax of teacher_probs, int64 [B,H,W]
    valid: torch.Tensor  # bool [B,H,W]: False on crop padding (and ignore)
    source: torch.Tensor  # bool [B,H,W]: True where the pixel was pasted from the CutMix partner
    weight: float  # this view's CE weight in the method's total loss
    # depth of the composite weak crop as the dataset gives it (d~ in [0,1] under data.depth_norm: robust),
    # CutMixed with the view's box [B,H,W]; DepMatch turns it into working depth d' (depmatch.md §3)
    depth: torch.Tensor | None = None
    depth_valid: torch.Tensor | None = None  # bool [B,H,W], CutMixed like depth: False where no depth (None: all)
    # the CutMix-composited weak crop [B,3,H,W] in [0, 1] (the teacher's input with the box pasted): what an
    # online depth estimator sees (depth_source: online, depmatch.md §3)
    weak_image: torch.Tensor | None = None
