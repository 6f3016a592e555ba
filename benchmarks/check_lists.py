"""Time of the up-front list check (SegmentationDataset.check_files) at Cityscapes scale.

Writes N image/mask PNG pairs (default 3,000, the Cityscapes train + val count; small images, since only
the headers are read) into a temporary folder, then times reading the split list (paths resolved and
checked to exist) and checking every file's header (opens, sizes equal, masks single-channel), each the
best of --repeats runs. The files were just written, so they sit in the page cache: this is the CPU cost;
a cold or network file system adds one small read per file.

    python benchmarks/check_lists.py [--pairs 3000] [--size WIDTH HEIGHT] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sparseg.config import DataConfig
from sparseg.data import create_dataset_spec, read_split
from sparseg.data.datasets import SegmentationDataset


def write_pairs(root: Path, pairs: int, width: int, height: int) -> Path:
    """``pairs`` copies of one smooth image and mask (small files: only the headers are read)."""
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rows, cols = np.indices((height, width))
    image = Image.fromarray(((rows + cols) % 256).astype(np.uint8)).convert("RGB")
    mask = Image.fromarray((rows // 32 % 3).astype(np.uint8))
    lines = []
    for index in range(pairs):
        image.save(root / "images" / f"{index:05d}.png")
        mask.save(root / "masks" / f"{index:05d}.png")
        lines.append(f"images/{index:05d}.png masks/{index:05d}.png")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root / "list.txt"


def best_of(repeats: int, fn) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--size", type=int, nargs=2, default=(64, 64), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        list_path = write_pairs(root, args.pairs, *args.size)
        spec = create_dataset_spec(DataConfig(dataset="folder", root=str(root), num_classes=3))
        read_time, entries = best_of(args.repeats, lambda: read_split(list_path, root, spec, labeled=True))
        dataset = SegmentationDataset(entries, spec, transform=None, labeled=True)
        check_time, _ = best_of(args.repeats, dataset.check_files)
    print(f"{args.pairs} image/mask pairs ({args.size[0]}x{args.size[1]} PNG), best of {args.repeats}:")
    print(f"  read_split (paths resolved, existence): {read_time:.3f} s")
    print(f"  check_files (headers, sizes, mask bands): {check_time:.3f} s")
    print(f"  per 1,000 pairs: {1000 * check_time / args.pairs:.3f} s")


if __name__ == "__main__":
    main()
