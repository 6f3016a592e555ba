import json
import threading

import numpy as np
import pytest
from PIL import Image

from sparseg.annotate import LabelError, LabelStore, encode_png, find_images, load_classes
from sparseg.annotate.store import NO_FILE, VersionConflict, dataset_classes
from sparseg.config import ConfigError, DataConfig
from sparseg.data import DataError, EvalTransform, build_dataset, create_dataset_spec, read_split, sparsify_list
from sparseg.labels import UNLABELED


def test_classes_from_yaml_and_from_a_dataset(classes_file, tmp_path):
    classes = load_classes(classes_file)
    assert classes.names == ("sky", "road", "car") and classes.palette[2] == (0, 0, 142)
    (tmp_path / "names.yaml").write_text("names: [a, b]\n")
    assert len(set(load_classes(tmp_path / "names.yaml").palette)) == 2  # default colours, distinct
    camvid = dataset_classes("camvid")
    assert camvid.names[0] == "sky" and len(camvid) == 11


@pytest.mark.parametrize("text, fragment", [
    ("- a\n- b\n", "expected a mapping"),
    ("names: [a]\ncolors: []\n", "unknown key(s) colors"),
    ("names: [a, b]\npalette: [[1, 2, 3]]\n", "one [r, g, b] per name (2)"),
    ("names: [a]\npalette: [[1, 2, 300]]\n", "palette[0]"),
    ("names: [a, 3]\n", "non-empty strings"),
    ("names: [a\n", "not valid YAML"),
])
def test_bad_class_files_are_refused_naming_the_file(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml") as err:
        load_classes(path)
    assert fragment in str(err.value)


def test_images_are_found_recursively_and_hidden_ones_and_symlinks_out_of_the_root_left_out(image_root, tmp_path):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    (image_root / "link.png").symlink_to(outside)
    (image_root / ".thumbs").mkdir()
    for hidden in (".thumbs/a.png", ".d.png"):  # as training's folder lists and predict leave them out
        Image.new("RGB", (8, 8)).save(image_root / hidden)
    root, images = find_images(image_root)
    assert root == image_root.resolve()
    assert [(e.id, e.size) for e in images] == [("a", (40, 30)), ("b", (32, 24)), ("sub/c", (20, 16))]


def test_two_images_with_one_id_are_refused(image_root):
    Image.new("RGB", (8, 8)).save(image_root / "a.jpg")
    with pytest.raises(DataError, match="share the id 'a'"):
        find_images(image_root)


def test_labels_are_never_written_into_the_image_root(image_root, classes_file):
    root, images = find_images(image_root)
    with pytest.raises(ConfigError, match="inside the image root"):
        LabelStore(root, images, load_classes(classes_file), image_root / "labels")


def test_save_writes_canonical_png_list_and_manifest_that_training_reads(store, image_root):
    label = np.full((30, 40), UNLABELED, dtype=np.uint8)
    label[5:8, 10:30] = 1
    label[20, 3] = 2
    store.save("a", label.tobytes(), "application/octet-stream")
    store.save("sub/c", np.full((16, 20), UNLABELED, np.uint8).tobytes(), "application/octet-stream")
    assert np.array_equal(np.asarray(Image.open(store.out / "a.png")), label)
    # only images with a labeled pixel are listed, with absolute paths
    assert (store.out / "train.txt").read_text() == f"{image_root.resolve() / 'a.png'} {store.out / 'a.png'}\n"
    manifest = json.loads((store.out / "manifest.json").read_text())
    assert manifest["summary"]["labeled_pixels_per_class"] == {"sky": 0, "road": 60, "car": 1}
    assert manifest["summary"]["images_labeled"] == 1 and manifest["images"]["sub/c"]["labeled_pixels"] == [0, 0, 0]
    assert store.progress() == (1, 3)
    for root in (image_root, image_root.parent / "elsewhere"):  # trains whatever data.root says
        cfg = DataConfig(dataset="folder", root=str(root), train_list=str(store.out / "train.txt"),
                         num_classes=3, label_format="sparse")
        item = build_dataset(cfg, "train_list", labeled=True, transform=EvalTransform())[0]
        assert np.array_equal(item["mask"].numpy(), label)


def test_a_save_conditional_on_an_old_version_is_refused(store):
    label = np.full((30, 40), UNLABELED, dtype=np.uint8)
    assert store.read_versioned("a")[1] == NO_FILE
    _, version = store.save("a", label.tobytes(), "application/octet-stream", expected=[NO_FILE])
    assert store.read_versioned("a")[1] == version != NO_FILE
    label[0, 0] = 1
    with pytest.raises(VersionConflict, match=f"changed since they were loaded \\(now version {version}\\)"):
        store.save("a", label.tobytes(), "application/octet-stream", expected=[NO_FILE])
    assert store.labeled_pixels("a") == 0
    store.save("a", label.tobytes(), "application/octet-stream", expected=[version])
    assert store.labeled_pixels("a") == 1


def test_one_server_per_label_folder_and_a_dead_servers_lock_is_taken_over(image_root, classes_file, tmp_path):
    import json as json_
    import socket

    root, images = find_images(image_root)
    out = tmp_path / "labels"
    first = LabelStore(root, images, load_classes(classes_file), out, exclusive=True)
    with pytest.raises(Exception, match=f"{out} is in use by another sparseg annotate .*pid"):
        LabelStore(root, images, load_classes(classes_file), out, exclusive=True)
    first.lock.release()
    dead = json_.dumps({"pid": 2 ** 22 + 1, "host": socket.gethostname(), "started": "earlier"})
    (out / "annotate.lock").write_text(dead)  # a server killed outright: no such process
    LabelStore(root, images, load_classes(classes_file), out, exclusive=True).lock.release()
    assert not (out / "annotate.lock").exists()


def test_reopening_the_folder_resumes(store, image_root, classes_file):
    label = np.full((24, 32), UNLABELED, dtype=np.uint8)
    label[0, :5] = 0
    store.save("b", encode_png(label), "image/png")
    written = {name: (store.out / name).read_text() for name in ("train.txt", "manifest.json")}
    (store.out / "train.txt").unlink()  # the list and manifest are rebuilt from the PNGs
    (store.out / "manifest.json").write_text('{"tool": "sparseg annotate"}')  # stale
    root, images = find_images(image_root)
    reopened = LabelStore(root, images, load_classes(classes_file), store.out)
    assert {name: (store.out / name).read_text() for name in written} == written
    assert reopened.progress() == (1, 3) and reopened.labeled_pixels("b") == 5
    assert np.array_equal(reopened.read("b"), label)
    assert (reopened.read("a") == UNLABELED).all() and reopened.read("a").shape == (30, 40)


def test_a_corrupt_label_file_is_reported_at_start(store, image_root, classes_file):
    store.out.mkdir(parents=True)
    (store.out / "a.png").write_bytes(b"not a png")
    root, images = find_images(image_root)
    with pytest.raises(Exception, match="a.png: not a readable PNG"):
        LabelStore(root, images, load_classes(classes_file), store.out)


def test_sparsify_labels_saved_unchanged_are_byte_identical(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    lines = []
    for i in range(3):
        dense = np.zeros((48, 64), dtype=np.uint8)
        dense[:, 20 + 5 * i:] = 1
        dense[30:, :] = 2
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / f"images/{i}.png")
        Image.fromarray(dense).save(root / f"masks/{i}.png")
        lines.append(f"images/{i}.png masks/{i}.png\n")
    (root / "train.txt").write_text("".join(lines))
    spec = create_dataset_spec(DataConfig(dataset="folder", root=str(root), num_classes=3))
    out = tmp_path / "sparse"
    sparsify_list(root / "train.txt", root, spec, "points", 0, out)
    before = {p.name: p.read_bytes() for p in sorted(out.glob("images/*.png"))}
    train_list = tmp_path / "sparsify_train.txt"
    train_list.write_text((out / "train.txt").read_text())

    found_root, images = find_images(root / "train.txt")  # the same list: the same ids and files
    (tmp_path / "classes.yaml").write_text("names: [a, b, c]\n")
    manifest = (out / "manifest.json").read_bytes()
    store = LabelStore(found_root, images, load_classes(tmp_path / "classes.yaml"), out)
    assert (out / "manifest.json").read_bytes() == manifest  # opening changes nothing
    for entry in images:
        store.save(entry.id, store.read(entry.id).tobytes(), "application/octet-stream")
    assert {p.name: p.read_bytes() for p in sorted(out.glob("images/*.png"))} == before
    listed = [(e.image, e.mask) for e in read_split(out / "train.txt", root, spec, labeled=True)]
    assert listed == [(e.image, e.mask) for e in read_split(train_list, root, spec, labeled=True)]


@pytest.mark.parametrize("payload, content_type, fragment", [
    (b"\x00" * 10, "application/octet-stream", "has 10 bytes; image a is 40x30 = 1200 pixels"),
    (bytes([7]) * 1200, "application/octet-stream", "values [7] are not classes 0..2"),
    (b"GIF89a", "image/png", "not a readable PNG"),
    (b"", "text/plain", "content type 'text/plain'"),
])
def test_invalid_labels_are_refused_and_nothing_is_written(store, payload, content_type, fragment):
    with pytest.raises(LabelError) as err:
        store.save("a", payload, content_type)
    assert fragment in str(err.value)
    assert not store.out.exists()


def test_png_labels_must_match_the_image_size_and_be_single_channel(store):
    with pytest.raises(LabelError, match="label is 30x40; image a is 40x30"):
        store.save("a", encode_png(np.zeros((40, 30), np.uint8)), "image/png")
    with pytest.raises(LabelError, match="mode RGB"):
        store.save("a", encode_png(np.zeros((30, 40, 3), np.uint8)), "image/png")


def test_concurrent_saves_of_one_image_never_tear_and_the_last_wins(store):
    first = np.full((30, 40), UNLABELED, np.uint8)
    first[:15] = 0
    second = np.full((30, 40), UNLABELED, np.uint8)
    second[15:] = 2
    store.save("a", first.tobytes(), "application/octet-stream")
    seen, stop = [], threading.Event()

    def read_repeatedly():
        while not stop.is_set():
            seen.append(np.asarray(Image.open(store.label_path("a"))).copy())

    def save(label):
        for _ in range(30):
            store.save("a", label.tobytes(), "application/octet-stream")

    reader = threading.Thread(target=read_repeatedly)
    writers = [threading.Thread(target=save, args=(label,)) for label in (first, second)]
    reader.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert seen and all(np.array_equal(s, first) or np.array_equal(s, second) for s in seen)
    store.save("a", second.tobytes(), "application/octet-stream")
    assert np.array_equal(store.read("a"), second)
    assert not [p for p in store.out.iterdir() if p.suffix == ".tmp"]
