"""Per-class IoU and where the confusable classes go, for finished CamVid runs (docs/benchmarks.md).

    OMP_NUM_THREADS=1 python benchmarks/camvid_per_class.py runs/camvid/supervised_1_4_s0 runs/camvid/dgcl_1_4_s0 ...
    OMP_NUM_THREADS=1 python benchmarks/camvid_per_class.py --list splits/1_16/unlabeled.txt runs/camvid/dgcl_1_16_s1

Scores each run's ``last.pt`` (the teacher where the method has one, as in the tables) on the validation list
of its config, or on ``--list`` (e.g. the split's unlabeled training images, whose masks training never read:
the final teacher's pseudo-label quality), then prints one row per run: the IoU of every class, the pixel accuracy, and the share of the
ground-truth tree and pavement pixels predicted as building and road: the two confusions that decide most
of the mIoU differences between these small from-scratch models.
"""

from __future__ import annotations

import argparse

import torch

from sparseg.build import load_trained
from sparseg.data import EvalTransform, build_dataset, create_dataset_spec
from sparseg.eval import evaluate

CONFUSIONS = (("tree", "building"), ("pavement", "road"))


def score(run: str, image_list: str | None):
    overrides = [f"data.val_list={image_list}"] if image_list else []
    cfg, _, model, _ = load_trained(f"{run}/last.pt", overrides, None)
    spec = create_dataset_spec(cfg.data)
    dataset = build_dataset(cfg.data, "val_list", labeled=True, transform=EvalTransform())
    result = evaluate(model, dataset, cfg.eval, spec.num_classes, torch.device("cpu"), class_names=spec.class_names)
    confusion = result.confusion.double().numpy()
    rows = confusion / confusion.sum(1, keepdims=True).clip(min=1)
    moved = [100 * rows[result.class_names.index(a), result.class_names.index(b)] for a, b in CONFUSIONS]
    return result, moved


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders holding last.pt")
    parser.add_argument("--list", help="image list to score instead of the config's data.val_list")
    args = parser.parse_args(argv)
    header = None
    for run in args.runs:
        result, moved = score(run, args.list)
        if header is None:
            header = ["run", *result.class_names, "mIoU", "pixel acc", *(f"{a}→{b}" for a, b in CONFUSIONS)]
            print("| " + " | ".join(header) + " |")
            print("|" + "---|" * len(header))
        cells = [f"{v:.1f}" for v in (*result.iou, result.miou, result.pixel_accuracy, *moved)]
        print(f"| {run.rstrip('/').split('/')[-1]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
