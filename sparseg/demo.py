"""``sparseg demo``: the embedded default run on generated data, CPU-sized, no downloads.

A method trains by the recipe of what it learns from (``DEMO_RECIPES``): supervised methods on dense
masks of every generated training image; semi-supervised methods (an ``unlabeled`` stream) with labels
for 1/8 of the images, after the supervised baseline on the same labeled images, so the two can be
compared; sparse-label methods (a ``label_kind`` attribute: points, clicks or scribbles) on that kind of
labels, synthesised once from the dense masks. A method can adjust its demo config through its
``demo_overrides`` attribute (``iters`` included). Results are deterministic per seed and thread count.

With ``from_supervised`` a semi-supervised method starts from the supervised baseline's checkpoint with the
components of the recommended recipe (``FROM_SUPERVISED``, docs/methods/alignment.md) and the method's own
``trained_start_overrides``, beside the baseline continued for as many iterations (camvid_payoff.sh's protocol).
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparseg.build import predict_files, resolve
from sparseg.config import ConfigError, config_from_dict
from sparseg.data import SYNTHETIC_CLASSES, create_dataset_spec, make_synthetic_dataset, sparsify_list, write_splits
from sparseg.methods import method_class

# the data of the semi-supervised and sparse-label demos, whose results the method documents report
SMALL_DATA = {"n_train": 240, "n_val": 48, "size": 64}
DEMO_LABELED = "1/8"
DEMO_PLUGINS = {  # the synthetic data has true procedural depth (depmatch.md §3)
    # L2-normalised CDDP features: with the raw DeepLabV3+ feature the default preset costs ~7 mIoU on the
    # demo, with normalised ones it matches FixMatch (docs/methods/depmatch.md, "Feature scale")
    "depmatch": {"method": {"depmatch": {"cddp": {"feat_norm": "l2"}}}, "data": {"depth_dir": "depth"}},
}


@dataclass(frozen=True)
class DemoRecipe:
    """How the demo trains one kind of method: the generated data, the default budget, config changes."""

    images: dict[str, int]  # make_synthetic_dataset keywords (n_train, n_val, size); data seed 0
    iters: int
    config: dict[str, Any] = field(default_factory=dict)  # merged into demo_config()


# what a semi-supervised method adds when it starts from the supervised baseline (configs/camvid/selftrain_aligned.yaml)
FROM_SUPERVISED = {"pseudo_label": {"align": "hard_share", "filter": "per_class"}, "copy_paste": {"classes": 2}}

DEMO_RECIPES = {
    # every image labeled. AdamW on 1000 training images learns the shapes within the budget, and 200
    # validation images keep the score's noise small: 64.7-68.2 mIoU over seeds 0-2 and 1 or 2 threads
    # (README, "The demo", measured); SGD on 240 images, scored on 48, had swung by 14 points.
    "dense": DemoRecipe({"n_train": 1000, "n_val": 200, "size": 64}, 2000,
                        {"optim": {"name": "adamw", "base_lr": 2e-3}}),
    "semi": DemoRecipe(SMALL_DATA, 1500),  # labels for DEMO_LABELED of the images; budgets in demo_overrides
    "sparse": DemoRecipe(SMALL_DATA, 1500),  # synthesised points, clicks or scribbles
    # self-supervised pretraining on every training image (no labels), then the supervised baseline on the
    # DEMO_LABELED split twice, from scratch and from the pretrained file, each for the same iterations
    "pretrain": DemoRecipe(SMALL_DATA, 600, {"optim": {"name": "adamw", "base_lr": 1e-3}}),
}


def recipe_kind(cls: type) -> str:
    """The DEMO_RECIPES key of a method class."""
    if cls.pretraining:
        return "pretrain"
    if cls.label_kind is not None:
        return "sparse"
    return "semi" if "unlabeled" in cls.streams else "dense"


def cache_dir() -> Path:
    return Path(os.environ.get("SPARSEG_CACHE", Path.home() / ".cache" / "sparseg"))


def demo_data(images: dict[str, int]) -> Path:
    """Generate (once; cached per parameter set) the synthetic data set of a recipe."""
    name = "n{n_train}-v{n_val}-s{size}".format(**images)
    return make_synthetic_dataset(cache_dir() / "synthetic" / name, seed=0, **images)


def demo_config(root: Path, out: Path, method: str = "supervised", seed: int = 0, iters: int = 1500,
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

    run_dir = Path(raw["out"])
    if (run_dir / "config.yaml").exists():  # the demo's own earlier run of this method: replaced, not kept aside
        shutil.rmtree(run_dir)
    return train(*resolve(config_from_dict(raw)))


def _labels(method: str, cls: type, root: Path, out: Path) -> dict[str, Any]:
    """The data keys of the method's labels: sparse labels or a labeled/unlabeled split, made once."""
    kind = recipe_kind(cls)
    if kind == "dense":
        return {}
    spec = create_dataset_spec(config_from_dict(demo_config(root, out)).data)
    if kind == "sparse":
        sparse_dir = root / "sparse" / cls.label_kind
        summary = sparsify_list(root / "train.txt", root, spec, cls.label_kind, 0, sparse_dir)["summary"]
        print(f"demo: '{method}' trains on {cls.label_kind} synthesised from the dense masks "
              f"({summary['labeled_fraction_mean']:.2%} of the pixels labeled)")
        return {"train_list": str((sparse_dir / "train.txt").relative_to(root)), "label_format": "sparse"}
    split_dir = root / "splits" / DEMO_LABELED.replace("/", "_")
    if not (split_dir / "labeled.txt").exists():
        write_splits(root / "train.txt", root, spec, DEMO_LABELED, 0, split_dir)
    if kind == "pretrain":
        print(f"demo: '{method}' pretrains on every training image without labels, then supervised training "
              f"on {DEMO_LABELED} of them runs from scratch and from the pretrained weights")
    else:
        print(f"demo: '{method}' with labels for {DEMO_LABELED} of the training images; "
              f"first the supervised baseline on the same labeled images")
    return {"train_list": None, "labeled_list": str((split_dir / "labeled.txt").relative_to(root)),
            "unlabeled_list": str((split_dir / "unlabeled.txt").relative_to(root))}


