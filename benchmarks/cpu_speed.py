"""CPU speed of the CamVid recipes under each precision, memory format, compile and thread setting, interleaved.

Every (recipe, setting, thread count) is built once, then all are timed in rounds: each round runs every one
in a rotated order for ``--steps`` training steps on real CamVid batches (read once per recipe, so the data
pipeline is not timed here; ``--loader`` times it). Interleaving makes the ratios between
settings robust to whatever else the machine does; the medians and spreads over the rounds are printed.
Wall time (perf_counter) and this process's CPU time (all threads) are both reported per step.

    OMP_NUM_THREADS=2 python benchmarks/cpu_speed.py --rounds 5                       # every recipe
    python benchmarks/cpu_speed.py --recipes supervised dgcl --settings fp32 bf16+cl --threads 1
    python benchmarks/cpu_speed.py --loader                                            # data pipeline only
    python benchmarks/cpu_speed.py --profile dgcl selftrain                            # where a step's time goes
    python benchmarks/cpu_speed.py --settings bf16+cl --threads 1 --recipes selftrain \
        "selftrain:method.forward_unmixed_u=true;model.proj_dim=64" dgcl "dgcl:method.contrast_weight=0"

Settings: ``fp32`` | ``bf16`` (``train.amp``) with ``+cl`` (``train.channels_last``) and ``+compile``
(``train.compile``). A recipe ``NAME:KEY=VALUE;KEY=VALUE`` is NAME with those config overrides. ``eval`` is the recipe's validation protocol on ``--eval-images`` val images, with the
model (random weights; speed does not depend on them) under the same autocast and memory format.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from itertools import islice
from pathlib import Path

import torch

from sparseg.build import load_config, resolve
from sparseg.engine.trainer import Trainer

CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "camvid"
RECIPES = ("supervised", "selftrain", "dgcl", "fixmatch", "unimatch", "agmm_points", "eval")
SETTINGS = ("fp32", "fp32+cl", "bf16", "bf16+cl", "bf16+cl+compile")


def setting_overrides(setting: str) -> list[str]:
    parts = setting.split("+")
    unknown = set(parts) - {"fp32", "bf16", "cl", "compile"}
    if unknown or parts[0] not in ("fp32", "bf16"):
        raise SystemExit(f"unknown setting {setting!r}: fp32|bf16 with optional +cl, +compile")
    return [f"train.amp={'off' if parts[0] == 'fp32' else 'bf16'}", f"train.channels_last={'cl' in parts}",
            f"train.compile={'compile' in parts}"]


def sparse_points(root: Path, tmp: Path) -> Path:
    """Synthesised point labels for the first 48 training images (agmm_points reads sparse masks)."""
    listed = tmp / "train48.txt"
    listed.write_text("".join((root / "train.txt").read_text().splitlines(keepends=True)[:48]))
    out = tmp / "points"
    subprocess.run([sys.executable, "-m", "sparseg", "sparsify", str(listed), "--kind", "points", "--dataset",
                    "camvid", "--root", str(root), "--seed", "0", "--out", str(out)], check=True, capture_output=True)
    return out / "train.txt"


def build_trainer(recipe: str, setting: str, root: Path, tmp: Path, batch: int, points: Path | None) -> Trainer:
    recipe, _, extra = recipe.partition(":")
    config = "configs/camvid/supervised.yaml" if recipe == "eval" else f"configs/camvid/{recipe}.yaml"
    overrides = [f"data.root={root}", "data.workers=0", f"data.batch_size={batch}",
                 "train.iters=100000", "train.eval_every=0", f"out={tmp / 'runs' / f'{recipe}{len(extra)}' / setting}",
                 *setting_overrides(setting), *filter(None, extra.split(";"))]
    if recipe == "supervised":
        overrides.insert(0, "data.train_list=splits/1_8/labeled.txt")
    if recipe == "agmm_points":
        overrides.insert(0, f"data.train_list={points}")
    cfg = load_config(config, overrides)
    if cfg.data.unlabeled_list:
        overrides.append(f"data.unlabeled_batch_size={batch}")
    if "warmup_epochs" in cfg.method:  # time semi-supervised steps, not the warm-up epoch
        overrides.append("method.warmup_epochs=0")
    return Trainer(*resolve(load_config(config, overrides)), overwrite=True, quiet=True)


class Case:
    """One recipe under one setting and thread count, with the batches it replays."""

    def __init__(self, recipe: str, setting: str, threads: int, trainer: Trainer, batches: list, eval_images: int):
        self.recipe, self.setting, self.threads = recipe, setting, threads
        self.trainer, self.batches, self.eval_images = trainer, batches, eval_images
        self.evaluates = recipe.partition(":")[0] == "eval"
        self.position = 0
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def run(self, steps: int, record: bool = True) -> None:
        torch.set_num_threads(self.threads)
        wall, cpu = time.perf_counter(), time.process_time()
        if self.evaluates:
            self._evaluate()
        else:
            for _ in range(steps):
                self.trainer._train_step(self.batches[self.position % len(self.batches)], 0)
                self.position += 1
        if record:
            n = 1 if self.evaluates else steps
            self.wall.append((time.perf_counter() - wall) / n)
            self.cpu.append((time.process_time() - cpu) / n)

    def _evaluate(self) -> None:
        from sparseg.eval import evaluate

        trainer = self.trainer
        amp = trainer._autocast() if trainer.cfg.train.amp != "off" else nullcontext()
        with amp:
            evaluate(trainer.method.model, trainer.val_dataset, trainer.cfg.eval, trainer.num_classes,
                     trainer.device, indices=range(self.eval_images))

    def row(self) -> dict:
        return {"recipe": self.recipe, "setting": self.setting, "threads": self.threads,
                "wall_median": statistics.median(self.wall), "wall_min": min(self.wall), "wall_max": max(self.wall),
                "cpu_median": statistics.median(self.cpu), "cpu_min": min(self.cpu), "cpu_max": max(self.cpu),
                "rounds": len(self.wall)}


def build_cases(recipe: str, args, tmp: Path, points: Path | None) -> list[Case]:
    cases = []
    batches = None
    for setting in args.settings:
        trainer = build_trainer(recipe, setting, args.root, tmp, args.batch, points)
        if batches is None:  # the same real batches for every setting (channels_last applied per setting below)
            batches = list(islice(trainer._batches(0, 0), args.batches)) if not recipe.startswith("eval") else []
        fmt = torch.channels_last if trainer.cfg.train.channels_last else torch.contiguous_format
        own = [{s: {k: v.contiguous(memory_format=fmt) if v.dim() == 4 else v for k, v in part.items()}
                for s, part in batch.items()} for batch in batches]
        for threads in args.threads:
            cases.append(Case(recipe, setting, threads, trainer, own, args.eval_images))
    return cases


def run_cases(cases: list[Case], args) -> list[dict]:
    """Warm every case up, then time them in rounds, each round in a rotated order."""
    for case in cases:  # warm-up: compilation, allocator, dgcl's memory bank filling
        case.run(args.warmup, record=False)
    for r in range(args.rounds):
        shift = r % len(cases)
        for case in cases[shift:] + cases[:shift]:
            case.run(args.steps)
        print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    return [case.row() for case in cases]


def print_rows(rows: list[dict]) -> None:
    """Medians (min-max) per step; speed-ups against the same recipe's first setting at the same threads."""
    baseline: dict = {}
    for r in rows:
        baseline.setdefault((r["recipe"], r["threads"]), r)
    print(f"{'recipe':<16} {'setting':<16} {'thr':>3} {'cpu s/step (min-max)':>24} {'x':>6} "
          f"{'wall s/step (min-max)':>24} {'x':>6}")
    for r in rows:
        base = baseline[(r["recipe"], r["threads"])]
        print(f"{r['recipe'][:16]:<16} {r['setting']:<16} {r['threads']:>3} "
              f"{r['cpu_median']:>8.3f} ({r['cpu_min']:.3f}-{r['cpu_max']:.3f}) "
              f"{base['cpu_median'] / r['cpu_median']:>5.2f}x "
              f"{r['wall_median']:>8.3f} ({r['wall_min']:.3f}-{r['wall_max']:.3f}) "
              f"{base['wall_median'] / r['wall_median']:>5.2f}x")


