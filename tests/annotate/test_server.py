import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from sparseg.annotate import encode_png
from sparseg.annotate.assist import ModelAssist
from sparseg.annotate.server import create_app, serve
from sparseg.config import EvalConfig
from sparseg.labels import UNLABELED

RAW = {"Content-Type": "application/octet-stream", "If-Match": '"none"'}  # a first save: no file yet


@pytest.fixture
def client(store):
    return TestClient(create_app(store))


def test_session_lists_classes_images_and_progress(client):
    session = client.get("/api/session").json()
    assert session["classes"] == ["sky", "road", "car"] and session["palette"][1] == [128, 64, 128]
    assert [(i["id"], i["width"], i["height"]) for i in session["images"]] == [
        ("a", 40, 30), ("b", 32, 24), ("sub/c", 20, 16)]
    assert session["progress"] == {"labeled": 0, "total": 3} and session["model"] is False


def test_page_and_images_are_served(client, image_root):
    page = client.get("/")
    assert page.status_code == 200 and "static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    response = client.get("/api/image/sub/c")
    assert response.headers["content-type"] == "image/png"
    assert response.content == (image_root / "sub/c.png").read_bytes()
    assert client.get("/api/image/b").headers["content-type"] == "image/jpeg"


def test_label_round_trip_raw_and_png(client, store):
    empty = client.get("/api/label/a")
    assert empty.content == bytes([UNLABELED]) * 1200 and empty.headers["etag"] == '"none"'
    label = np.full((30, 40), UNLABELED, np.uint8)
    label[10:13, 5:25] = 2
    reply = client.put("/api/label/a", content=label.tobytes(), headers={**RAW, "If-Match": empty.headers["etag"]})
    assert reply.status_code == 200
    version = reply.json().pop("version")
    assert reply.json() == {"id": "a", "labeled_pixels": 60, "version": version,
                            "progress": {"labeled": 1, "total": 3}}
    assert reply.headers["etag"] == f'"{version}"' == client.get("/api/label/a").headers["etag"]
    assert client.get("/api/label/a").content == label.tobytes()
    assert np.array_equal(np.asarray(Image.open(store.out / "a.png")), label)
    label[0, 0] = 0
    reply = client.put("/api/label/a", content=encode_png(label),
                       headers={"Content-Type": "image/png", "If-Match": f'"{version}"'})
    assert reply.status_code == 200
    assert client.get("/api/label/a").content == label.tobytes()
    assert client.get("/api/session").json()["images"][0]["labeled_pixels"] == 61


@pytest.mark.parametrize("path", [
    "/api/image/..%2F..%2Fetc%2Fpasswd",
    "/api/image/%2Fetc%2Fpasswd",
    "/api/label/..%2Fclasses",
    "/api/image/link",  # a symlink out of the root: not in the list
    "/api/image/a.png",  # ids have no suffix
    "/static/..%2F..%2F__init__.py",
])
def test_paths_outside_the_list_are_refused(client, image_root, tmp_path, path):
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    (image_root / "link.png").symlink_to(tmp_path / "outside.png")
    response = client.get(path)
    assert response.status_code == 404
    if path.startswith("/api"):
        assert "not in the list" in response.json()["error"] or "no image" in response.json()["error"]


def test_a_save_based_on_an_old_version_is_412_and_writes_nothing(client, store):
    first = np.full((30, 40), UNLABELED, np.uint8)
    first[0] = 1
    assert client.put("/api/label/a", content=first.tobytes(), headers=RAW).status_code == 200
    on_disk = store.label_path("a").read_bytes()
    stale = client.put("/api/label/a", content=np.zeros((30, 40), np.uint8).tobytes(), headers=RAW)
    assert stale.status_code == 412 and "changed since they were loaded" in stale.json()["error"]
    assert stale.headers["etag"] == client.get("/api/label/a").headers["etag"]
    missing = client.put("/api/label/a", content=first.tobytes(), headers={"Content-Type": "application/octet-stream"})
    assert missing.status_code == 428 and "If-Match" in missing.json()["error"]
    assert store.label_path("a").read_bytes() == on_disk