def run_demo(method: str = "supervised", out: Path = Path("runs/demo"), iters: int | None = None,
             seed: int = 0, from_supervised: bool = False) -> dict[str, float]:
    """Generate the data (cached), train, evaluate, write curves and predictions of 8 validation images (with
    overlays, as ``sparseg predict --overlay``); return the mIoUs."""
    import torch

    from sparseg.eval import format_table

    started = time.perf_counter()
    name, _, plugin = method.partition("+")  # NAME+PLUGIN: method NAME with the plug-in's default preset
    cls = method_class(name)
    if plugin and plugin not in DEMO_PLUGINS:
        raise ConfigError(f"--method {method}: unknown plug-in '{plugin}' (known: {', '.join(DEMO_PLUGINS)})")
    if from_supervised and (recipe_kind(cls) != "semi" or plugin):
        raise ConfigError(f"--from-supervised: '{method}' is not a semi-supervised method without a plug-in "
                          "(dgcl, selftrain, fixmatch, unimatch, unimatch_v2)")
    recipe = DEMO_RECIPES[recipe_kind(cls)]
    root = demo_data(recipe.images)
    print(f"demo: {torch.get_num_threads()} CPU thread(s); results are reproducible per seed and thread count")
    overrides = _merge(copy.deepcopy(recipe.config), copy.deepcopy(cls.demo_overrides))
    _merge(overrides, copy.deepcopy(DEMO_PLUGINS.get(plugin, {})))
    method_iters = overrides.pop("iters", recipe.iters)  # popped even with --iters: not a config key
    n_iters = iters or method_iters
    data = _labels(method, cls, root, out)
    results: dict[str, float] = {}
    run_dir = out / method
    if "labeled_list" in data:
        baseline = demo_config(root, out / "supervised", "supervised", seed, n_iters, train_list=data["labeled_list"])
        results["supervised"] = _train(baseline).miou
    if recipe_kind(cls) == "pretrain":  # the probe watches the labeled images; the method reads no mask
        pretraining = demo_config(root, out / method, name, seed, n_iters, val_list=data["labeled_list"])
        results[f"{method} (probe)"] = _train(_merge(pretraining, overrides)).miou
        run_dir = out / f"supervised_from_{method}"
        finetune = demo_config(root, run_dir, "supervised", seed, n_iters, train_list=data["labeled_list"])
        finetune["model"]["pretrained"] = str(out / method / "pretrained.pt")
        result = _train(finetune)
        results[f"supervised from {method}"] = result.miou
    elif from_supervised:
        start = str(out / "supervised" / "last.pt")
        continued = demo_config(root, out / "supervised_continued", "supervised", seed, n_iters,
                                train_list=data["labeled_list"])
        continued["model"]["pretrained"] = start
        results["supervised continued"] = _train(continued).miou
        run_dir = out / f"{method}_from_supervised"
        raw = _merge(demo_config(root, run_dir, name, seed, n_iters, **data), overrides)
        _merge(raw["method"], copy.deepcopy({**FROM_SUPERVISED, **cls.trained_start_overrides}))
        raw["model"]["pretrained"] = start
        result = _train(raw)
        results[f"{method} from supervised"] = result.miou
    else:
        result = _train(_merge(demo_config(root, run_dir, name, seed, n_iters, **data), overrides))
        results[method] = result.miou
    print(format_table(result).rsplit("\n", 1)[0])
    # mIoU of always predicting the most frequent class: a floor any learning must beat
    gt_pixels = result.confusion.sum(1).double()
    chance = float(gt_pixels.max() / gt_pixels.sum() / len(SYNTHETIC_CLASSES) * 100)
    print(f"run directory: {run_dir} (curves.png, metrics.jsonl, last.pt, best.pt)")
    val_images = [root / line.split()[0] for line in (root / "val.txt").read_text().splitlines()[:8]]
    print(predict_files(run_dir / "last.pt", val_images, run_dir / "predictions", overlay=True).summary())
    print(f"demo finished in {time.perf_counter() - started:.0f}s; majority-class baseline {chance:.1f} mIoU")
    if len(results) > 1:
        print("comparison: " + ", ".join(f"{k} {v:.2f}" for k, v in results.items()))
    print(f"mIoU: {result.miou:.2f}")
    return results
