"""Speed and memory of the DGCL density kernel at reference scale (dgcl.md §8).

Compares, for M query features against N memory features of dimension D:
  naive  the reference's way: the full M×N similarity matrix, one top-k per scale (8, 16, 32)
  ours   sparseg.methods.dgcl.multiscale_density: chunked rows, one exact top-k with prefix weights
  floor  the bare matrix product of the normalised inputs (one torch.mm, full M×N output)
and prints the time of each (wall and process CPU time; on a CPU the ratios use CPU time, which other
jobs on a shared machine do not inflate) and its extra peak memory (RSS high-water mark above the inputs
on CPU, torch.cuda.max_memory_allocated on CUDA), then the per-iteration cost for 21 classes: each
class's loss density (M = N = 10,000) and memory-update density (1,000 new entries against N).

    python benchmarks/dgcl_density.py [--device cpu|cuda] [--precision fp32|tf32] [--repeats 3] [--chunk-mb MIB]
                                      [--json FILE]

``--precision tf32`` runs sparseg's kernel with TF32 matmuls (CUDA only; on a CPU it is fp32); the naive
kernel and the reference values stay fp32, so the printed error is TF32's. ``--json`` also writes the figures.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import threading
import time

import torch
import torch.nn.functional as F

from sparseg.methods.dgcl import DEFAULT_CHUNK_MB, multiscale_density

KS = (8, 16, 32)


def naive_density(features: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    similarity = F.normalize(features, dim=1) @ F.normalize(memory, dim=1).T
    return torch.stack([similarity.topk(k, dim=1).values.mean(1) for k in KS]).mean(0)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakMemory:
    """Extra peak memory of a block: RSS sampled every millisecond (CPU) or the CUDA allocator's peak."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.extra = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS starts at what is live
            self.base = self.peak = _rss_bytes()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.extra = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.extra = max(self.peak, _rss_bytes()) - self.base


def measure(fn, device: torch.device, repeats: int) -> tuple[float, float, int]:
    """Median wall and process-CPU seconds over ``repeats`` runs after one warm-up, and the extra peak
    memory of one more run."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    with PeakMemory(device) as peak:
        fn()
    return statistics.median(wall), statistics.median(cpu), peak.extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--m", type=int, default=10_000, help="query features (pixels of one class)")
    parser.add_argument("--n", type=int, default=10_000, help="memory features per class")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--update", type=int, default=1_000, help="new memory entries per class and update")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-mb", type=float, help="default: DEFAULT_CHUNK_MB of the device")
    parser.add_argument("--precision", choices=("fp32", "tf32"), default="fp32", help="of sparseg's kernel")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    features = torch.randn(args.m, args.dim, generator=g).relu().to(device)  # post-ReLU, like `fts`
    memory = torch.randn(args.n, args.dim, generator=g).relu().to(device)
    normalised_f, normalised_m = F.normalize(features, dim=1), F.normalize(memory, dim=1)

    def ours(queries: torch.Tensor = features) -> torch.Tensor:
        return multiscale_density(queries, memory, KS, chunk_mb=args.chunk_mb, precision=args.precision)

    error = (ours() - naive_density(features, memory)).abs().max().item()
    print(f"device {device} ({torch.get_num_threads()} CPU threads), M={args.m} N={args.n} D={args.dim}, "
          f"ks={KS}, {args.precision}; max |ours - naive (fp32)| = {error:.2e}")
    rows = min(args.m, max(1, int((args.chunk_mb or DEFAULT_CHUNK_MB[device.type]) * 2**20) // (args.n * 4)))
    print(f"ours: chunks of {rows} rows ({rows * args.n * 4 / 2**20:.0f} MiB of similarities)")

    results = {
        "floor (bare product)": measure(lambda: normalised_f @ normalised_m.T, device, args.repeats),
        "naive (full matrix, 3 top-k)": measure(lambda: naive_density(features, memory), device, args.repeats),
        "ours (chunked, 1 top-k)": measure(ours, device, args.repeats),
    }
    # on a CPU shared with other jobs, wall time includes waiting for them: compare process CPU time
    key = 1 if device.type == "cpu" else 0
    floor = results["floor (bare product)"][key]
    print(f"{'':30s} {'wall':>9s} {'CPU':>9s} {'vs floor':>9s} {'extra peak':>11s}")
    for name, (wall, cpu, extra) in results.items():
        print(f"{name:30s} {wall * 1e3:7.0f}ms {cpu * 1e3:7.0f}ms {(wall, cpu)[key] / floor:8.2f}x "
              f"{extra / 2**20:8.0f}MiB")
    naive_t, ours_t = results["naive (full matrix, 3 top-k)"][key], results["ours (chunked, 1 top-k)"][key]
    print(f"speed-up over naive: {naive_t / ours_t:.2f}x; ours within {ours_t / floor:.2f}x of the bare product "
          f"({'CPU' if key else 'wall'} time)")

    new = features[: args.update]
    update = {
        "naive": measure(lambda: naive_density(new, memory), device, args.repeats)[key],
        "ours": measure(lambda: ours(new), device, args.repeats)[key],
    }
    for name, loss_t in (("naive", naive_t), ("ours", ours_t)):
        total = args.classes * (loss_t + update[name])
        print(f"per iteration, {args.classes} classes x (loss density {args.m}x{args.n} + update "
              f"{args.update}x{args.n}), {name}: {total:.2f}s "
              f"({args.classes} x ({loss_t * 1e3:.0f} + {update[name] * 1e3:.0f}) ms)")
    if args.json:
        figures = {
            "device": str(device), "precision": args.precision, "m": args.m, "n": args.n, "dim": args.dim,
            "max_abs_error_vs_fp32_naive": error, "time_key": "cpu" if key else "wall",
            "ms": {name: {"wall": wall * 1e3, "cpu": cpu * 1e3} for name, (wall, cpu, _) in results.items()},
            "extra_peak_mib": {name: extra / 2**20 for name, (_, _, extra) in results.items()},
            "speedup_over_naive": naive_t / ours_t, "ours_vs_floor": ours_t / floor,
        }
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
