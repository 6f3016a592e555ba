"""Synthesised sparse labels (agmm.md §3, checklist §10.14) and ``sparseg sparsify``."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from sparseg.cli import main
from sparseg.config import DataConfig
from sparseg.data import (
    EvalTransform,
    build_dataset,
    create_dataset_spec,
    make_synthetic_dataset,
    object_points,
    random_clicks,
    scribbles,
    sparsify_list,
)
from sparseg.data.sparsify import _walk_path, image_rng, iter_objects
from sparseg.labels import IGNORE, UNLABELED

K = 4
try:
    import skimage  # noqa: F401  (scribbles' default 'skeleton' method needs it)

    HAS_SKIMAGE = True
except ImportError:
    HAS_SKIMAGE = False
needs_skimage = pytest.mark.skipif(not HAS_SKIMAGE, reason="scikit-image is not installed")


def scene():
    """48x48 dense mask: background split in two by a void band, a class-1 square, two class-2 blobs
    (one below ``min_area`` 9), a class-3 bar."""
    dense = np.zeros((48, 48), dtype=np.uint8)
    dense[:, 30:32] = IGNORE
    dense[5:20, 5:20] = 1
    dense[25:40, 8:14] = 2
    dense[44:46, 2:4] = 2  # 4 pixels
    dense[10:40, 36:44] = 3
    return dense


def components(dense, min_area):
    return [(cls, box, mask) for cls, box, mask in iter_objects(dense) if mask.sum() >= min_area]


def assert_agrees_with_dense(sparse, dense, void_as="unlabeled"):
    labeled = sparse < K
    assert (sparse[labeled] == dense[labeled]).all()
    assert not labeled[dense == IGNORE].any()
    assert (sparse[dense == IGNORE] == (UNLABELED if void_as == "unlabeled" else IGNORE)).all()
    assert set(np.unique(sparse[~labeled])) <= {UNLABELED, IGNORE}


@pytest.mark.parametrize("void_as", ["unlabeled", "ignore"])
def test_every_generator_agrees_with_dense_and_never_labels_void(void_as):
    dense = scene()
    generators = [(random_clicks, {"n": 40}), (object_points, {}), (scribbles, {"method": "walk", "min_area": 9})]
    for generate, kw in generators + ([(scribbles, {"min_area": 9})] if HAS_SKIMAGE else []):
        sparse = generate(dense, np.random.default_rng(1), void_as=void_as, **kw)
        assert sparse.dtype == np.uint8
        assert_agrees_with_dense(sparse, dense, void_as)


def test_random_clicks_yield_min_n_valid_centres():
    dense = scene()
    valid = int((dense != IGNORE).sum())
    assert (random_clicks(dense, np.random.default_rng(0), 25, diameter=1) < K).sum() == 25
    tiny = np.full((6, 6), IGNORE, dtype=np.uint8)
    tiny[0, :3] = (0, 1, 2)
    assert (random_clicks(tiny, np.random.default_rng(0), 25, diameter=1) < K).sum() == 3
    assert (random_clicks(dense, np.random.default_rng(0), 5000, diameter=1) < K).sum() == valid
    stratified = random_clicks(dense, np.random.default_rng(0), 4, diameter=1, stratified=True)
    assert set(np.unique(stratified[stratified < K])) == {0, 1, 2, 3}


@pytest.mark.parametrize("generate, kw", [
    (object_points, {"min_area": 9}),
    pytest.param(scribbles, {"min_area": 64}, marks=needs_skimage),
    (scribbles, {"min_area": 64, "method": "walk"}),
])
def test_points_and_scribbles_cover_every_large_component_background_included(generate, kw):
    dense = scene()
    min_area = kw["min_area"]
    sparse = generate(dense, np.random.default_rng(0), **kw)
    for cls, box, mask in iter_objects(dense):
        hit = (sparse[box][mask] == cls).any()
        assert hit == (mask.sum() >= min_area), (cls, box, int(mask.sum()))
    assert (sparse == 0).sum() > 0 and len([c for c in components(dense, min_area) if c[0] == 0]) == 2


def test_points_are_interior_discs_one_per_object():
    dense = scene()
    sparse = object_points(dense, np.random.default_rng(0))
    for cls, box, mask in components(dense, 9):
        painted = sparse[box] == cls
        assert painted.sum() == 9  # a full 3x3 disc: the centre is >= 2 px inside
    centre = object_points(dense, np.random.default_rng(0), placement="center")
    assert (centre[11:14, 11:14] == 1).all()  # the square's farthest-inside pixel is (12, 12)


def test_instances_split_touching_objects():
    dense = np.zeros((20, 20), dtype=np.uint8)
    dense[4:16, 2:18] = 1
    instances = np.zeros_like(dense)
    instances[4:16, 2:10], instances[4:16, 10:18] = 1, 2
    sparse = object_points(dense, np.random.default_rng(0), instances=instances)
    assert (sparse[4:16, 2:10] == 1).any() and (sparse[4:16, 10:18] == 1).any()
    assert (object_points(dense, np.random.default_rng(0)) == 1).sum() == 9  # one component without instances


@pytest.mark.parametrize("method", [pytest.param("skeleton", marks=needs_skimage), "walk"])
def test_scribbles_stay_inside_their_object(method):
    dense = scene()
    sparse = scribbles(dense, np.random.default_rng(3), method=method, min_area=64)
    for cls, box, mask in components(dense, 64):
        line = sparse[box] == cls
        assert line.any() and not (line & ~mask).any()
        if method == "skeleton":  # one non-crossing path: no pixel deeper than a diagonal 3-px line's centre
            assert ndimage.distance_transform_edt(np.pad(line, 1)).max() <= np.sqrt(5) + 1e-9
    assert (sparse[10:40, 36:44] == 3).sum() >= 3 * 8  # a line along the bar, not a point


def test_walk_takes_unit_steps_inside_the_eroded_object():
    core = np.zeros((30, 30), dtype=bool)
    core[5:25, 10:20] = True
    path = _walk_path(core, np.random.default_rng(0), 200)
    assert len(path) > 150
    assert np.allclose(np.linalg.norm(np.diff(path, axis=0), axis=1), 1)
    rows, cols = np.rint(path).astype(int).T
    assert core[rows, cols].all()


def test_same_seed_and_id_give_identical_output_in_any_order(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", n_train=6, n_val=1, size=32)
    spec = create_dataset_spec(DataConfig(dataset="synthetic", root=str(root)))
    lines = (root / "train.txt").read_text().splitlines()
    (root / "reversed.txt").write_text("\n".join(reversed(lines)))
    a = sparsify_list(root / "train.txt", root, spec, "points", 7, tmp_path / "a")
    sparsify_list(root / "reversed.txt", root, spec, "points", 7, tmp_path / "b")
    sparsify_list(root / "train.txt", root, spec, "points", 8, tmp_path / "c")
    for image_id in a["images"]:
        pa, pb = (np.asarray(Image.open(tmp_path / d / f"{image_id}.png")) for d in "ab")
        assert np.array_equal(pa, pb)
    assert any(not np.array_equal(np.asarray(Image.open(tmp_path / "a" / f"{i}.png")),
                                  np.asarray(Image.open(tmp_path / "c" / f"{i}.png"))) for i in a["images"])
    assert image_rng(7, "x").integers(1 << 30) == image_rng(7, "x").integers(1 << 30)


def test_sparsify_list_writes_a_trainable_list_and_a_manifest(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=1, size=32)
    spec = create_dataset_spec(DataConfig(dataset="synthetic", root=str(root)))
    out = tmp_path / "outside"  # not under the root: mask paths are absolute, never '../..' chains
    manifest = sparsify_list(root / "train.txt", root, spec, "clicks", 0, out, n=10)
    assert manifest["params"] == {"n": 10, "diameter": 3, "stratified": False, "void_as": "unlabeled"}
    assert json.loads((out / "manifest.json").read_text())["summary"]["images"] == 4
    first = (out / "train.txt").read_text().splitlines()[0].split()
    assert first == ["images/train_0000.png", (out / "images" / "train_0000.png").resolve().as_posix()]
    cfg = DataConfig(dataset="synthetic", root=str(root), train_list=str(out / "train.txt"), label_format="sparse")
    item = build_dataset(cfg, "train_list", labeled=True, transform=EvalTransform())[0]
    record = manifest["images"]["images/train_0000"]
    assert item["tags"].nonzero().flatten().tolist() == record["classes"]
    assert (item["mask"] < 5).float().mean().item() == pytest.approx(record["labeled_fraction"], abs=1e-6)

    # generated once: the same call reuses it, other settings need --overwrite
    assert sparsify_list(root / "train.txt", root, spec, "clicks", 0, out, n=10) == manifest
    with pytest.raises(Exception, match="--overwrite"):
        sparsify_list(root / "train.txt", root, spec, "clicks", 1, out, n=10)
    assert sparsify_list(root / "train.txt", root, spec, "clicks", 1, out, overwrite=True, n=10)["seed"] == 1


def test_cli_sparsify(tmp_path, capsys):
    root = make_synthetic_dataset(tmp_path / "data", n_train=3, n_val=1, size=32)
    args = ["sparsify", str(root / "train.txt"), "--dataset", "synthetic", "--seed", "0"]
    assert main([*args, "--kind", "points", "--per-image", "5", "--out", str(root / "sp")]) == 2
    assert "--per-image do(es) not apply to --kind points" in capsys.readouterr().err
    assert main([*args, "--kind", "scribbles", "--method", "walk", "--out", str(root / "sp")]) == 0
    out = capsys.readouterr().out
    assert "3 images, labeled fraction mean" in out and "data.label_format=sparse" in out
    assert (root / "sp" / "train.txt").read_text().splitlines()[0].split()[1] == "sp/images/train_0000.png"
    assert main(["inspect-labels", str(root / "sp"), "--num-classes", "5"]) == 0
    assert "guessed format: canonical" in capsys.readouterr().out


def test_sparsify_list_inside_the_root_writes_root_relative_paths(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", n_train=2, n_val=1, size=32)
    spec = create_dataset_spec(DataConfig(dataset="synthetic", root=str(root)))
    sparsify_list(root / "train.txt", root, spec, "clicks", 0, root / "sparse" / "clicks", n=10)
    first = (root / "sparse" / "clicks" / "train.txt").read_text().splitlines()[0].split()
    assert first == ["images/train_0000.png", "sparse/clicks/images/train_0000.png"]
