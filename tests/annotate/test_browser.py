"""End to end in headless Chromium: pick a class, draw a scribble, click a point, go on, read the PNG on disk."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparseg.annotate.assist import ModelAssist
from sparseg.annotate.server import create_app
from sparseg.config import EvalConfig
from sparseg.data import rasterize
from sparseg.labels import UNLABELED

HARNESS = Path(__file__).resolve().parents[2] / "benchmarks" / "annotate_browser.py"


def _harness():
    spec = importlib.util.spec_from_file_location("annotate_browser", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def harness():
    return _harness()


@pytest.fixture
def assist(request, half_sure_model):
    """No model, or with ``indirect`` parametrisation "half_sure" the model of conftest.py."""
    if getattr(request, "param", None) == "half_sure":
        return ModelAssist(half_sure_model, EvalConfig(mode="whole"), 3, torch.device("cpu"))
    return None


@pytest.fixture
def page(harness, store, assist):
    with harness.running_server(create_app(store, assist)) as url:
        try:
            browser = harness.chromium()
            driver = browser.__enter__()
        except harness.BrowserUnavailable as err:
            pytest.skip(f"no browser for the end-to-end test: {err}")
        try:
            yield harness.AnnotatePage(driver, url)
        finally:
            browser.__exit__(None, None, None)


def test_scribble_and_point_drawn_in_the_browser_are_saved_as_sparse_png(page, store):
    assert page.image_id() == "a"
    page.press("0")  # zoom 1
    page.press("2")  # class 1 (road), scribble tool, brush width 3
    scribble = [(4, 5), (12, 6), (20, 10), (30, 12)]
    page.strokes([scribble])
    page.press("3p")  # class 2 (car), point tool
    page.strokes([[(35, 25)]])
    page.go_next()
    assert page.image_id() == "b"

    saved = np.asarray(Image.open(store.label_path("a")))
    expected = rasterize([(35, 25, 2)], [(scribble, 1)], (30, 40), width=3)
    expected = np.where(rasterize([], [(scribble, 1)], (30, 40), width=3) == 1, 1, expected)  # scribble first
    assert np.array_equal(saved, expected)
    assert (saved == UNLABELED).mean() > 0.7
    assert (store.out / "train.txt").read_text().startswith("a.png ")


def test_eraser_undo_and_redo_reach_the_file(page, store):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    def saved_row():
        path = store.label_path("a")
        return np.asarray(Image.open(path))[2, 2:31] if path.exists() else None

    def ctrl(key):
        ActionChains(page.driver).key_down(Keys.CONTROL).send_keys(key).key_up(Keys.CONTROL).perform()

    page.press("0")
    page.press("1")
    page.strokes([[(2, 2), (30, 2)]])
    page.press("e")
    page.strokes([[(10, 2), (20, 2)]])
    erased = np.where((np.arange(2, 31) >= 9) & (np.arange(2, 31) <= 21), UNLABELED, 0)  # brush 3 reaches 1.5 px
    page.wait(lambda: saved_row() is not None and np.array_equal(saved_row(), erased))
    ctrl("z")  # undo the erasing: autosaved
    page.wait(lambda: (saved_row() == 0).all())
    ctrl("y")  # redo it
    page.wait(lambda: np.array_equal(saved_row(), erased))


@pytest.mark.parametrize("assist", ["half_sure"], indirect=True)
def test_model_overlay_shows_the_prediction_and_the_unsure_half(page):
    def pixel(layer, x, y):
        return page.driver.execute_script(
            "const context = document.getElementById(arguments[0]).getContext('2d');"
            "return Array.from(context.getImageData(arguments[1], arguments[2], 1, 1).data);", layer, x, y)

    def status():
        return page.driver.execute_script("return document.getElementById('assist-status').textContent;")

    page.press("mu")  # prediction and unsure pixels on
    page.wait(lambda: status().startswith("unsure:"))
    assert status() == "unsure: 50.0% of the pixels"  # max probability 0.44 < 0.60 on the right half
    assert pixel("prediction-layer", 5, 5) == [128, 64, 128, 255]  # class 1 (road) in its colour
    assert pixel("unsure-layer", 35, 5) == [255, 0, 255, 255] and pixel("unsure-layer", 5, 5) == [0, 0, 0, 0]
    page.press("u")
    assert page.driver.execute_script("return document.getElementById('unsure-layer').hidden;")


def test_strokes_land_on_the_pixel_under_the_pointer_after_zoom_and_pan(page, store):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    def transform():
        return page.driver.execute_script("return document.getElementById('stage').style.transform;")

    viewport = page.driver.find_element("id", "viewport")
    page.press("0")
    page.press("[[p")  # brush width 1, point tool
    for _ in range(3):  # wheel zoom, about x1.57 per notch of 300
        ActionChains(page.driver).scroll_from_origin(ScrollOrigin.from_element(viewport), 0, -300).perform()
    zoomed = transform()
    assert "scale(1)" not in zoomed
    page.strokes([[(10, 7)]])
    ActionChains(page.driver).key_down(" ").move_to_element(viewport).click_and_hold().move_by_offset(-60, -40) \
        .release().key_up(" ").perform()  # Space + drag pans
    assert transform() != zoomed
    page.strokes([[(30, 20)]])
    page.save_now()
    saved = np.asarray(Image.open(store.label_path("a")))
    assert sorted(zip(*np.nonzero(saved != UNLABELED))) == [(7, 10), (20, 30)]
