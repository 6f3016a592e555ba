"""Save latency of the `sparseg annotate` server: 200 scripted edits of one 480x360 label, each a new scribble
sent as the page sends it (PUT, one byte per pixel) to uvicorn on 127.0.0.1, timed from request to reply.

    OMP_NUM_THREADS=1 python benchmarks/annotate_latency.py [--edits 200]

Prints p50/p95/max of the HTTP round trip and of the store's part alone (validate, PNG-encode, atomic
write with fsync, list and manifest).
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _harness():
    spec = importlib.util.spec_from_file_location("annotate_browser", Path(__file__).with_name("annotate_browser.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def percentiles(ms: list[float]) -> str:
    return f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, max {max(ms):.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import httpx

    from sparseg.annotate import ClassSet, LabelStore, find_images
    from sparseg.annotate.server import create_app
    from sparseg.data import rasterize
    from sparseg.labels import UNLABELED

    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as work:
        images = Path(work) / "images"
        images.mkdir()
        Image.fromarray(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)).save(images / "frame.png")
        classes = ClassSet(tuple(f"class_{i}" for i in range(11)), tuple((i * 20, 0, 0) for i in range(11)))
        store = LabelStore(*find_images(images), classes, Path(work) / "labels")
        save = store.save
        store_ms: list[float] = []

        def timed_save(*a):
            start = time.perf_counter()
            result = save(*a)
            store_ms.append((time.perf_counter() - start) * 1000)
            return result

        store.save = timed_save
        label = np.full((360, 480), UNLABELED, dtype=np.uint8)
        round_trip_ms = []
        with _harness().running_server(create_app(store)) as url, httpx.Client(base_url=url) as client:
            for _ in range(args.edits):
                start_xy = rng.uniform([0, 0], [480, 360])
                path = start_xy + np.cumsum(rng.normal(0, 6, (20, 2)), axis=0)
                stroke = rasterize([], [(path, 0)], (360, 480), width=3) == 0
                label[stroke] = rng.integers(0, 11)
                start = time.perf_counter()
                reply = client.put("api/label/frame", content=label.tobytes(),
                                   headers={"Content-Type": "application/octet-stream"})
                round_trip_ms.append((time.perf_counter() - start) * 1000)
                reply.raise_for_status()
        labeled = reply.json()["labeled_pixels"]
    print(f"{args.edits} edits of a 480x360 label (final: {labeled} labeled pixels, "
          f"{labeled / (480 * 360):.1%})")
    print(f"HTTP round trip: {percentiles(round_trip_ms)}")
    print(f"store.save:      {percentiles(store_ms)}")


if __name__ == "__main__":
    main()
