"""Training-step throughput and peak memory of each method's shipped recipe, on this machine.

Each recipe config (default: every `configs/voc/*.yaml`) is run on generated images at its own crop
size, with its own model, AMP setting and method, for a few timed steps after warm-up steps. Only the
per-process batch is reduced (``--batch``) so a CPU can run it. Prints one row per recipe:
images/s (labeled + unlabeled images per second) and peak memory (CUDA: allocator peak; CPU: the
process's peak resident set, which includes everything loaded so far).

    python benchmarks/throughput.py                       # every VOC recipe, batch 2 + 2
    python benchmarks/throughput.py --configs configs/voc/dgcl.yaml --batch 4 --steps 10
    python benchmarks/throughput.py --set model.encoder=resnet18 data.crop_size=64 --json rows.json

``--set KEY=VALUE`` overrides every recipe after the benchmark's own overrides (smaller runs); ``--json``
also writes the rows, with skipped recipes and their reason.
"""

from __future__ import annotations

import argparse
import glob
import json
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from sparseg.build import load_config, resolve
from sparseg.config import ConfigError
from sparseg.data import create_dataset_spec, make_synthetic_dataset, write_splits
from sparseg.engine.trainer import Trainer


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(config: str, root: Path, batch: int, steps: int, warmup: int, device: str,
            extra: Sequence[str] = ()) -> dict:
    overrides = [
        "data.dataset=synthetic", f"data.root={root}", "data.train_list=train.txt",
        "data.labeled_list=splits/labeled.txt", "data.unlabeled_list=splits/unlabeled.txt",
        "data.val_list=null", f"data.batch_size={batch}", f"data.unlabeled_batch_size={batch}",
        "data.workers=2", "data.num_classes=null", "data.class_names=null", "data.palette=null",
        "model.pretrained=null", f"train.device={device}", "train.iters=null", "train.epochs=1000",
        "train.eval_every=0", f"out={root / 'runs' / Path(config).stem}", *extra,
    ]
    run = resolve(load_config(config, overrides))
    if "warmup_epochs" in run.method_class.Config.model_fields:
        run = resolve(load_config(config, overrides + ["method.warmup_epochs=0"]))  # time full steps, not warm-up
    cfg = run.config
    if not torch.cuda.is_available() and cfg.train.amp == "fp16":
        cfg.train.amp = "off"  # fp16 autocast needs CUDA; CPU runs in fp32
    trainer = Trainer(*run, overwrite=True, quiet=True)
    batches = trainer._batches(0, 0)
    per_step = batch * len(trainer.streams)
    for _ in range(warmup):
        trainer._train_step(next(batches), 0)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(trainer.device)
    started = time.perf_counter()
    for _ in range(steps):
        trainer._train_step(next(batches), 0)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    return {
        "config": config, "method": cfg.method["name"], "crop": "x".join(map(str, cfg.data.crop_size)),
        "encoder": cfg.model.encoder, "amp": cfg.train.amp, "images/step": per_step,
        "s/step": seconds, "images/s": per_step / seconds, "peak MB": peak_memory_mb(trainer.device),
        "device": str(trainer.device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=sorted(glob.glob("configs/voc/*.yaml")))
    parser.add_argument("--batch", type=int, default=2, help="labeled (and unlabeled) images per step")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-size", type=int, default=256, help="side of the generated images")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every recipe")
    parser.add_argument("--json", help="also write the rows (and skipped recipes) to this file")
    args = parser.parse_args()

    console = Console(width=160)
    with tempfile.TemporaryDirectory() as tmp:
        # enough images that warm-up and timed steps fit in one epoch of both streams
        n_train = max(32, 2 * args.batch * (args.warmup + args.steps))
        root = make_synthetic_dataset(Path(tmp) / "data", n_train=n_train, n_val=2, size=args.image_size, seed=0)
        spec = create_dataset_spec(load_config(None, ["data.dataset=synthetic", f"data.root={root}"]).data)
        write_splits(root / "train.txt", root, spec, "1/2", 0, root / "splits")
        rows, skipped = [], {}
        for config in args.configs:
            try:
                rows.append(measure(config, root, args.batch, args.steps, args.warmup, args.device, args.set))
            except (ConfigError, ValueError) as err:
                skipped[config] = str(err)
                console.print(f"[yellow]{config}: skipped ({err})[/yellow]")
    table = Table(title=f"training step throughput, {args.batch} (+{args.batch}) images per step")
    for column in ("config", "method", "crop", "encoder", "amp", "images/s", "s/step", "peak MB", "device"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["config"], row["method"], row["crop"], row["encoder"], row["amp"],
                      f"{row['images/s']:.2f}", f"{row['s/step']:.2f}", f"{row['peak MB']:.0f}", row["device"])
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "skipped": skipped}, indent=1) + "\n")


if __name__ == "__main__":
    main()
