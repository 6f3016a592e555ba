"""Evaluation: confusion-matrix metrics, inference protocols, dataset-wide evaluation, visualisation."""

from sparseg.eval.evaluate import EvalResult, describe_protocol, evaluate, format_table
from sparseg.eval.inference import center_crop, default_stride, predict_probs
from sparseg.eval.metrics import ConfusionMatrix, all_reduce_sum
from sparseg.eval.visualize import colorize, default_palette, overlay, save_mask_png

__all__ = [
    "ConfusionMatrix",
    "EvalResult",
    "all_reduce_sum",
    "center_crop",
    "colorize",
    "default_palette",
    "default_stride",
    "describe_protocol",
    "evaluate",
    "format_table",
    "overlay",
    "predict_probs",
    "save_mask_png",
]
