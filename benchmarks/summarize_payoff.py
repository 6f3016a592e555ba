"""The tables of docs/methods/alignment.md from `benchmarks/camvid_payoff.sh` runs: one folder per seed
(ROOT/s0, ROOT/s1, ...), each holding its arms (supervised, supervised_continued, semi, ...) with the val.json
and heldout.json the script's score stage wrote.

    python benchmarks/summarize_payoff.py runs/payoff [--baseline supervised_continued] [--classes pavement pole]
    python benchmarks/summarize_payoff.py runs/payoff --markdown     # the table as in the docs
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load(root: Path) -> dict[str, dict[int, dict[str, dict]]]:
    """{arm: {seed: {"val": result, "heldout": result}}} of every scored run under ``root``."""
    arms: dict[str, dict[int, dict[str, dict]]] = {}
    for seed_dir in sorted(root.glob("s[0-9]*")):
        seed = int(seed_dir.name[1:])
        for arm_dir in sorted(p for p in seed_dir.iterdir() if p.is_dir()):
            scores = {split: json.loads((arm_dir / f"{split}.json").read_text())
                      for split in ("val", "heldout") if (arm_dir / f"{split}.json").is_file()}
            if len(scores) == 2:
                arms.setdefault(arm_dir.name, {})[seed] = scores
    return arms


def _cell(runs: dict, base: dict, split: str, arm: str, baseline: str) -> str:
    seeds = sorted(runs)
    values = [runs[s][split]["miou"] for s in seeds]
    cell = f"{', '.join(f'{v:.2f}' for v in values)} | **{statistics.mean(values):.2f}** ± {(max(values) - min(values)) / 2:.2f}"
    paired = [s for s in seeds if s in base]
    if arm == baseline or not paired:
        return cell + " | "
    diffs = [runs[s][split]["miou"] - base[s][split]["miou"] for s in paired]
    return cell + f" | {statistics.mean(diffs):+.2f} ({sum(d > 0 for d in diffs)}/{len(diffs)})"


def print_markdown(arms: dict, base: dict, baseline: str, classes: list[str]) -> None:
    print(f"| arm (seeds) | held-out per seed | mean ± half-range | vs {baseline} (seeds ahead) | val per seed | "
          "mean ± half-range | vs baseline | " + " | ".join(f"{c} IoU held-out / val" for c in classes) + " |")
    print("|---" * (7 + len(classes)) + "|")
    for arm, runs in arms.items():
        seeds = ",".join(str(s) for s in sorted(runs))
        per_class = [" / ".join(f"{statistics.mean(runs[s][split]['iou'][c] for s in runs):.1f}"
                                for split in ("heldout", "val")) for c in classes]
        print(f"| {arm} ({seeds}) | {_cell(runs, base, 'heldout', arm, baseline)} | "
              f"{_cell(runs, base, 'val', arm, baseline)} | " + " | ".join(per_class) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--baseline", default="supervised_continued", help="arm the others are compared with")
    parser.add_argument("--classes", nargs="*", default=["pavement", "pole"], help="per-class IoU columns")
    parser.add_argument("--markdown", action="store_true", help="one markdown table, held-out and val")
    args = parser.parse_args()
    arms = load(args.root)
    base = arms.get(args.baseline, {})
    if args.markdown:
        print_markdown(arms, base, args.baseline, args.classes)
        return
    for split in ("heldout", "val"):
        print(f"\n{split} mIoU (per seed; mean, half-range; vs {args.baseline}: mean difference, seeds ahead)")
        for arm, runs in arms.items():
            seeds = sorted(runs)
            values = [runs[s][split]["miou"] for s in seeds]
            line = (f"{arm:<22} " + " ".join(f"s{s} {v:5.2f}" for s, v in zip(seeds, values))
                    + f" | {statistics.mean(values):5.2f} ± {(max(values) - min(values)) / 2:4.2f}")
            paired = [s for s in seeds if s in base]
            if arm != args.baseline and paired:
                diffs = [runs[s][split]["miou"] - base[s][split]["miou"] for s in paired]
                line += f" | {statistics.mean(diffs):+5.2f}, ahead {sum(d > 0 for d in diffs)}/{len(diffs)}"
            for name in args.classes:
                ious = [runs[s][split]["iou"].get(name) for s in seeds]
                line += f" | {name} {statistics.mean(v for v in ious if v is not None):5.2f}"
            print(line)


if __name__ == "__main__":
    main()