def time_loader(args, tmp: Path) -> None:
    """Batches/s of the recipe's data pipeline (real CamVid, labeled 8 + unlabeled 8) per worker count."""
    for workers in args.workers:
        cfg = load_config("configs/camvid/selftrain.yaml", [
            f"data.root={args.root}", f"data.workers={workers}", "train.iters=100000",
            f"out={tmp / 'runs' / f'loader{workers}'}"])
        trainer = Trainer(*resolve(cfg), overwrite=True, quiet=True)
        torch.set_num_threads(1)
        batches = trainer._batches(0, 0)
        next(batches)  # workers started
        started, cpu = time.perf_counter(), time.process_time()
        n = 0
        for n, _ in enumerate(islice(batches, args.loader_batches), 1):
            pass
        wall = (time.perf_counter() - started) / n
        print(f"workers={workers}: {wall:.3f} s per 8+8 batch wall, {(time.process_time() - cpu) / n:.3f} s "
              "CPU in the training process")
        trainer.close()


def profile(recipes: list[str], args, tmp: Path) -> None:
    """torch.profiler's top operators of a few steps of each recipe (first setting, first thread count)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for recipe in recipes:
        trainer = build_trainer(recipe, args.settings[0], args.root, tmp, args.batch, None)
        torch.set_num_threads(args.threads[0])
        batches = list(islice(trainer._batches(0, 0), args.batches))
        for batch in batches[: args.warmup]:
            trainer._train_step(batch, 0)
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            for batch in batches[args.warmup: args.warmup + args.steps]:
                trainer._train_step(batch, 0)
        print(f"== {recipe} ({args.settings[0]}, {args.threads[0]} thread(s)), {args.steps} steps")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), help=f"of {', '.join(RECIPES)}, each "
                        "optionally NAME:KEY=VALUE;KEY=VALUE (config overrides)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="training steps per setting and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per setting first")
    parser.add_argument("--batch", type=int, default=8, help="labeled (and unlabeled) images per step")
    parser.add_argument("--batches", type=int, default=6, help="distinct real batches replayed")
    parser.add_argument("--eval-images", type=int, default=10)
    parser.add_argument("--root", type=Path, default=CAMVID)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--loader", action="store_true", help="time the data pipeline instead")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("--profile", nargs="+", help="profile these training recipes instead")
    parser.add_argument("--profile-rows", type=int, default=25)
    args = parser.parse_args()
    for setting in args.settings:
        setting_overrides(setting)
    for recipe in args.recipes + (args.profile or []):
        if recipe.partition(":")[0] not in RECIPES:
            raise SystemExit(f"unknown recipe {recipe!r}: one of {', '.join(RECIPES)}")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.loader:
            time_loader(args, tmp)
            return
        if args.profile:
            profile(args.profile, args, tmp)
            return
        points = sparse_points(args.root, tmp) if any(r.startswith("agmm_points") for r in args.recipes) else None
        cases = [case for recipe in args.recipes for case in build_cases(recipe, args, tmp, points)]
        rows = run_cases(cases, args)
    print_rows(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