def test_state_changing_requests_from_another_origin_are_403_whatever_the_client(client, store):
    body = np.zeros((30, 40), np.uint8).tobytes()
    for origin in ("http://evil.example", "null", "http://testserver:8765"):
        response = client.put("/api/label/a", content=body, headers={**RAW, "Origin": origin})
        assert response.status_code == 403 and f"origin {origin} refused" in response.json()["error"]
    assert not store.label_path("a").exists()
    assert client.get("/api/label/a", headers={"Origin": "http://evil.example"}).status_code == 200
    assert client.put("/api/label/a", content=body, headers={**RAW, "Origin": "http://testserver"}).status_code == 200


def test_writes_outside_the_list_are_refused(client, store, tmp_path):
    response = client.put("/api/label/..%2F..%2Fevil", content=b"\x00", headers=RAW)
    assert response.status_code == 404 and "no image '../../evil'" in response.json()["error"]
    assert not store.out.exists() and not (tmp_path.parent / "evil.png").exists()


def test_a_label_folder_linked_into_the_image_root_is_not_written(client, store, image_root):
    store.out.mkdir()
    (store.out / "sub").symlink_to(image_root / "sub")
    response = client.put("/api/label/sub/c", content=bytes([UNLABELED]) * 320, headers=RAW)
    assert response.status_code == 403 and "never written there" in response.json()["error"]
    assert sorted(p.name for p in (image_root / "sub").iterdir()) == ["c.png"]


@pytest.mark.parametrize("body, content_type, status, fragment", [
    (b"\x00" * 1199, "application/octet-stream", 422, "a: label has 1199 bytes; image a is 40x30 = 1200 pixels"),
    (bytes([3]) * 1200, "application/octet-stream", 422, "label values [3] are not classes 0..2, 254"),
    (encode_png(np.zeros((30, 40, 3), np.uint8)), "image/png", 422, "mode RGB; expected single-channel"),
    (encode_png(np.zeros((31, 40), np.uint8)), "image/png", 422, "label is 40x31; image a is 40x30"),
    (b"\x89PNG\r\n\x1a\n garbage", "image/png", 422, "not a readable PNG"),
    (b"[1, 2]", "application/json", 415, "send application/octet-stream"),
    (b"\x00" * 200_000, "application/octet-stream", 413, "over the"),
])
def test_bad_payloads_are_refused_with_a_clear_message(client, store, body, content_type, status, fragment):
    response = client.put("/api/label/a", content=body, headers={**RAW, "Content-Type": content_type})
    assert response.status_code == status
    assert fragment in response.json()["error"]
    assert not store.label_path("a").exists()


def test_loopback_server_refuses_foreign_host_headers(store):
    client = TestClient(create_app(store, allowed_hosts=["127.0.0.1", "localhost"]), base_url="http://127.0.0.1")
    assert client.get("/api/session").status_code == 200
    assert client.get("/api/session", headers={"Host": "attacker.example:8765"}).status_code == 400


def test_prediction_maps_class_certainty_and_are_cached(store, half_sure_model):
    model = half_sure_model
    assist = ModelAssist(model, EvalConfig(mode="whole"), 3, torch.device("cpu"))
    client = TestClient(create_app(store, assist))
    assert client.get("/api/session").json()["model"] is True
    maps = np.frombuffer(client.get("/api/prediction/a").content, np.uint8).reshape(3, 30, 40)
    assert (maps[0, :, :20] == 1).all() and (maps[0, :, 20:] == 0).all()
    assert (maps[1, :, :20] > 250).all() and (maps[1, :, 20:] < 130).all()  # max probability
    assert (maps[2, :, :20] > 240).all() and (maps[2, :, 20:] < 100).all()  # 1 - normalised entropy
    client.get("/api/prediction/a")
    assert model.calls == 1


def test_certainty_is_one_minus_the_normalised_entropy_of_sparseg_stats(store, half_sure_model, monkeypatch):
    from sparseg import stats

    calls = []
    monkeypatch.setattr("sparseg.annotate.assist.entropy", lambda probs: calls.append(probs) or stats.entropy(probs))
    maps = ModelAssist(half_sure_model, EvalConfig(mode="whole"), 3, torch.device("cpu")).compute(store.entry("a").path)
    expected = (1 - stats.entropy(calls[0])[0] / np.log(3)).clamp(0, 1).mul(255).round().to(torch.uint8)
    assert np.array_equal(maps[2], expected.numpy())


def test_prediction_without_a_model_is_a_clear_404(client):
    response = client.get("/api/prediction/a")
    assert response.status_code == 404 and "--checkpoint" in response.json()["error"]


