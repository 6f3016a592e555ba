"""Save latency and page memory of `sparseg annotate`.

    OMP_NUM_THREADS=1 python benchmarks/annotate_latency.py [--edits 200]
    OMP_NUM_THREADS=1 python benchmarks/annotate_latency.py --page [--strokes 100]

Default: 200 scripted edits of one 480x360 label, each a new scribble sent as the page sends it (PUT, one
byte per pixel, If-Match the previous reply's ETag) to uvicorn on 127.0.0.1; prints p50/p95/max of the HTTP
round trip and of the store's part alone (validate, version check, PNG-encode, atomic write with fsync, list and
manifest).

``--page``: headless Chromium on one 4000x3000 (12-megapixel) image, 100 random scribbles drawn as pointer
strokes; prints p50/p95/max of the save latency (stroke released to the file on disk with no save pending)
and the memory of the page's renderer processes (private bytes, after a forced garbage collection) after
loading and after the strokes.
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


def renderer_private_mb(driver_pid: int) -> float:
    """Private memory (MB) of the Chromium renderer processes below chromedriver ``driver_pid``."""
    parents = {}
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            parents[int(proc.name)] = int(stat[stat.rfind(")") + 2 :].split()[1])
        except (OSError, ValueError):
            continue
    total = 0
    for pid in parents:
        ancestor = pid
        while ancestor in parents and ancestor != driver_pid:
            ancestor = parents[ancestor]
        try:
            if ancestor != driver_pid or b"--type=renderer" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in rollup if line.startswith(("Private_Clean", "Private_Dirty")))
    return total / 1024


def page_benchmark(strokes: int, seed: int) -> None:
    """100 strokes on a 12-megapixel image in the page: save latency and renderer memory."""
    from sparseg.annotate import ClassSet, LabelStore, find_images
    from sparseg.annotate.server import create_app

    harness = _harness()
    rng = np.random.default_rng(seed)
    width, height = 4000, 3000
    with tempfile.TemporaryDirectory() as work:
        images = Path(work) / "images"
        images.mkdir()
        y, x = np.mgrid[0:height, 0:width]
        rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1).astype(np.uint8)
        Image.fromarray(rgb).save(images / "big.jpg", quality=90)
        classes = ClassSet(tuple(f"class_{i}" for i in range(11)), tuple((i * 20, 0, 0) for i in range(11)))
        store = LabelStore(*find_images(images), classes, Path(work) / "labels")
        path = store.label_path("big")
        with harness.running_server(create_app(store)) as url, harness.chromium() as driver:
            driver_pid = driver.service.process.pid
            page = harness.AnnotatePage(driver, url)
            driver.execute_cdp_cmd("HeapProfiler.collectGarbage", {})
            loaded_mb = renderer_private_mb(driver_pid)
            latencies = []
            for i in range(strokes):
                page.press(str(1 + i % 9))
                start_xy = rng.uniform([200, 200], [width - 200, height - 200])
                line = start_xy + np.cumsum(rng.normal(0, 40, (10, 2)), axis=0)
                before = path.stat().st_mtime_ns if path.exists() else 0
                page.strokes([[(float(a), float(b)) for a, b in line]])
                start = time.perf_counter()
                page.wait(lambda before=before: path.exists() and path.stat().st_mtime_ns != before
                          and page.attr("pendingSaves") == "0", timeout=120)
                latencies.append((time.perf_counter() - start) * 1000)
            driver.execute_cdp_cmd("HeapProfiler.collectGarbage", {})
            drawn_mb = renderer_private_mb(driver_pid)
        labeled = int((np.asarray(Image.open(path)) != 254).sum())
    print(f"{strokes} strokes on a {width}x{height} image ({labeled} labeled pixels)")
    print(f"save latency (stroke released to file on disk): {percentiles(latencies)}")
    print(f"renderer private memory: {loaded_mb:.0f} MB after loading, {drawn_mb:.0f} MB after the strokes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--page", action="store_true", help="strokes in headless Chromium on a 12-megapixel image")
    parser.add_argument("--strokes", type=int, default=100)
    args = parser.parse_args()
    if args.page:
        return page_benchmark(args.strokes, args.seed)

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
        round_trip_ms, version = [], '"none"'
        with _harness().running_server(create_app(store)) as url, httpx.Client(base_url=url) as client:
            for _ in range(args.edits):
                start_xy = rng.uniform([0, 0], [480, 360])
                path = start_xy + np.cumsum(rng.normal(0, 6, (20, 2)), axis=0)
                stroke = rasterize([], [(path, 0)], (360, 480), width=3) == 0
                label[stroke] = rng.integers(0, 11)
                start = time.perf_counter()
                reply = client.put("api/label/frame", content=label.tobytes(),
                                   headers={"Content-Type": "application/octet-stream", "If-Match": version})
                round_trip_ms.append((time.perf_counter() - start) * 1000)
                reply.raise_for_status()
                version = reply.headers["ETag"]
        labeled = reply.json()["labeled_pixels"]
    print(f"{args.edits} edits of a 480x360 label (final: {labeled} labeled pixels, "
          f"{labeled / (480 * 360):.1%})")
    print(f"HTTP round trip: {percentiles(round_trip_ms)}")
    print(f"store.save:      {percentiles(store_ms)}")


if __name__ == "__main__":
    main()
