"""The steps of ``benchmarks/gpu_check.sh`` and its report (issue #16: every CUDA path in one command).

    python benchmarks/gpu_check.py data WORK --mode gpu|cpu [--quick]
    torchrun --nproc_per_node=1 benchmarks/gpu_check.py train WORK --amp bf16|fp16 --record FILE
    torchrun --nproc_per_node=1 benchmarks/gpu_check.py resume WORK --phase start|finish --record FILE
    python benchmarks/gpu_check.py report OUTDIR

``data`` generates the synthetic data (images, masks, procedural depth), a 1/2 split, synthesised points,
a tiny random Depth Anything model for the online depth source and, on CPU, a tiny random DINOv2; no
download. ``train`` trains every method of ``RUNS`` for a few iterations with the given AMP mode inside one
torchrun process (a process group even with one process: NCCL and SyncBatchNorm on CUDA, gloo on CPU);
each run has its own time limit, an exception fails only that run, and the record is rewritten after
every run. ``resume`` checks that a run interrupted at its checkpoint and resumed in a fresh process
ends where an uninterrupted one does. ``report`` gathers every step's status and record into
``OUTDIR/gpu_check.json`` and ``OUTDIR/gpu_check.md`` and exits 1 if a step failed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

RUN_LIMIT_S = {"gpu": 150, "cpu": 60}  # one training run inside a train step
SIZES = {  # per mode: generated data, model and schedule
    "gpu": {"image": 256, "n_train": 64, "crop": 224, "batch": 8, "workers": 4, "encoder": "resnet50",
            "width": 64, "decoder": 256, "proj": 256, "iters": 40, "quick_iters": 16, "device": "cuda"},
    "cpu": {"image": 32, "n_train": 16, "crop": 28, "batch": 4, "workers": 0, "encoder": "resnet18",
            "width": 8, "decoder": 16, "proj": 8, "iters": 4, "quick_iters": 4, "device": "cpu"},
}
# name -> overrides of the base config (run_config): "data" is a dict, or "points" (synthesised point labels);
# "model" is "dpt" (DINOv2 + DPT), or a dict of model keys -> SIZES keys; "ESTIMATOR" is WORK/estimator;
# "+compile" runs are CUDA only, in the bf16 step
RUNS: dict[str, dict[str, Any]] = {
    "supervised": {"method": {"name": "supervised"}},
    "selftrain": {"method": {"name": "selftrain"}},
    "dgcl": {"model": {"proj_dim": "proj"}, "method": {
        "name": "dgcl", "memory_size": 64, "memory_update_cap": 32, "density_min_memory": 32, "min_memory": 32,
        "warmup_until_full": False, "num_anchors": 16, "batch_positives": 16, "memory_positives": 16,
        "num_negatives": 32, "ignore_classes": []}},
    "fixmatch": {"method": {"name": "fixmatch"}},
    "unimatch": {"method": {"name": "unimatch"}},
    "unimatch_v2": {"model": "dpt", "method": {"name": "unimatch_v2", "teacher": "ema", "cutmix_partner": "reverse"},
                    "optim": {"name": "adamw", "base_lr": 5e-6, "head_lr_mult": 40, "weight_decay": 0.01}},
    "agmm": {"data": "points", "method": {"name": "agmm"}},
    "fixmatch+depmatch": {"data": {"depth_dir": "depth"},
                          "method": {"name": "fixmatch", "depmatch": {"unit": 7.0, "cddp": {"feat_norm": "l2"}}}},
    "fixmatch+depmatch_online": {"method": {"name": "fixmatch", "depmatch": {
        "depth_source": "online", "estimator": "ESTIMATOR", "unit": 7.0, "cddp": {"feat_norm": "l2"}}}},
    "supervised+compile": {"method": {"name": "supervised"}, "train": {"compile": True}},
}
SEMI = {"selftrain", "dgcl", "fixmatch", "unimatch", "unimatch_v2"}
RESUME_METHOD = "selftrain"


# ------------------------------------------------------------------------------------------- data


def make_data(work: Path, mode: str, quick: bool) -> dict[str, Any]:
    """Data, split, points, tiny estimator (and tiny DINOv2 on CPU) under WORK; settings in WORK/settings.json."""
    import torch
    import transformers

    from sparseg.config import config_from_dict
    from sparseg.data import create_dataset_spec, make_synthetic_dataset, sparsify_list, write_splits

    size = SIZES[mode]
    root = make_synthetic_dataset(work / "data", n_train=size["n_train"], n_val=4, size=size["image"], seed=0)
    spec = create_dataset_spec(config_from_dict({"data": {"dataset": "synthetic", "root": str(root)}}).data)
    write_splits(root / "train.txt", root, spec, "1/2", 0, root / "splits", overwrite=True)
    sparsify_list(root / "train.txt", root, spec, "points", 0, root / "sparse" / "points", overwrite=True)
    torch.manual_seed(0)
    backbone = transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=28,
        patch_size=14, out_features=["stage1", "stage2"], reshape_hidden_states=False,
    )
    estimator = transformers.DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 16], fusion_hidden_size=16,
        head_hidden_size=8, reassemble_factors=[2, 1], patch_size=14, depth_estimation_type="relative",
    )
    transformers.DepthAnythingForDepthEstimation(estimator).save_pretrained(work / "estimator")
    transformers.DPTImageProcessor(size={"height": 28, "width": 28}, ensure_multiple_of=14).save_pretrained(
        work / "estimator")
    if mode == "cpu":  # on a GPU unimatch_v2 uses a random DINOv2-S of the real shape instead
        tiny = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                         intermediate_size=32, patch_size=14, image_size=28)
        transformers.Dinov2Model(tiny).save_pretrained(work / "dinov2")
    settings = {"mode": mode, "quick": quick, **size, "iters": size["quick_iters" if quick else "iters"],
                "torch": torch.__version__, "transformers": transformers.__version__,
                "gpu": torch.cuda.get_device_name(0) if mode == "gpu" else None}
    (work / "settings.json").write_text(json.dumps(settings, indent=1) + "\n")
    return settings


def run_config(name: str, work: Path, settings: dict[str, Any], amp: str, out: Path) -> dict[str, Any]:
    """The config dict of one gpu_check run."""
    s = settings
    spec = copy.deepcopy(RUNS[name])
    data: dict[str, Any] = {"dataset": "synthetic", "root": str(work / "data"), "val_list": "val.txt",
                            "crop_size": s["crop"], "batch_size": s["batch"], "workers": s["workers"]}
    method = spec["method"]
    if method["name"] in SEMI:
        data.update(labeled_list="splits/labeled.txt", unlabeled_list="splits/unlabeled.txt")
    elif spec.get("data") == "points":
        data.update(train_list="sparse/points/train.txt", label_format="sparse")
    else:
        data["train_list"] = "train.txt"
    if isinstance(spec.get("data"), dict):
        data.update(spec["data"])
    if spec.get("model") == "dpt":
        model = {"name": "dpt", "encoder": "dinov2_small"}
        if s["mode"] == "cpu":
            model.update(pretrained=str(work / "dinov2"), dpt_layers=[0, 1, 2, 3])
    else:
        model = {"encoder": s["encoder"], "stem": "plain", "width": s["width"], "decoder_channels": s["decoder"],
                 "output_stride": 16, **{k: s[v] for k, v in spec.get("model", {}).items()}}
    depmatch = method.get("depmatch", {})
    if depmatch.get("estimator") == "ESTIMATOR":
        depmatch["estimator"] = str(work / "estimator")
    return {
        "seed": 0, "out": str(out), "data": data, "model": model,
        "optim": {"base_lr": 0.01, "head_lr_mult": 1.0, **spec.get("optim", {})},
        "train": {"iters": s["iters"], "eval_every": 0, "log_every": 1, "max_val_images": 4, "device": s["device"],
                  "amp": amp, "channels_last": s["device"] == "cuda", **spec.get("train", {})},
        "eval": {"mode": "whole"},
        "method": method,
    }


# ------------------------------------------------------------------------------------------- train


class RunTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raise RunTimeout in the main thread after ``seconds`` (between Python-level operations)."""

    def expire(signum, frame):
        raise RunTimeout(f"over its {seconds}s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_once(cfg_dict: dict[str, Any], resume: bool = False, stop_at: int | None = None) -> tuple[Any, dict]:
    """Train one config; returns the trainer and figures (it/s after two warm-up steps, peak memory, batches)."""
    import torch

    from sparseg.build import resolve
    from sparseg.config import config_from_dict
    from sparseg.engine.trainer import Trainer

    trainer = Trainer(*resolve(config_from_dict(cfg_dict)), resume=resume, overwrite=not resume)
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds: list[float] = []
    order: list[list[int]] = []
    step = trainer._train_step

    def timed_step(batch, epoch):
        order.append([int(i) for part in batch.values() for i in part["index"]])
        _sync(device)
        started = time.perf_counter()
        step(batch, epoch)
        _sync(device)
        seconds.append(time.perf_counter() - started)
        if stop_at is not None and trainer.iteration == stop_at:
            trainer._evaluate_and_checkpoint()  # the last checkpoint before the "crash"
            raise _Interrupted

    trainer._train_step = timed_step
    with contextlib.suppress(_Interrupted):
        trainer.fit()
    timed = seconds[2:] if len(seconds) > 2 else seconds
    figures = {
        "iterations": trainer.iteration, "steps_run": len(seconds), "batches": order,
        "it_s": len(timed) / sum(timed) if timed and sum(timed) > 0 else None,
        "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    return trainer, figures


class _Interrupted(Exception):
    pass


def _train_log(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_run(name: str, cfg_dict: dict[str, Any], amp: str, limit: int) -> dict[str, Any]:
    """One training run and what it must show: finite losses, every iteration, the distributed setup."""
    import torch
    import torch.distributed as dist

    row: dict[str, Any] = {"run": name, "amp": amp}
    started = time.perf_counter()
    try:
        with time_limit(limit):
            trainer, figures = train_once(cfg_dict)
        figures.pop("batches")
        logged = [r for r in _train_log(Path(cfg_dict["out"])) if r.get("split") == "train"]
        losses = [v for r in logged for k, v in r.items() if isinstance(v, float) and k not in ("lr", "epoch")]
        val = [r["miou"] for r in _train_log(Path(cfg_dict["out"])) if r.get("split") == "val"]
        problems = []
        if trainer.iteration != trainer.total_iters:
            problems.append(f"stopped at iteration {trainer.iteration} of {trainer.total_iters}")
        if not losses or not all(math.isfinite(v) for v in losses):
            problems.append("non-finite or no logged losses")
        if not val or not math.isfinite(val[-1]):
            problems.append("no finite validation mIoU")
        backend = dist.get_backend() if dist.is_initialized() else None
        sync_bn = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in trainer.method.modules())
        has_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in trainer.method.modules())
        if trainer.device.type == "cuda" and os.environ.get("WORLD_SIZE"):
            if backend != "nccl":
                problems.append(f"process group backend {backend}, expected nccl")
            if has_bn and sync_bn != has_bn:
                problems.append(f"{has_bn - sync_bn} BatchNorm layers not converted to SyncBatchNorm")
        row.update(figures, status="fail" if problems else "pass", problems=problems, backend=backend,
                   sync_bn_layers=sync_bn, ddp=type(trainer.ddp).__name__, device=str(trainer.device),
                   final_loss=logged[-1]["loss"] if logged else None, val_miou=val[-1] if val else None,
                   grad_scale=trainer.scaler.get_scale() if trainer.scaler.is_enabled() else None)
        del trainer
    except Exception as err:  # noqa: BLE001 (one run's failure must not stop the others)
        row.update(status="fail", problems=[f"{type(err).__name__}: {err}"])
    row["seconds"] = round(time.perf_counter() - started, 2)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def _write(path: Path, content: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=1) + "\n")
    os.replace(tmp, path)


