"""Does `sparseg annotate`'s "label next" ranking pay? Ranking vs random choice of the next images to label.

    OMP_NUM_THREADS=1 python benchmarks/active_learning.py                      # CamVid, queued in
                                                                                # benchmarks/active_learning.jobs

Per seed: train the config on the scribbles of the first ``--initial`` images of ``--initial-list``; score the
images of ``--candidates`` with that model exactly as the annotate server does (``sparseg.annotate.assist``)
and add the ``--add`` best; separately add ``--add`` candidates drawn at random (numpy, the same seed); train
the config on each of the two lists (same scribbles, same seed) and evaluate both on the val list and on the
held-out candidates: those chosen by no arm of any seed (one list for every run). Scribbles come from
``sparseg sparsify --kind scribbles --seed 0`` over ``--train-list``, so an image has the same labels in
every list. Steps whose result exists in ``--work`` are skipped (rerun to resume). Prints mean +- std of the
mIoUs per arm and writes ``WORK/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np


def sparseg(*args: str) -> None:
    """Run one ``sparseg`` command; its failure ends the benchmark."""
    print("+ sparseg", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "sparseg", *args], check=True)


def lines_of(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def image_of(line: str) -> str:
    return line.split()[0]


def rank(checkpoint: Path, candidates: list[str], root: Path, dataset: str, count: int, cache: Path) -> list[str]:
    """The ``count`` best candidate images (their image paths) by the annotate ranking of ``checkpoint``."""
    import torch

    from sparseg.annotate import ImageEntry
    from sparseg.annotate.assist import ModelAssist, Ranker
    from sparseg.build import load_trained
    from sparseg.config import DataConfig
    from sparseg.data import create_dataset_spec, read_split

    cfg, state, model, _ = load_trained(str(checkpoint), [], None)
    assist = ModelAssist(model, cfg.eval, state["num_classes"], torch.device("cpu"))
    listed = cache.with_suffix(".list.txt")
    listed.write_text("".join(line + "\n" for line in candidates))
    spec = create_dataset_spec(DataConfig(dataset=dataset, root=str(root), num_classes=state["num_classes"]))
    entries = read_split(listed, root, spec, labeled=False)
    images = [ImageEntry(e.id, e.image, (0, 0)) for e in entries]
    ranker = Ranker(assist, images, cache)
    ranker.run()
    if ranker.error:
        raise RuntimeError(f"ranking failed: {ranker.error}")
    scores = ranker.snapshot()["scores"]
    by_id = {e.id: image_of(line) for e, line in zip(entries, candidates)}
    best = sorted(scores, key=lambda i: -scores[i]["score"])[:count]
    return [by_id[i] for i in best]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/datasets/camvid", help="data root")
    parser.add_argument("--dataset", default="camvid")
    parser.add_argument("--config", default="configs/camvid/partial_ce_points.yaml")
    parser.add_argument("--train-list", default="train.txt", help="dense list the scribbles are made from")
    parser.add_argument("--initial-list", default="splits/1_8/labeled.txt")
    parser.add_argument("--candidates", default="splits/1_8/unlabeled.txt")
    parser.add_argument("--val-list", default="val.txt")
    parser.add_argument("--initial", type=int, default=20)
    parser.add_argument("--add", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", default="runs/camvid/active_learning")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", help="extra config overrides for training")
    args = parser.parse_args()

    root, work = Path(args.root).resolve(), Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    scribbles = work / "scribbles"
    if not (scribbles / "train.txt").is_file():
        sparseg("sparsify", str(root / args.train_list), "--kind", "scribbles", "--seed", "0", "--dataset",
                args.dataset, "--root", str(root), "--out", str(scribbles), "--overwrite")
    sparse_line = {image_of(line): line for line in lines_of(scribbles / "train.txt")}
    initial = [image_of(line) for line in lines_of(root / args.initial_list)][: args.initial]
    candidates = lines_of(root / args.candidates)
    overrides = [f"data.root={root}", f"data.val_list={args.val_list}", "data.label_format=sparse", *args.overrides]

    def write_list(path: Path, images: list[str]) -> Path:
        path.write_text("".join(sparse_line[image] + "\n" for image in images))
        return path

    def train(out: Path, train_list: Path, seed: int) -> Path:
        if not (out / "done").is_file():
            sparseg("train", args.config, "--out", str(out), "--overwrite", "--set", f"seed={seed}",
                    f"data.train_list={train_list}", *overrides)
            (out / "done").write_text("")
        return out / "last.pt"

    chosen: dict[tuple[int, str], list[str]] = {}
    for seed in args.seeds:
        folder = work / f"s{seed}"
        folder.mkdir(exist_ok=True)
        first = train(folder / "initial", write_list(folder / "initial.txt", initial), seed)
        picked = folder / "ranked_choice.txt"
        if not picked.is_file():
            picked.write_text("\n".join(rank(first, candidates, root, args.dataset, args.add,
                                             folder / "ranking.json")) + "\n")
        chosen[seed, "ranked"] = lines_of(picked)
        rng = np.random.default_rng(seed)
        chosen[seed, "random"] = [image_of(candidates[i]) for i in rng.choice(len(candidates), args.add, replace=False)]
    used = {image for images in chosen.values() for image in images}
    heldout = work / "heldout.txt"
    heldout.write_text("".join(line + "\n" for line in candidates if image_of(line) not in used))

    results = {}
    for (seed, arm), images in chosen.items():
        out = work / f"s{seed}" / arm
        checkpoint = train(out, write_list(work / f"s{seed}" / f"{arm}.txt", initial + images), seed)
        for split, val_list in (("val", args.val_list), ("heldout", str(heldout))):
            result = out / f"eval_{split}.json"
            if not result.is_file():
                sparseg("eval", str(checkpoint), "--json", str(result), "--set", f"data.val_list={val_list}")
            results.setdefault(arm, {}).setdefault(split, []).append(json.loads(result.read_text())["miou"])
    summary = {"heldout_images": len(lines_of(heldout)), "seeds": args.seeds, "initial": args.initial,
               "add": args.add, "config": args.config, "overrides": args.overrides, "miou": results}
    (work / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for arm, splits in results.items():
        shown = ", ".join(f"{split} {statistics.mean(v):.2f} +- {statistics.stdev(v) if len(v) > 1 else 0:.2f} "
                          f"({' '.join(f'{x:.2f}' for x in v)})" for split, v in splits.items())
        print(f"{arm}: mIoU {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
