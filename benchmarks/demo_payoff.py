"""Does the unlabeled data pay on the demo's generated shapes? `sparseg demo --method M --from-supervised` for
several seeds (camvid_payoff.sh's protocol on the demo's semi-supervised data: 240 training images, labels for
1/8 of them, 48 val images):

    supervised                  the demo's supervised baseline on the labeled images
    supervised_continued        that model, as many iterations more of the same recipe
    M_from_supervised           method M from the same checkpoint with alignment, the per-class filter and
                                rare-class copy-paste (sparseg.demo.FROM_SUPERVISED), as many iterations

The budget is the method's demo budget (selftrain, dgcl: 240 iterations; fixmatch, unimatch: 200), so each method
has its own baseline: runs go to OUT/METHOD[_ITERS]/sSEED/ARM. Each last.pt (the teacher where there is one) is
scored on the val images, on the held-out training images (the split's unlabeled list, with their generated
masks) and on its own labeled images; the table compares the method with the supervised model trained as long.
docs/methods/alignment.md, "The demo".

    OMP_NUM_THREADS=1 python benchmarks/demo_payoff.py --method selftrain --seeds 0 1 2 3 4 --out runs/demo_payoff
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from statistics import mean

from sparseg.demo import DEMO_LABELED, DEMO_RECIPES, demo_data, run_demo

SPLITS = {"heldout": "unlabeled.txt", "val": None, "labeled": "labeled.txt"}


def score(run: Path, split: str) -> float:
    """mIoU of ``run/last.pt`` on one split (``sparseg eval``), cached in ``run/SPLIT.json``."""
    path = run / f"{split}.json"
    if not path.exists() or path.stat().st_mtime < (run / "last.pt").stat().st_mtime:
        split_dir = f"splits/{DEMO_LABELED.replace('/', '_')}"
        overrides = ["--set", f"data.val_list={split_dir}/{SPLITS[split]}"] if SPLITS[split] else []
        subprocess.run([sys.executable, "-m", "sparseg", "eval", str(run / "last.pt"), *overrides, "--json", str(path)],
                       check=True, stdout=subprocess.DEVNULL)
    return json.loads(path.read_text())["miou"]


def _row(values: list[float]) -> str:
    return f"{', '.join(f'{v:.2f}' for v in values)} | {mean(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="selftrain", help="a semi-supervised method (default: selftrain)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--iters", type=int, help="iterations of each stage (default: the method's demo budget)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo_payoff"))
    args = parser.parse_args()
    demo_data(DEMO_RECIPES["semi"].images)
    arms = ("supervised", "supervised_continued", f"{args.method}_from_supervised")
    scores = {arm: {split: [] for split in SPLITS} for arm in arms}
    for seed in args.seeds:
        # each method (and --iters) its own runs: the demo budgets, hence the baselines, differ
        out = args.out / f"{args.method}{f'_{args.iters}' if args.iters else ''}" / f"s{seed}"
        if not all((out / arm / "last.pt").exists() for arm in arms):
            with contextlib.redirect_stdout(io.StringIO()):
                run_demo(args.method, out, args.iters, seed, from_supervised=True)
        for arm in arms:
            for split in SPLITS:
                scores[arm][split].append(score(out / arm, split))
            print(f"seed {seed} {arm}: " + ", ".join(f"{s} {v[-1]:.2f}" for s, v in scores[arm].items()), flush=True)
    print(f"\n| arm | held-out per seed ({', '.join(map(str, args.seeds))}) | mean | val per seed | mean | "
          "own labeled images per seed | mean |")
    print("|---|---|---|---|---|---|---|")
    for arm in arms:
        print(f"| {arm} | " + " | ".join(_row(scores[arm][split]) for split in SPLITS) + " |")
    base, semi = scores["supervised_continued"], scores[arms[2]]
    for split in SPLITS:
        diff = [s - b for s, b in zip(semi[split], base[split])]
        print(f"{arms[2]} - supervised_continued, {split}: {', '.join(f'{d:+.2f}' for d in diff)}; "
              f"mean {mean(diff):+.2f}, ahead on {sum(d > 0 for d in diff)}/{len(diff)}")


if __name__ == "__main__":
    main()
