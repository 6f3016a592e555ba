"""Browser harness for `sparseg annotate`: the server in a thread, headless Chromium driven by Selenium.

Used by tests/annotate/test_browser.py and, as a script, to label CamVid images through the page:

    OMP_NUM_THREADS=1 python benchmarks/annotate_browser.py --images 5 --out /tmp/annotate_camvid

It sparsifies the first N images of CamVid's train list (scribbles, seed 0), replays every labeled pixel of
each image as browser strokes (brush width 1, one stroke per run of a class along rows or columns, whichever
needs fewer), moves through the images with the keyboard, and compares the files the page saved with the
sparsify files (pixels and bytes). It also reports the page load time.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000")


class BrowserUnavailable(RuntimeError):
    """No Chromium, chromedriver or selenium on this machine; the message says which."""


@contextmanager
def running_server(app, port: int = 0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 in a thread (port 0: a free one); yield the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted server takes its port back at once
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the annotate server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def chromium() -> Iterator:
    """A headless Chromium WebDriver with a fresh profile; BrowserUnavailable when one cannot start."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise BrowserUnavailable("selenium is not installed (pip install selenium)") from None
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver_binary = shutil.which("chromedriver")
    if binary is None or driver_binary is None:
        raise BrowserUnavailable("no chromium/chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    with tempfile.TemporaryDirectory(prefix="sparseg-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        try:
            driver = webdriver.Chrome(options=options, service=Service(driver_binary))
        except WebDriverException as err:
            raise BrowserUnavailable(f"chromium did not start: {err.msg}") from None
        try:
            yield driver
        finally:
            driver.quit()


class AnnotatePage:
    """The annotate page in a WebDriver: keys, strokes in image pixel coordinates, waiting for saves."""

    def __init__(self, driver, url: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.actions.action_builder import ActionBuilder

        self.driver, self.url, self._chains, self._builder = driver, url, ActionChains, ActionBuilder
        start = time.perf_counter()
        driver.get(url)
        self.wait(lambda: self.attr("ready") == "1")
        self.load_seconds = time.perf_counter() - start

    def attr(self, name: str) -> str | None:
        return self.driver.execute_script(f"return document.body.dataset.{name};")

    def wait(self, condition, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                status = self.driver.execute_script("return document.getElementById('status').textContent;")
                raise TimeoutError(f"page condition not met in {timeout} s; status: {status}")
            time.sleep(0.005)

    def image_id(self) -> str:
        return self.attr("image")

    def press(self, keys: str) -> None:
        self._chains(self.driver, duration=0).send_keys(keys).perform()

    def go_next(self) -> None:
        """Next image (right arrow); waits until it is shown and the previous image's saves are done."""
        from selenium.webdriver.common.keys import Keys

        before = self.image_id()
        self.press(Keys.ARROW_RIGHT)
        self.wait(lambda: self.attr("ready") == "1" and self.image_id() != before)
        self.wait_saved()

    def wait_saved(self) -> None:
        self.wait(lambda: self.attr("pendingSaves") == "0")

    def save_now(self) -> None:
        """Send pending edits without waiting for the autosave delay (right arrow on the last image) and wait."""
        from selenium.webdriver.common.keys import Keys

        self.press(Keys.ARROW_RIGHT)
        self.wait_saved()

    def pick_class(self, cls: int) -> None:
        self.driver.execute_script(f"document.querySelector('#palette li[data-cls=\"{cls}\"]').click();")

    def _to_client(self):
        """Image pixel (x = column, y = row) -> viewport coordinates of its centre; exact at zoom 1 (key 0)."""
        left, top, scale = self.driver.execute_script(
            "const c = document.getElementById('label-layer'), r = c.getBoundingClientRect();"
            "return [r.left, r.top, r.width / c.width];")
        return lambda x, y: (int(np.floor(left + (x + 0.5) * scale)), int(np.floor(top + (y + 0.5) * scale)))

    def strokes(self, polylines: list[list[tuple[float, float]]]) -> None:
        """Draw each polyline (image pixel coordinates) as one press-move-release, all in one action list."""
        from selenium.webdriver.common.actions.mouse_button import MouseButton

        builder = self._builder(self.driver, duration=0)
        pointer, client = builder.pointer_action, self._to_client()
        for line in polylines:
            pointer.move_to_location(*client(*line[0]))
            pointer.pointer_down(MouseButton.LEFT)
            for x, y in line[1:]:
                pointer.move_to_location(*client(x, y))
            pointer.pointer_up(MouseButton.LEFT)
        builder.perform()


def runs(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Strokes of width 1 covering exactly the True pixels: one per run along rows or along columns,
    whichever gives fewer."""
    def along_rows(m):
        lines = []
        for row in np.flatnonzero(m.any(1)):
            padded = np.concatenate([[False], m[row], [False]]).astype(np.int8)
            starts, ends = np.flatnonzero(np.diff(padded) == 1), np.flatnonzero(np.diff(padded) == -1) - 1
            lines += [[(int(s), int(row)), (int(e), int(row))] for s, e in zip(starts, ends)]
        return lines

    by_row = along_rows(mask)
    by_column = [[(y, x) for x, y in line] for line in along_rows(mask.T)]
    return min(by_row, by_column, key=len)


def replay_labels(page: AnnotatePage, label: np.ndarray, num_classes: int) -> int:
    """Draw ``label`` (canonical, 254 = unlabeled) on the current image; returns the number of strokes."""
    page.press("0")  # zoom 1: one image pixel per CSS pixel
    page.press("[" * 40)  # brush width 1
    page.press("s")
    count = 0
    for cls in range(num_classes):
        lines = runs(label == cls)
        if lines:
            page.pick_class(cls)
            page.strokes(lines)
            count += len(lines)
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--camvid", default="/work/shared/datasets/camvid")
    parser.add_argument("--images", type=int, default=5, help="first N images of train.txt")
    parser.add_argument("--out", required=True, help="work folder: list, sparsify labels, browser labels")
    args = parser.parse_args()

    from sparseg.annotate import LabelStore, dataset_classes, find_images
    from sparseg.annotate.server import create_app
    from sparseg.config import DataConfig
    from sparseg.data import create_dataset_spec, sparsify_list

    camvid, out = Path(args.camvid).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = (camvid / "train.txt").read_text().splitlines()[: args.images]
    (out / "list.txt").write_text("\n".join(lines) + "\n")
    spec = create_dataset_spec(DataConfig(dataset="camvid", root=str(camvid)))
    start = time.perf_counter()
    sparsify_list(out / "list.txt", camvid, spec, "scribbles", 0, out / "sparsify", overwrite=True)
    print(f"sparsify: {args.images} images in {time.perf_counter() - start:.1f} s")

    root, images = find_images(out / "list.txt", camvid, "camvid")
    browser_out = out / "browser"
    shutil.rmtree(browser_out, ignore_errors=True)
    store = LabelStore(root, images, dataset_classes("camvid"), browser_out)
    from PIL import Image

    with running_server(create_app(store)) as url, chromium() as driver:
        page = AnnotatePage(driver, url)
        print(f"page load (navigation to first image shown): {page.load_seconds * 1000:.0f} ms wall, "
              f"{page.attr('readyAt')} ms by the page's clock")
        strokes, start = 0, time.perf_counter()
        for i, entry in enumerate(images):
            assert page.image_id() == entry.id, (page.image_id(), entry.id)
            target = np.asarray(Image.open(out / "sparsify" / f"{entry.id}.png"))
            strokes += replay_labels(page, target, len(store.classes))
            if i + 1 < len(images):
                page.go_next()
        page.save_now()
        seconds = time.perf_counter() - start
    print(f"browser: {strokes} strokes on {len(images)} images in {seconds:.1f} s")
    identical_pixels = identical_bytes = 0
    for entry in images:
        ours, theirs = browser_out / f"{entry.id}.png", out / "sparsify" / f"{entry.id}.png"
        same = np.array_equal(np.asarray(Image.open(ours)), np.asarray(Image.open(theirs)))
        identical_pixels += same
        identical_bytes += ours.read_bytes() == theirs.read_bytes()
        if not same:
            diff = int((np.asarray(Image.open(ours)) != np.asarray(Image.open(theirs))).sum())
            print(f"  {entry.id}: {diff} pixels differ")
    print(f"pixel-identical: {identical_pixels}/{len(images)}; byte-identical: {identical_bytes}/{len(images)}")
    print(f"train with: --set data.root={camvid} data.train_list={browser_out.resolve() / 'train.txt'} "
          "data.label_format=sparse")
    return 0 if identical_pixels == len(images) else 1


if __name__ == "__main__":
    sys.exit(main())