def train_step(work: Path, amp: str, record: Path, runs: list[str]) -> int:
    """Every run of ``runs`` with ``amp``; the record is rewritten after each run (a crash keeps the rows so far)."""
    settings = json.loads((work / "settings.json").read_text())
    rows = []
    for name in runs:
        if name.endswith("+compile") and (settings["device"] != "cuda" or amp != "bf16"):
            why = "torch.compile: CUDA only here" if settings["device"] != "cuda" else "compiled once, in the bf16 step"
            rows.append({"run": name, "amp": amp, "status": "skipped", "problems": [why]})
        else:
            out = work / "runs" / f"{name}-{amp}"
            rows.append(check_run(name, run_config(name, work, settings, amp, out), amp, RUN_LIMIT_S[settings["mode"]]))
        print(f"{name} {amp}: {rows[-1]['status']} {'; '.join(rows[-1].get('problems', []))}", flush=True)
        _write(record, {"step": record.stem, "rows": rows})
    return 0 if all(r["status"] != "fail" for r in rows) else 1


# ------------------------------------------------------------------------------------------- resume


def resume_step(work: Path, phase: str, record: Path) -> int:
    """``start``: an uninterrupted run, a repeat of it (run-to-run noise) and one stopped at its mid checkpoint;
    ``finish`` (a fresh process): resume that one and compare the final method states and the batches."""
    import torch

    settings = json.loads((work / "settings.json").read_text())
    amp = "bf16"
    total = settings["iters"]
    half = total // 2

    def config(tag: str) -> dict[str, Any]:
        cfg = run_config(RESUME_METHOD, work, settings, amp, work / "resume" / tag)
        cfg["train"].update(eval_every=half, deterministic=True)
        return cfg

    state_path = work / "resume" / "start.json"
    if phase == "start":
        batches = {}
        # the repeat measures run-to-run noise on CUDA; on a CPU runs repeat bit-exactly (tests/test_cli.py)
        for tag in ("straight", "repeat") if settings["device"] == "cuda" else ("straight",):
            _, figures = train_once(config(tag))
            batches[tag] = figures["batches"]
        _, figures = train_once(config("resumed"), stop_at=half)
        batches["resumed"] = figures["batches"]
        _write(state_path, batches)
        print(f"resume start: {len(batches) - 1} run(s) of {total} iterations, one stopped at {half}")
        return 0
    batches = json.loads(state_path.read_text())
    trainer, figures = train_once(config("resumed"), resume=True)
    resumed_batches = batches["resumed"] + figures["batches"]

    def method_state(tag: str) -> dict[str, Any]:
        return torch.load(work / "resume" / tag / "last.pt", map_location="cpu", weights_only=True)["method"]

    def max_difference(a: dict, b: dict) -> float:
        return max(((a[k].double() - b[k].double()).abs().max().item() if a[k].is_floating_point()
                    else float(not torch.equal(a[k], b[k]))) for k in a if a[k].numel())

    straight, resumed = method_state("straight"), method_state("resumed")
    noise = max_difference(straight, method_state("repeat")) if "repeat" in batches else 0.0
    difference = max_difference(straight, resumed)
    problems = []
    if trainer.iteration != total:
        problems.append(f"resumed run ended at iteration {trainer.iteration}, not {total}")
    if resumed_batches != batches["straight"]:
        problems.append("the resumed run saw other batches than the uninterrupted one")
    if straight.keys() != resumed.keys():
        problems.append("the method states hold different keys")
    # bit-exact where the uninterrupted run repeats bit-exactly; else within that run-to-run noise
    if difference > 10 * noise:
        problems.append(f"resumed state differs by {difference:.3g} (run-to-run noise {noise:.3g})")
    row = {"run": f"resume ({RESUME_METHOD}, {amp}, {half} + {total - half} iterations)", "amp": amp,
           "status": "fail" if problems else "pass", "problems": problems, "exact": difference == 0.0,
           "max_difference": difference, "run_to_run_noise": noise, "device": str(trainer.device)}
    _write(record, {"step": record.stem, "rows": [row]})
    print(f"resume: {row['status']}; max difference {difference:.3g}, run-to-run noise {noise:.3g}")
    return 0 if not problems else 1


