"""The tables of docs/methods/alignment.md from `benchmarks/camvid_payoff.sh` runs: one folder per seed
(ROOT/s0, ROOT/s1, ...), each holding its arms (supervised, supervised_continued, semi, ...) with the val.json
and heldout.json the script's score stage wrote (and labeled.json, the arm on its own labeled images, where
present: printed as a third block, not in the markdown table).

    python benchmarks/summarize_payoff.py runs/payoff [--baseline supervised_continued] [--classes pavement pole]
    python benchmarks/summarize_payoff.py runs/payoff --markdown     # the table as in the docs

An arm run with ITERS=N (folder name ending in _N) is compared with the baseline run as long (BASELINE_N).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def load(root: Path) -> dict[str, dict[int, dict[str, dict]]]:
    """{arm: {seed: {"val": result, "heldout": result[, "labeled": result]}}} of every scored run under ``root``."""
    arms: dict[str, dict[int, dict[str, dict]]] = {}
    for seed_dir in sorted(root.glob("s[0-9]*")):
        seed = int(seed_dir.name[1:])
        for arm_dir in sorted(p for p in seed_dir.iterdir() if p.is_dir()):
            scores = {split: json.loads((arm_dir / f"{split}.json").read_text())
                      for split in ("val", "heldout", "labeled") if (arm_dir / f"{split}.json").is_file()}
            if "val" in scores and "heldout" in scores:
                arms.setdefault(arm_dir.name, {})[seed] = scores
    return arms


def baseline_of(arm: str, baseline: str) -> str:
    """The baseline of the same schedule: ``semi_2400`` is compared with ``supervised_continued_2400``."""
    schedule = re.search(r"_\d+$", arm)
    return baseline + schedule.group() if schedule else baseline


def _cell(runs: dict, base: dict, split: str, arm: str, baseline: str) -> str:
    seeds = sorted(runs)
    values = [runs[s][split]["miou"] for s in seeds]
    cell = f"{', '.join(f'{v:.2f}' for v in values)} | **{statistics.mean(values):.2f}** ± {(max(values) - min(values)) / 2:.2f}"
    versus = "" if arm == baseline else _versus(runs, base, split)
    return cell + f" | {versus}"


def _versus(runs: dict, base: dict, split: str) -> str:
    """Mean paired difference from the baseline and the seeds ahead, e.g. '+0.13 (3/5)'; '' with no pair."""
    diffs = [runs[s][split]["miou"] - base[s][split]["miou"] for s in sorted(runs) if s in base]
    return f"{statistics.mean(diffs):+.2f} ({sum(d > 0 for d in diffs)}/{len(diffs)})" if diffs else ""


def print_markdown(arms: dict, baseline: str, classes: list[str]) -> None:
    print(f"| arm (seeds) | held-out per seed | mean ± half-range | vs {baseline} as long (seeds ahead) | val per seed | "
          "mean ± half-range | vs baseline | " + " | ".join(f"{c} IoU held-out / val" for c in classes) + " |")
    print("|---" * (7 + len(classes)) + "|")
    for arm, runs in arms.items():
        seeds = ",".join(str(s) for s in sorted(runs))
        per_class = [" / ".join(f"{statistics.mean(runs[s][split]['iou'][c] for s in runs):.1f}"
                                for split in ("heldout", "val")) for c in classes]
        own = baseline_of(arm, baseline)
        base = arms.get(own, {})
        print(f"| {arm} ({seeds}) | {_cell(runs, base, 'heldout', arm, own)} | "
              f"{_cell(runs, base, 'val', arm, own)} | " + " | ".join(per_class) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--baseline", default="supervised_continued", help="arm the others are compared with")
    parser.add_argument("--classes", nargs="*", default=["pavement", "pole"], help="per-class IoU columns")
    parser.add_argument("--markdown", action="store_true", help="one markdown table, held-out and val")
    args = parser.parse_args()
    arms = load(args.root)
    if args.markdown:
        print_markdown(arms, args.baseline, args.classes)
        return
    for split in ("heldout", "val", "labeled"):
        print(f"\n{split} mIoU (per seed; mean, half-range; vs {args.baseline} as long: mean difference (seeds ahead))")
        for arm, all_runs in arms.items():
            runs = {s: r for s, r in all_runs.items() if split in r}
            if not runs:
                continue
            own = baseline_of(arm, args.baseline)
            base = {s: r for s, r in arms.get(own, {}).items() if split in r}
            seeds = sorted(runs)
            values = [runs[s][split]["miou"] for s in seeds]
            line = (f"{arm:<22} " + " ".join(f"s{s} {v:5.2f}" for s, v in zip(seeds, values))
                    + f" | {statistics.mean(values):5.2f} ± {(max(values) - min(values)) / 2:4.2f}")
            versus = "" if arm == own else _versus(runs, base, split)
            if versus:
                line += f" | {versus}"
            for name in args.classes:
                ious = [runs[s][split]["iou"].get(name) for s in seeds]
                line += f" | {name} {statistics.mean(v for v in ious if v is not None):5.2f}"
            print(line)


if __name__ == "__main__":
    main()
