"""Each class's share of the kept pseudo-labels against its share of the labeled pixels, per stretch of
training, for finished selftrain/dgcl runs (docs/benchmarks.md): where self-training absorbs one class into
another.

    python benchmarks/pseudo_label_shares.py runs/camvid/dgcl_1_16_s1 [more runs] [--windows 200 400 800]

Reads the ``pseudo_label_share`` and ``label_share`` lists of ``metrics.jsonl`` (one per log record, each
over the steps since the previous record) and averages them over the iterations up to each window end.
Prints one row per run and window: the pseudo-label share of every class in %, then the labeled share.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from sparseg.config import config_from_dict
from sparseg.data import create_dataset_spec


def shares(run: Path, windows: list[int]) -> list[tuple[str, list[float], list[float]]]:
    """(window label, mean pseudo-label shares, mean labeled shares) for each window with records."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if r["split"] == "train" and "pseudo_label_share" in r]
    if not records:
        raise SystemExit(f"{run}/metrics.jsonl has no pseudo_label_share records (a run before that log existed?)")
    rows, start = [], 0
    for end in windows:
        inside = [r for r in records if start < r["iter"] <= end]
        if inside:
            mean = [sum(values) / len(inside) for values in zip(*(r["pseudo_label_share"] for r in inside))]
            truth = [sum(values) / len(inside) for values in zip(*(r["label_share"] for r in inside))]
            rows.append((f"{inside[0]['iter']}-{inside[-1]['iter']}", mean, truth))
        start = end
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--windows", nargs="+", type=int, default=[200, 400, 800], help="window end iterations")
    args = parser.parse_args()
    header = None
    for run in args.runs:
        cfg = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
        names = create_dataset_spec(cfg.data).class_names
        if header is None:
            header = ["run", "iterations", "shares of", *names]
            print("| " + " | ".join(header) + " |")
            print("|" + "---|" * len(header))
        for window, pseudo, truth in shares(run, args.windows):
            for kind, values in (("pseudo-labels", pseudo), ("labels", truth)):
                cells = " | ".join(f"{100 * v:.1f}" for v in values)
                print(f"| {run.name} | {window} | {kind} | {cells} |")


if __name__ == "__main__":
    main()