# ------------------------------------------------------------------------------------------- report


def _figures(step: str, record: dict[str, Any] | None) -> str:
    if not record:
        return ""
    if "rows" in record and isinstance(record["rows"], list) and record["rows"] and "run" in record["rows"][0]:
        return ""  # one table row per run instead
    if step.startswith("density"):
        ms = record["ms"]["ours (chunked, 1 top-k)"][record["time_key"]]
        on_cpu_tf32 = record["precision"] == "tf32" and record["device"] == "cpu"
        cpu_note = " (TF32 is CUDA-only: fp32 here)" if on_cpu_tf32 else ""
        return (f"{record['precision']}{cpu_note} on {record['device']}, M={record['m']} N={record['n']}: "
                f"{ms:.1f} ms ({record['time_key']}), "
                f"{record['speedup_over_naive']:.2f}x naive, {record['ours_vs_floor']:.2f}x bare product, "
                f"max error {record['max_abs_error_vs_fp32_naive']:.1e}")
    if step == "throughput":
        parts = [f"{Path(r['config']).stem} {r['crop']} {r['amp']}: {r['images/s']:.2f} img/s, "
                 f"{r['peak MB']:.0f} MB" for r in record.get("rows", [])]
        parts += [f"{Path(c).stem}: skipped ({why})" for c, why in record.get("skipped", {}).items()]
        return "; ".join(parts)
    return ""


