"""Print the CamVid comparison table (docs/benchmarks.md) from finished run directories.

    python benchmarks/summarize_camvid.py [runs/camvid]

Reads each finished run's final validation record in ``metrics.jsonl`` (runs named ``<method>_<labels>[_<init>]_s<seed>``,
labels a split such as ``1_8``, ``full``, or a sparse label kind: ``points``, ``scribbles``; ``init`` tags runs that
start from a pretrained file, e.g. ``pt`` for DDeP, ``mim``) and prints, per
method and labels, the mIoU of every evaluated model per seed and its mean and spread
(half the range; the standard deviation is meaningless for two seeds).
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import yaml


def final_val(run: Path) -> dict[str, float]:
    """mIoU of each model at the run's last iteration (empty while the run is unfinished)."""
    total = yaml.safe_load((run / "config.yaml").read_text())["train"]["iters"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["split"] == "val" and r["iter"] == total]
    return {k[: -len("_miou")]: v for k, v in final[-1].items() if k.endswith("_miou")} if final else {}


def label_order(labels: str) -> tuple[int, float]:
    """Splits by labeled fraction (1/16, 1/8, 1/4, full), then the sparse label kinds."""
    if labels.startswith("1_"):
        return 0, 1 / int(labels[2:])
    return (0, 1.0) if labels == "full" else (1, 0.0)


def main(root: str = "runs/camvid") -> None:
    table: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)
    for run in sorted(Path(root).iterdir()):
        match = re.fullmatch(r"(.+)_(1_\d+|full|points|scribbles|clicks)(?:_([a-z]+))?_s(\d+)", run.name)
        if not match or not (run / "metrics.jsonl").exists():
            continue
        method, split, init, seed = match.groups()
        method = f"{method} from {init}" if init else method
        for model, miou in final_val(run).items():
            table[(split, method, model)][int(seed)] = miou
    print("| labels | method | model | per seed | mean ± half-range |")
    print("|---|---|---|---|---|")
    for (split, method, model), seeds in sorted(table.items(), key=lambda item: (label_order(item[0][0]), item[0])):
        values = [seeds[s] for s in sorted(seeds)]
        mean = sum(values) / len(values)
        spread = (max(values) - min(values)) / 2
        per_seed = ", ".join(f"s{s} {seeds[s]:.2f}" for s in sorted(seeds))
        print(f"| {split} | {method} | {model} | {per_seed} | {mean:.2f} ± {spread:.2f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