def test_serving_off_loopback_warns(store, monkeypatch, capsys):
    import uvicorn

    served = []
    def run(self, sockets):
        served.append(sockets[0].getsockname())
        sockets[0].close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    serve(store, None, "127.0.0.1", 0)
    out = capsys.readouterr()
    assert "warning" not in out.err and f"open http://127.0.0.1:{served[0][1]}/" in out.out
    serve(store, None, "0.0.0.0", 0)
    assert "warning: serving on 0.0.0.0" in capsys.readouterr().err


def test_a_busy_port_is_one_clear_error():
    from sparseg.annotate.server import bind

    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match=f"cannot serve on 127.0.0.1:{taken.getsockname()[1]}: .*--port 0"):
            bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_ranking_scores_uncertainty_and_rare_classes_and_is_cached_per_checkpoint(store):
    from sparseg.annotate.assist import Ranker
    from tests.annotate.conftest import PerImageModel

    class Counting(PerImageModel):
        calls = 0

        def forward(self, x):
            Counting.calls += 1
            return super().forward(x)

    assist = ModelAssist(Counting(), EvalConfig(mode="whole"), 3, torch.device("cpu"))
    cache = store.out / ".annotate" / "ranking-x.json"
    ranker = Ranker(assist, list(store.images.values()), cache)
    client = TestClient(create_app(store, assist, ranker=ranker))
    assert client.get("/api/session").json()["ranking"] is True
    assert client.get("/api/ranking").json() == {"done": 0, "total": 3, "error": None, "scores": {}}
    ranker.run()
    ranking = client.get("/api/ranking").json()
    assert ranking["done"] == 3 and Counting.calls == 3
    scores = ranking["scores"]
    # b: unsure (normalised entropy ~0.96); c: sure, but of class 2, predicted on 1/3 of the pool's images
    assert scores["b"]["uncertainty"] > 0.9 and scores["a"]["uncertainty"] < 0.01
    assert scores["sub/c"]["balance"] == 1 and 0 < scores["a"]["balance"] < 0.5
    assert scores["b"]["score"] > scores["sub/c"]["score"] > scores["a"]["score"]
    again = Ranker(assist, list(store.images.values()), cache)  # a restart with the same checkpoint
    again.run()
    assert Counting.calls == 3 and again.snapshot()["scores"] == scores
    assert TestClient(create_app(store)).get("/api/ranking").status_code == 404


def test_16_bit_images_are_scaled_as_in_training_for_the_page_and_the_model(classes_file, tmp_path):
    from sparseg.annotate import LabelStore, find_images, load_classes

    root = tmp_path / "deep"
    root.mkdir()
    Image.fromarray(np.full((6, 8), 32896, np.uint16)).save(root / "d.tif")  # 32896 * 255/65535 = 128
    store = LabelStore(*find_images(root), load_classes(classes_file), tmp_path / "labels")
    seen = []

    class Recording(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return {"pred": torch.zeros(x.shape[0], 3, *x.shape[2:])}

    client = TestClient(create_app(store, ModelAssist(Recording(), EvalConfig(mode="whole"), 3, torch.device("cpu"))))
    page_image = np.asarray(Image.open(io.BytesIO(client.get("/api/image/d").content)))
    assert page_image.shape == (6, 8, 3) and (page_image == 128).all()  # not clipped to 255
    assert client.get("/api/prediction/d").status_code == 200
    assert torch.allclose(seen[0], torch.full_like(seen[0], 128 / 255))


def test_the_ranking_cache_is_written_every_25_images_and_at_the_end(tmp_path, monkeypatch):
    from sparseg.annotate import assist as assist_module
    from sparseg.annotate.store import ImageEntry

    image = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(image)
    images = [ImageEntry(f"i{n:02d}", image, (4, 4)) for n in range(60)]

    class Fixed:
        num_classes = 3

        def compute(self, path):
            return np.zeros((3, 4, 4), np.uint8)

    written, real = [], assist_module.write_atomic

    def counting(path, data, **options):  # records how many images each write holds
        written.append(len(json.loads(data)["images"]))
        real(path, data, **options)

    monkeypatch.setattr(assist_module, "write_atomic", counting)
    cache = tmp_path / ".annotate" / "ranking.json"
    assist_module.Ranker(Fixed(), images, cache).run()
    assert written == [25, 50, 60]
    assert len(json.loads(cache.read_text())["images"]) == 60