def report(outdir: Path) -> int:
    """Gather OUTDIR/steps/*.status.json (+ records) into gpu_check.json and gpu_check.md."""
    steps = []
    for status_file in sorted((outdir / "steps").glob("*.status.json"), key=lambda p: p.stat().st_mtime):
        status = json.loads(status_file.read_text())
        record_file = outdir / "steps" / f"{status['step']}.json"
        record = json.loads(record_file.read_text()) if record_file.exists() else None
        status["record"] = record
        if status["result"] == "pass" and record and any(r.get("status") == "fail" for r in record.get("rows", [])
                                                         if isinstance(r, dict) and "status" in r):
            status["result"] = "fail"
        steps.append(status)
    passed = all(s["result"] in ("pass", "skipped") for s in steps)
    settings_file = outdir / "work" / "settings.json"
    settings = json.loads(settings_file.read_text()) if settings_file.exists() else {}
    meta = {k: settings[k] for k in ("mode", "quick", "gpu", "torch", "transformers", "iters", "crop") if k in settings}
    summary = {"passed": passed, **meta, "steps": steps}
    _write(outdir / "gpu_check.json", summary)
    lines = [f"# gpu_check: {'PASS' if passed else 'FAIL'}", "",
             ", ".join(f"{k}: {v}" for k, v in meta.items()), "",
             "| step | result | seconds | limit | figures |", "|---|---|---|---|---|"]
    for s in steps:
        note = s.get("note", "")
        lines.append(f"| {s['step']} | {s['result']} | {s['seconds']} | {s['limit']} | "
                     f"{note or _figures(s['step'], s['record'])} |")
    runs = [r for s in steps if s["record"] for r in s["record"].get("rows", []) if isinstance(r, dict) and "run" in r]
    if runs:
        lines += ["", "| run | amp | result | it/s | peak GPU MiB | val mIoU | notes |",
                  "|---|---|---|---|---|---|---|"]
        for r in runs:
            it_s = f"{r['it_s']:.2f}" if r.get("it_s") else ""
            peak = f"{r['peak_gpu_mib']:.0f}" if r.get("peak_gpu_mib") else ""
            miou = f"{r['val_miou']:.2f}" if r.get("val_miou") is not None else ""
            notes = "; ".join(r.get("problems", []))
            if r.get("backend"):
                notes = f"{r['backend']}, {r.get('ddp')}, SyncBN layers {r.get('sync_bn_layers')}" + (
                    f"; {notes}" if notes else "")
            if "max_difference" in r:
                notes = f"max difference {r['max_difference']:.3g}, run-to-run noise {r['run_to_run_noise']:.3g}" + (
                    f"; {notes}" if notes else "")
            lines.append(f"| {r['run']} | {r['amp']} | {r['status']} | {it_s} | {peak} | {miou} | {notes} |")
    (outdir / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if passed else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data")
    data.add_argument("work", type=Path)
    data.add_argument("--mode", choices=tuple(SIZES), required=True)
    data.add_argument("--quick", action="store_true")
    train = sub.add_parser("train")
    train.add_argument("work", type=Path)
    train.add_argument("--amp", choices=("bf16", "fp16"), required=True)
    train.add_argument("--record", type=Path, required=True)
    train.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    resume = sub.add_parser("resume")
    resume.add_argument("work", type=Path)
    resume.add_argument("--phase", choices=("start", "finish"), required=True)
    resume.add_argument("--record", type=Path, required=True)
    rep = sub.add_parser("report")
    rep.add_argument("outdir", type=Path)
    args = parser.parse_args()
    if args.command == "data":
        settings = make_data(args.work, args.mode, args.quick)
        print(f"data: {settings['n_train']} training images of {settings['image']} px, crop {settings['crop']}")
        return 0
    if args.command == "train":
        return train_step(args.work, args.amp, args.record, args.runs)
    if args.command == "resume":
        return resume_step(args.work, args.phase, args.record)
    return report(args.outdir)


if __name__ == "__main__":
    sys.exit(main())
