"""Run logging: progress bar, train.log, metrics.jsonl, TensorBoard events and the curves plot."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

console = Console(stderr=True, soft_wrap=True)  # soft_wrap: long lines are not cut at 80 columns in a file or pipe


class RunLogger:
    """Writes every logged scalar to ``metrics.jsonl`` and TensorBoard, messages and scalars as text lines to
    ``train.log``; shows progress. A resumed run (``fresh=False``) first drops the records written after
    ``start_iter`` (``metrics.jsonl`` lines; TensorBoard events through ``purge_step``), so no step appears
    twice; ``train.log`` keeps its history and continues."""

    def __init__(
        self, out_dir: Path, total_iters: int, start_iter: int = 0, fresh: bool = True, enabled: bool = True
    ) -> None:
        self.out_dir = out_dir
        self.enabled = enabled
        self.total_iters = total_iters
        self._writer = None
        self._progress: Progress | None = None
        self._task = None
        self._last_print = 0.0
        self._t0 = time.perf_counter()
        self._start_iter = start_iter
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics = out_dir / "metrics.jsonl"
        if not fresh and metrics.exists():  # drop records written after the checkpoint we resume from
            kept = [r for r in metrics.read_text().splitlines() if _iteration(r) <= start_iter]
            metrics.write_text("".join(r + "\n" for r in kept))
        # both stay open for the run and are closed by close()
        self._jsonl = open(metrics, "w" if fresh else "a")  # noqa: SIM115
        self._text = open(out_dir / "train.log", "w" if fresh else "a", encoding="utf-8")  # noqa: SIM115
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(out_dir / "tb"), purge_step=None if fresh else start_iter + 1)
        except ImportError:  # tensorboard is a dependency, but keep training if it is broken
            console.print("[yellow]tensorboard unavailable: no event files will be written[/yellow]")
        if console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=total_iters, completed=start_iter, status="")

    def log(self, iteration: int, split: str, values: dict[str, Any]) -> None:
        """Record scalars for ``iteration`` (1-based count of finished iterations)."""
        if not self.enabled:
            return
        record = {"iter": iteration, "split": split, **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        scalars = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in values.items() if not isinstance(v, list))  # per-class lists: jsonl only
        self._write_text(f"iter {iteration}/{self.total_iters} {split}: {scalars}")
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(f"{split}/{key}", value, iteration)
                elif isinstance(value, list):  # per-class values: one TensorBoard scalar per index
                    for index, item in enumerate(value):
                        self._writer.add_scalar(f"{split}/{key}/{index}", item, iteration)

    def progress(self, iteration: int, loss: float, lr: float) -> None:
        if not self.enabled:
            return
        status = f"loss {loss:.4f}  lr {lr:.2e}"
        if self._progress is not None:
            self._progress.update(self._task, completed=iteration, status=status)
            return
        now = time.perf_counter()
        if now - self._last_print >= 10 or iteration == self.total_iters:
            done = iteration - self._start_iter
            rate = done / max(now - self._t0, 1e-9)
            eta = (self.total_iters - iteration) / max(rate, 1e-9)
            console.print(f"iter {iteration}/{self.total_iters}  {status}  {rate:.2f} it/s  ETA {eta:.0f}s")
            self._last_print = now

    def message(self, text: str, to_file: bool = True) -> None:
        """Print ``text`` (rich markup allowed) and, with ``to_file``, append it to ``train.log``."""
        if self.enabled:
            console.print(text)
            if to_file:
                self._write_text(Text.from_markup(text).plain)

    def _write_text(self, line: str) -> None:
        if not self._text.closed:
            self._text.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
            self._text.flush()

    def close(self) -> None:
        """Stop the progress bar and close the files (a second call does nothing)."""
        if not self.enabled or self._jsonl.closed:
            return
        if self._progress is not None:
            self._progress.stop()
        if self._writer is not None:
            self._writer.close()
        self._jsonl.close()
        self._text.close()


def _iteration(record: str) -> float:
    """The ``iter`` of a metrics.jsonl line; a fragment left by a crash counts as after every checkpoint."""
    try:
        return json.loads(record)["iter"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def plot_curves(metrics_path: Path, out_path: Path) -> None:
    """Plot training loss and validation mIoU from ``metrics.jsonl`` into a PNG; with per-class pseudo-label
    shares logged (pseudo-labelling methods), a third panel shows each class's share over the iterations
    against its labeled share (the class prior when alignment logs one), dashed, in the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val, shares, target = [], [], [], None
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        if record["split"] == "train" and "loss" in record:
            train.append((record["iter"], record["loss"]))
            if "pseudo_label_share" in record:
                shares.append((record["iter"], record["pseudo_label_share"]))
                target = record.get("class_prior", record.get("label_share", target))
        elif record["split"] == "val" and "miou" in record:
            val.append((record["iter"], record["miou"]))
    fig, axes = plt.subplots(1, 3 if shares else 2, figsize=(15 if shares else 10, 4))
    ax_loss, ax_miou = axes[:2]
    if train:
        ax_loss.plot(*zip(*train), lw=1)
    ax_loss.set(xlabel="iteration", ylabel="training loss", title="loss")
    if val:
        ax_miou.plot(*zip(*val), marker="o")
    ax_miou.set(xlabel="iteration", ylabel="mIoU (%)", title="validation mIoU")
    if shares:
        ax_share = axes[2]
        iterations = [i for i, _ in shares]
        for c in range(len(shares[-1][1])):
            color = plt.cm.tab20(c % 20)
            ax_share.plot(iterations, [100 * v[c] if c < len(v) else float("nan") for _, v in shares], lw=1,
                          color=color, label=f"class {c}")
            if target is not None and c < len(target):
                ax_share.axhline(100 * target[c], color=color, lw=0.8, ls="--")
        ax_share.set(xlabel="iteration", ylabel="share (%)", yscale="symlog",
                     title="pseudo-label share (dashed: labeled)")
        ax_share.legend(fontsize=6, ncol=2)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
