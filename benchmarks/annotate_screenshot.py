"""docs/annotate.png: the annotate page with the image list ordered by the "label next" score, on the best
unlabeled CamVid image (key N), after one stroke of the accept tool (the model's class where it is sure) with
the unsure pixels shown; and the page load time (navigation start to the first image and its labels shown, by
the page's clock; median of 5).

    OMP_NUM_THREADS=1 python benchmarks/annotate_screenshot.py --list LIST --labels DIR --checkpoint CKPT \
        --image train/0001TP_007110 --out docs/annotate.png

LIST is a CamVid split list, DIR a label folder for it (copied first: the page writes nothing unless edited).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import tempfile
from pathlib import Path

from PIL import Image


def _harness():
    spec = importlib.util.spec_from_file_location("annotate_browser", Path(__file__).with_name("annotate_browser.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--camvid", default="/work/shared/datasets/camvid")
    parser.add_argument("--list", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--image", required=True, help="image id to open first (then N: the best unlabeled one)")
    parser.add_argument("--out", default="docs/annotate.png")
    parser.add_argument("--threshold", type=int, default=40, help="'unsure below' slider, percent")
    args = parser.parse_args()

    import torch

    from sparseg.annotate import LabelStore, dataset_classes, find_images
    from sparseg.annotate.assist import ModelAssist, Ranker
    from sparseg.annotate.server import create_app
    from sparseg.build import load_trained

    harness = _harness()
    cfg, state, model, _ = load_trained(args.checkpoint, [], None)
    assist = ModelAssist(model, cfg.eval, state["num_classes"], torch.device("cpu"))
    with tempfile.TemporaryDirectory() as work:
        labels = Path(work) / "labels"
        shutil.copytree(args.labels, labels)
        root, images = find_images(args.list, args.camvid, "camvid")
        store = LabelStore(root, images, dataset_classes("camvid"), labels)
        ranker = Ranker(assist, images, Path(work) / "ranking.json")
        ranker.run()
        with harness.running_server(create_app(store, assist, ranker=ranker)) as url, harness.chromium() as driver:
            loads = []
            for _ in range(5):
                driver.get("about:blank")  # a full load each time, not a same-document hash change
                page = harness.AnnotatePage(driver, f"{url}#{args.image}")
                loads.append((page.load_seconds * 1000, int(page.attr("readyAt"))))
            print("page loads (wall ms, page-clock ms):", loads)
            print(f"median page load: {statistics.median(w for w, _ in loads):.0f} ms wall, "
                  f"{statistics.median(p for _, p in loads):.0f} ms by the page's clock")
            page.wait(lambda: page.attr("rankingDone") == "1")
            driver.execute_script("const order = document.getElementById('order');"
                                  "order.value = 'score'; order.dispatchEvent(new Event('change'));")
            page.press("n")  # the best unlabeled image
            page.wait(lambda: page.attr("ready") == "1" and page.image_id() != args.image)
            page.press("mua" + "]" * 16)  # overlays on, the accept tool, a 32-pixel brush
            page.wait(lambda: driver.execute_script(
                "return document.getElementById('assist-status').textContent.startsWith('unsure:');"), timeout=120)
            page.driver.execute_script(
                "for (const [id, value] of [['opacity', 90], ['threshold', arguments[0]]]) {"
                "  document.getElementById(id).value = value;"
                "  document.getElementById(id).dispatchEvent(new Event('input')); }", args.threshold)
            width, height = driver.execute_script("return [state.width, state.height];")
            page.strokes([[(width * 0.1, height * 0.8), (width * 0.5, height * 0.7), (width * 0.9, height * 0.8)]])
            page.wait_saved()  # accepted: the model's sure classes under the stroke
            page.press("m")  # prediction overlay off: the accepted labels and the unsure pixels show
            shot = Path(work) / "shot.png"
            driver.save_screenshot(str(shot))
            print(driver.execute_script("return document.getElementById('assist-status').textContent;"))
        Image.open(shot).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
