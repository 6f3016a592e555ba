"""``sparseg demo``: the embedded default run on generated data, CPU-sized, no downloads.

Supervised methods train on every generated training image. Semi-supervised methods (those with an
``unlabeled`` stream) keep labels for 1/8 of them, and the demo also trains the supervised baseline on
the same labeled images so the two can be compared. Sparse-label methods (a ``label_kind`` attribute:
points, clicks or scribbles) train on that kind of labels, synthesised once from the dense masks. A
method can adjust the demo config through its ``demo_overrides`` attribute.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

from sparseg.config import ConfigError, config_from_dict
from sparseg.data import SYNTHETIC_CLASSES, create_dataset_spec, make_synthetic_dataset, sparsify_list, write_splits
from sparseg.methods import method_class

DEMO_IMAGES = {"n_train": 240, "n_val": 48, "size": 64}
DEMO_LABELED = "1/8"
DEMO_PLUGINS = {  # the synthetic data has true procedural depth (depmatch.md §3)
    # L2-normalised CDDP features: with the raw DeepLabV3+ feature the default preset costs ~7 mIoU on the
    # demo, with normalised ones it matches FixMatch (docs/methods/depmatch.md, "Feature scale")
    "depmatch": {"method": {"depmatch": {"cddp": {"feat_norm": "l2"}}}, "data": {"depth_dir": "depth"}},
}


def cache_dir() -> Path:
    return Path(os.environ.get("SPARSEG_CACHE", Path.home() / ".cache" / "sparseg"))


DEMO_ITERS = 1500


def demo_config(root: Path, out: Path, method: str = "supervised", seed: int = 0, iters: int = DEMO_ITERS,
                **data: Any) -> dict[str, Any]:
    """A small, CPU-friendly run on the synthetic data (a plain dict, validated by the caller)."""
    return {
        "seed": seed,
        "out": str(out),
        "data": {
            "dataset": "synthetic", "root": str(root), "train_list": "train.txt", "val_list": "val.txt",
            "crop_size": 64, "scale_range": [0.75, 1.5], "batch_size": 8, "workers": 0, **data,
        },
        "model": {
            "encoder": "resnet18", "stem": "plain", "width": 32, "output_stride": 16,
            "aspp_rates": [2, 4, 6], "decoder_channels": 64, "dropout": 0.0,
        },
        "optim": {"base_lr": 0.05, "head_lr_mult": 1.0, "weight_decay": 1e-4},
        "train": {"iters": iters, "eval_every": max(iters // 4, 1), "log_every": 10, "device": "cpu"},
        "eval": {"mode": "whole"},
        "method": {"name": method},
    }


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _train(raw: dict[str, Any]):
    from sparseg.engine.trainer import train

    return train(config_from_dict(raw), overwrite=True)


def _write_predictions(run_dir: Path, root: Path, n: int = 8) -> Path:
    from sparseg.cli import main as cli_main

    val_images = [root / line.split()[0] for line in (root / "val.txt").read_text().splitlines()[:n]]
    out = run_dir / "predictions"
    cli_main(["predict", str(run_dir / "last.pt"), *map(str, val_images), "--out", str(out), "--overlay"])
    return out


def run_demo(method: str = "supervised", out: Path = Path("runs/demo"), iters: int | None = None,
             seed: int = 0) -> dict[str, float]:
    """Generate the data (cached), train, evaluate, write predictions and curves; return mIoUs."""
    from sparseg.eval import format_table

    started = time.perf_counter()
    name, _, plugin = method.partition("+")  # NAME+PLUGIN: method NAME with the plug-in's default preset
    cls = method_class(name)
    if plugin and plugin not in DEMO_PLUGINS:
        raise ConfigError(f"--method {method}: unknown plug-in '{plugin}' (known: {', '.join(DEMO_PLUGINS)})")
    root = make_synthetic_dataset(cache_dir() / "synthetic", seed=0, **DEMO_IMAGES)
    overrides = _merge(copy.deepcopy(getattr(cls, "demo_overrides", {})), copy.deepcopy(DEMO_PLUGINS.get(plugin, {})))
    method_iters = overrides.pop("iters", DEMO_ITERS)  # popped even with --iters: not a config key
    n_iters = iters or method_iters
    results: dict[str, float] = {}
    data: dict[str, Any] = {}
    label_kind = getattr(cls, "label_kind", None)
    if label_kind is not None:
        sparse_dir = root / "sparse" / label_kind
        spec = create_dataset_spec(config_from_dict(demo_config(root, out)).data)
        summary = sparsify_list(root / "train.txt", root, spec, label_kind, 0, sparse_dir)["summary"]
        print(f"demo: '{method}' trains on {label_kind} synthesised from the dense masks "
              f"({summary['labeled_fraction_mean']:.2%} of the pixels labeled)")
        data = {"train_list": str((sparse_dir / "train.txt").relative_to(root)), "label_format": "sparse"}
    if "unlabeled" in cls.streams:
        split_dir = root / "splits" / DEMO_LABELED.replace("/", "_")
        if not (split_dir / "labeled.txt").exists():
            spec = create_dataset_spec(config_from_dict(demo_config(root, out)).data)
            write_splits(root / "train.txt", root, spec, DEMO_LABELED, 0, split_dir)
        labeled = str((split_dir / "labeled.txt").relative_to(root))
        unlabeled = str((split_dir / "unlabeled.txt").relative_to(root))
        print(f"demo: '{method}' with labels for {DEMO_LABELED} of the training images; "
              f"first the supervised baseline on the same labeled images")
        baseline = demo_config(root, out / "supervised", "supervised", seed, n_iters, train_list=labeled)
        results["supervised"] = _train(baseline).miou
        data = {"train_list": None, "labeled_list": labeled, "unlabeled_list": unlabeled}
    raw = _merge(demo_config(root, out / method, name, seed, n_iters, **data), overrides)
    result = _train(raw)
    results[method] = result.miou
    predictions = _write_predictions(out / method, root)
    print(format_table(result).rsplit("\n", 1)[0])
    # mIoU of always predicting the most frequent class: a floor any learning must beat
    gt_pixels = result.confusion.sum(1).double()
    chance = float(gt_pixels.max() / gt_pixels.sum() / len(SYNTHETIC_CLASSES) * 100)
    print(f"run directory: {out / method} (curves.png, metrics.jsonl, last.pt, best.pt); predictions: {predictions}")
    print(f"demo finished in {time.perf_counter() - started:.0f}s; majority-class baseline {chance:.1f} mIoU")
    if len(results) > 1:
        print("comparison: " + ", ".join(f"{k} {v:.2f}" for k, v in results.items()))
    print(f"mIoU: {result.miou:.2f}")
    return results
