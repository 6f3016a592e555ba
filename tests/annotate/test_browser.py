"""End to end in headless Chromium: draw as a user does, then read the PNG on disk."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparseg.annotate import LabelStore
from sparseg.annotate.assist import ModelAssist, Ranker
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
def driver(harness):
    try:
        browser = harness.chromium()
        driver = browser.__enter__()
    except harness.BrowserUnavailable as err:
        pytest.skip(f"no browser for the end-to-end test: {err}")
    try:
        yield driver
    finally:
        browser.__exit__(None, None, None)


@pytest.fixture
def page(harness, store, assist, driver):
    with harness.running_server(create_app(store, assist)) as url:
        yield harness.AnnotatePage(driver, url)


def ctrl(page, key):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(page.driver).key_down(Keys.CONTROL).send_keys(key).key_up(Keys.CONTROL).perform()


def saved(store, image_id="a"):
    path = store.label_path(image_id)
    return np.asarray(Image.open(path)) if path.exists() else None


def status(page):
    return page.driver.execute_script("return document.getElementById('status').textContent;")


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
    assert (store.out / "train.txt").read_text() == f"{store.entry('a').path} {store.label_path('a')}\n"


def test_eraser_undo_and_redo_reach_the_file(page, store):
    def saved_row():
        label = saved(store)
        return None if label is None else label[2, 2:31]

    page.press("0")
    page.press("1")
    page.strokes([[(2, 2), (30, 2)]])
    page.press("e")
    page.strokes([[(10, 2), (20, 2)]])
    erased = np.where((np.arange(2, 31) >= 9) & (np.arange(2, 31) <= 21), UNLABELED, 0)  # brush 3 reaches 1.5 px
    page.wait(lambda: saved_row() is not None and np.array_equal(saved_row(), erased))
    ctrl(page, "z")  # undo the erasing: autosaved
    page.wait(lambda: (saved_row() == 0).all())
    ctrl(page, "y")  # redo it
    page.wait(lambda: np.array_equal(saved_row(), erased))


def test_undo_history_is_kept_across_navigation(page, store):
    from selenium.webdriver.common.keys import Keys

    page.press("0")
    page.press("2")
    page.strokes([[(2, 2), (30, 2)]])
    page.press("1")
    page.strokes([[(2, 9), (30, 9)]])
    page.go_next()
    page.press(Keys.ARROW_LEFT)
    page.wait(lambda: page.image_id() == "a" and page.attr("ready") == "1")
    ctrl(page, "z")  # the second stroke
    page.wait(lambda: (saved(store)[9] == UNLABELED).all() and (saved(store)[2, 2:31] == 1).all())
    ctrl(page, "z")  # the first
    page.wait(lambda: (saved(store) == UNLABELED).all())
    ctrl(page, "y")
    page.wait(lambda: (saved(store)[2, 2:31] == 1).all())


def test_a_save_during_a_server_restart_reaches_the_file_when_it_is_back(harness, store, driver):
    with harness.running_server(create_app(store)) as url:
        page = harness.AnnotatePage(driver, url)
        page.press("0")
        page.press("2")
    page.strokes([[(2, 2), (30, 2)]])  # the server is down
    page.wait(lambda: "retrying in" in status(page))
    assert page.attr("pendingSaves") == "1" and not store.label_path("a").exists()
    assert "pending" in driver.find_element("css selector", '#images li[data-id="a"]').get_attribute("class")
    assert driver.execute_script("return document.getElementById('pending').textContent;") == "unsaved: a"
    restarted = LabelStore(store.root, list(store.images.values()), store.classes, store.out)
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    with harness.running_server(create_app(restarted), port=port):
        page.wait(lambda: page.attr("pendingSaves") == "0", timeout=30)
    assert (saved(store)[2, 1:32] == 1).all() and (saved(store)[5:] == UNLABELED).all()
    assert status(page).startswith("saved a")


def test_two_tabs_on_one_image_end_with_a_412_and_no_lost_stroke(harness, page, store):
    first = page.driver.current_window_handle
    page.press("0")
    page.driver.switch_to.new_window("tab")
    second = harness.AnnotatePage(page.driver, page.url)  # both tabs have loaded the image without labels
    second.press("0")
    second.press("3")
    second.strokes([[(2, 20), (30, 20)]])
    second.wait_saved()
    page.driver.switch_to.window(first)
    page.press("2")
    page.strokes([[(2, 5), (30, 5)]])  # based on the old version: 412, reload, stroke re-applied, saved
    page.wait_saved()
    assert page.attr("conflicts") == "1" and "changed elsewhere" in status(page)
    label = saved(store)
    assert (label[5, 2:31] == 1).all() and (label[20, 2:31] == 2).all()
    shown = page.driver.execute_script(  # the page shows the other tab's stroke too
        "return Array.from(document.getElementById('label-layer').getContext('2d')"
        ".getImageData(10, 20, 1, 1).data);")
    assert shown == [0, 0, 142, 255]


def test_a_cross_origin_put_is_refused(page, store):
    import httpx

    other = page.url.replace("127.0.0.1", "localhost")  # the same server under another origin
    page.driver.get(other)
    script = """const done = arguments[arguments.length - 1];
        fetch(arguments[0] + 'api/label/a', {method: 'PUT', body: new Uint8Array(1200),
              headers: {'Content-Type': 'application/octet-stream', 'If-Match': '"none"'}})
          .then((r) => done('sent: ' + r.status), (e) => done('blocked: ' + e.message));"""
    assert page.driver.execute_async_script(script, page.url).startswith("blocked")
    # a client that sends it anyway with that Origin is refused by the server
    reply = httpx.put(page.url + "api/label/a", content=bytes(1200),
                      headers={"Origin": other.rstrip("/"), "If-Match": '"none"',
                               "Content-Type": "application/octet-stream"})
    assert reply.status_code == 403
    assert not store.label_path("a").exists()


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


@pytest.mark.parametrize("assist", ["half_sure"], indirect=True)
def test_accept_writes_the_models_class_only_where_it_is_sure_and_never_over_user_labels(page, store):
    page.press("0")
    page.press("1")
    page.strokes([[(2, 10), (36, 10)]])  # the user's class 0, brush 3: rows 9..11
    page.press("]]a")  # brush 5, accept tool: needs the prediction
    page.wait(lambda: page.driver.execute_script(
        "return document.getElementById('assist-status').textContent.startsWith('unsure:');"))
    page.strokes([[(0, 10), (39, 10)]])  # rows 8..12 across the image
    page.wait(lambda: saved(store) is not None and (saved(store)[8] == 1).any())
    page.wait_saved()
    user = rasterize([], [([(2, 10), (36, 10)], 0)], (30, 40), width=3) == 0
    under = rasterize([], [([(0, 10), (39, 10)], 0)], (30, 40), width=5) == 0
    expected = np.full((30, 40), UNLABELED, np.uint8)
    expected[under & ~user] = 1  # the model's class, where it is sure: the left half
    expected[:, 20:] = UNLABELED
    expected[user] = 0  # the user's labels stay
    assert np.array_equal(saved(store), expected) and (expected == 1).sum() > 40
    ctrl(page, "z")  # undo the accepted labels
    page.wait(lambda: (saved(store) != 1).all())
    assert np.array_equal(saved(store) == 0, user) and (saved(store) != 1).all()


@pytest.fixture
def ranked_page(harness, store, driver):
    from tests.annotate.conftest import PerImageModel

    assist = ModelAssist(PerImageModel(), EvalConfig(mode="whole"), 3, torch.device("cpu"))
    ranker = Ranker(assist, list(store.images.values()), store.out / ".annotate" / "ranking.json")
    ranker.start()
    with harness.running_server(create_app(store, assist, ranker=ranker)) as url:
        yield harness.AnnotatePage(driver, url)


def test_the_ranking_sorts_the_list_and_next_best_goes_to_the_top_image(ranked_page):
    from selenium.webdriver.support.ui import Select

    page = ranked_page
    page.wait(lambda: page.attr("rankingDone") == "1")
    Select(page.driver.find_element("id", "order")).select_by_value("score")
    listed = page.driver.execute_script(
        "return [...document.querySelectorAll('#images li')].map((li) => [li.dataset.id, li.children[1].textContent]);")
    assert [i for i, _ in listed] == ["b", "sub/c", "a"]  # unsure first, then the rare class, then the sure common one
    scores = [float(s) for _, s in listed]
    assert scores == sorted(scores, reverse=True) and scores[0] > 1 > scores[1] > scores[2]
    assert page.image_id() == "a"
    page.press("n")
    page.wait(lambda: page.image_id() == "b" and page.attr("ready") == "1")
    page.press("0")
    page.strokes([[(2, 2), (20, 2)]])  # b labeled: "label next" lists it after the unlabeled images
    page.wait_saved()
    Select(page.driver.find_element("id", "order")).select_by_value("list")
    Select(page.driver.find_element("id", "order")).select_by_value("score")
    assert page.driver.execute_script(
        "return [...document.querySelectorAll('#images li')].map((li) => li.dataset.id);") == ["sub/c", "a", "b"]
    page.press("n")
    page.wait(lambda: page.image_id() == "sub/c" and page.attr("ready") == "1")


def test_shortcut_overlay_class_hiding_and_brush_cursor(page, store):
    def pixel(x, y):
        return page.driver.execute_script(
            "return Array.from(document.getElementById('label-layer').getContext('2d')"
            ".getImageData(arguments[0], arguments[1], 1, 1).data);", x, y)

    script = "return document.getElementById(arguments[0]).hidden;"
    page.press("?")
    assert not page.driver.execute_script(script, "help")
    page.press("?")
    assert page.driver.execute_script(script, "help")
    page.press("03")  # zoom 1, class 2 (car)
    page.strokes([[(2, 2), (30, 2)]])
    page.wait_saved()
    page.wait(lambda: pixel(10, 2) == [0, 0, 142, 255])
    page.press("h")  # hidden: not drawn, still labeled
    page.wait(lambda: pixel(10, 2) == [0, 0, 0, 0])
    hidden = page.driver.find_element("css selector", '#palette li[data-cls="2"]')
    assert "hidden-class" in hidden.get_attribute("class")
    assert (saved(store)[2, 2:31] == 2).all()
    page.press("]]]")  # brush 6
    page.driver.find_element("id", "viewport").click()
    assert page.driver.execute_script("return document.getElementById('cursor').style.width;") == "6px"


def test_keys_reach_every_class_beyond_nine(harness, driver, image_root, tmp_path):
    from sparseg.annotate import ClassSet, find_images

    names = tuple(f"c{i}" for i in range(12))
    store = LabelStore(*find_images(image_root), ClassSet(names, tuple((i * 20, 0, 0) for i in range(12))),
                       tmp_path / "labels12")
    with harness.running_server(create_app(store)) as url:
        page = harness.AnnotatePage(driver, url)
        keys = page.driver.execute_script(
            "return [...document.querySelectorAll('#palette .key')].map((k) => k.textContent);")
        assert keys == [str(k) for k in range(1, 10)] + ["", "", ""]
        page.press("0`3")  # the next nine: key 3 is class 11
        assert "active" in page.driver.find_element("css selector", '#palette li[data-cls="11"]').get_attribute("class")
        page.strokes([[(2, 2), (30, 2)]])
        page.press("`1")  # back to the first nine
        page.strokes([[(2, 9), (30, 9)]])
        page.wait_saved()
        page.wait(lambda: saved(store) is not None and (saved(store)[9, 2:31] == 0).all())
        assert (saved(store)[2, 2:31] == 11).all()
