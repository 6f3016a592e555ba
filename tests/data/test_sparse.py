"""Sparse label encodings, converters, rasterisation, inspection and the sparse dataset mode (agmm.md §2, §10.13)."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from sparseg.config import DataConfig
from sparseg.data import (
    DataError,
    EvalTransform,
    LabelFormatError,
    TrainTransform,
    build_dataset,
    from_ignore255,
    from_reference,
    from_shifted,
    inspect_labels,
    make_synthetic_dataset,
    rasterize,
    to_canonical,
    to_reference,
)
from sparseg.data.sparse import guess_encoding
from sparseg.labels import IGNORE, UNLABELED

K = 21


def canonical_labels(seed=0, shape=(16, 16)):
    rng = np.random.default_rng(seed)
    y = rng.choice(np.array([*range(K), UNLABELED, IGNORE], dtype=np.uint8), size=shape)
    y[0, :3] = (0, UNLABELED, IGNORE)
    return y


def test_converters_round_trip_and_map_as_specified():
    y = canonical_labels()
    reference = to_reference(y, K)
    assert set(np.unique(reference)) <= set(range(K + 1)) | {IGNORE}
    assert (reference[y == UNLABELED] == K).all() and (reference[y != UNLABELED] == y[y != UNLABELED]).all()
    assert np.array_equal(from_reference(reference, K), y)

    ignore255 = np.where(y == UNLABELED, IGNORE, y).astype(np.uint8)  # TEL: unannotated = 255, no padding
    assert np.array_equal(from_ignore255(ignore255, K), np.where(ignore255 == IGNORE, UNLABELED, ignore255))

    shifted = np.where(y == UNLABELED, 0, np.where(y == IGNORE, IGNORE, y + 1)).astype(np.uint8)
    assert np.array_equal(from_shifted(shifted, K), y)
    assert np.array_equal(to_canonical(y, K), y)


@pytest.mark.parametrize("encoding, raw, bad", [
    ("canonical", [0, 21, 254], [21]),
    ("reference", [0, 21, 254], [254]),
    ("ignore255", [0, 254], [254]),
    ("shifted", [0, 22, 254], [22, 254]),
])
def test_values_outside_an_encoding_are_an_error_listing_them(encoding, raw, bad):
    with pytest.raises(LabelFormatError, match=str(bad).replace("[", r"\[").replace("]", r"\]")):
        to_canonical(np.array([raw], dtype=np.uint8), K, encoding)


def test_error_suggests_the_matching_encoding():
    reference = np.full((8, 8), K, dtype=np.uint8)
    reference[2, 2] = 3
    with pytest.raises(LabelFormatError, match="look like 'reference'"):
        to_canonical(reference, K)


def test_rasterize_discs_and_polylines():
    canvas = rasterize([(5, 5, 3)], [], (12, 12), width=3)
    assert canvas.dtype == np.uint8 and (canvas != UNLABELED).sum() == 9  # a 3x3 disc
    assert (canvas[4:7, 4:7] == 3).all()
    assert (rasterize([(5, 5, 3)], [], (12, 12), width=1) != UNLABELED).sum() == 1

    horizontal = rasterize([], [([(2, 6), (9, 6)], 1)], (12, 12), width=3)
    assert set(np.flatnonzero((horizontal == 1).any(1))) == {5, 6, 7}  # 3 rows
    assert (horizontal[6, 1:11] == 1).all()  # round caps reach 1.5 px beyond the ends

    diagonal = rasterize([], [([(1, 1), (10, 10)], 2)], (12, 12), width=3)
    rows, cols = np.nonzero(diagonal == 2)
    t = np.clip(((cols - 1) + (rows - 1)) / 162 * 9, 0, 1)
    assert np.all(np.hypot(cols - 1 - 9 * t, rows - 1 - 9 * t) <= 1.5)
    # later items overwrite earlier ones; polylines come after points
    both = rasterize([(5, 6, 4)], [([(2, 6), (9, 6)], 1)], (12, 12))
    assert both[6, 5] == 1


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def test_inspect_labels_guesses_each_format(tmp_path):
    y = np.full((20, 20), UNLABELED, dtype=np.uint8)
    y[3:6, 3:6], y[10:13, 10:13], y[15, 15], y[:, -2:] = 0, 7, K - 1, IGNORE  # shifted: K - 1 is stored as K
    files = {
        "canonical": y,
        "reference": to_reference(y, K),
        "ignore255": np.where(y == UNLABELED, IGNORE, y),
        "shifted": np.where(y == UNLABELED, 0, np.where(y == IGNORE, IGNORE, y + 1)),
    }
    for name, array in files.items():
        report = inspect_labels([write_png(tmp_path / f"{name}.png", array)], K)
        assert report.guess == name, report.summary()
        in_image = 400 if name == "ignore255" else 360  # ignore255 files have no padding: 255 is unannotated
        assert report.labeled_fraction == pytest.approx(19 / in_image)
    dense = np.random.default_rng(0).integers(0, K, (20, 20))
    assert inspect_labels([write_png(tmp_path / "dense.png", dense)], K).guess == "dense"
    odd = inspect_labels([write_png(tmp_path / "odd.png", np.full((4, 4), 100))], K)
    assert odd.guess == "unknown" and "[100]" in odd.reason
    # a canonical file without any unlabeled pixel is reported
    mixed = inspect_labels([tmp_path / "canonical.png", write_png(tmp_path / "full.png", np.where(y == UNLABELED, 1, y))], K)
    assert mixed.guess == "canonical" and "no unlabeled pixel" in mixed.files_with_issue


def test_dense_0_1_masks_are_not_called_shifted(tmp_path):
    """0/1 masks of 2 classes, mostly 0: every value is a class, and no value stands for class 1 shifted."""
    mask = np.zeros((20, 20), np.uint8)
    mask[5:9, 5:9] = 1
    report = inspect_labels([write_png(tmp_path / "m.png", mask)], 2)
    assert report.guess == "dense" and "class 1 (2) would never occur" in report.reason


def test_guess_dense_with_void_value():
    histogram = np.zeros(256, dtype=np.int64)
    histogram[[0, 1, 11]] = (50, 40, 10)
    guess, reason = guess_encoding(histogram, 11)
    assert guess == "dense" and "void" in reason


# ---------------------------------------------------------------- the sparse dataset mode


@pytest.fixture
def sparse_root(tmp_path):
    """Synthetic 32x32 data with one sparse mask per train image: class 1 at a corner, 2 in the middle."""
    root = make_synthetic_dataset(tmp_path / "data", n_train=2, n_val=1, size=32)
    lines = []
    for line in (root / "train.txt").read_text().splitlines():
        image = line.split()[0]
        sparse = np.full((32, 32), UNLABELED, dtype=np.uint8)
        sparse[0, 0], sparse[16, 16] = 1, 2
        name = f"sparse/{image.split('/')[-1]}"
        write_png(root / name, sparse)
        lines.append(f"{image} {name}\n")
    (root / "sparse.txt").write_text("".join(lines))
    return root


def sparse_config(root, **kw):
    return DataConfig(dataset="synthetic", root=str(root), train_list="sparse.txt", val_list="val.txt",
                      label_format="sparse", **kw)


def test_sparse_items_keep_254_pad_with_255_and_tag_before_augmentation(sparse_root):
    transform = TrainTransform(crop_size=24, scale_range=(1.0, 1.0), flip=False)
    dataset = build_dataset(sparse_config(sparse_root), "train_list", labeled=True, transform=transform)
    seen_cropped_out = False
    for seed in range(40):
        item = dataset[(0, seed)]
        mask = item["mask"]
        assert set(mask.unique().tolist()) <= {1, 2, UNLABELED}  # 24 < 32: no padding
        assert torch.equal(item["tags"], torch.tensor([0, 1, 1, 0, 0], dtype=torch.float32))
        seen_cropped_out |= not (mask == 1).any()  # the corner label left the crop: t stays 1
    assert seen_cropped_out

    padding = TrainTransform(crop_size=48, scale_range=(1.0, 1.0), flip=False)
    item = build_dataset(sparse_config(sparse_root), "train_list", labeled=True, transform=padding)[(0, 0)]
    assert (item["mask"][~item["valid"]] == IGNORE).all()
    assert (item["mask"][item["valid"]] != IGNORE).all() and (item["mask"] == UNLABELED).any()


def test_val_list_stays_dense_and_dense_lists_reject_254(sparse_root):
    val = build_dataset(sparse_config(sparse_root), "val_list", labeled=True, transform=EvalTransform())
    assert "tags" not in val[0]
    dense = DataConfig(dataset="synthetic", root=str(sparse_root), train_list="sparse.txt")
    with pytest.raises(DataError, match=r"sparse/train_0000.png: label values \[254\]"):
        build_dataset(dense, "train_list", labeled=True, transform=EvalTransform())[0]


def test_sparse_values_of_no_convention_name_file_and_values(sparse_root):
    write_png(sparse_root / "sparse" / "train_0001.png", np.full((32, 32), 5))  # 5 = K: not canonical
    dataset = build_dataset(sparse_config(sparse_root), "train_list", labeled=True, transform=EvalTransform())
    with pytest.raises(DataError, match=r"train_0001.png: values \[5\] fit no 'canonical'.*'reference'"):
        dataset[1]
    reference = build_dataset(sparse_config(sparse_root, sparse_encoding="reference"), "train_list",
                              labeled=True, transform=EvalTransform())
    assert (reference[1]["mask"] == UNLABELED).all()


def test_dense_looking_sparse_list_warns_once(sparse_root):
    for name in ("train_0000", "train_0001"):
        write_png(sparse_root / "sparse" / f"{name}.png", np.ones((32, 32)))
    dataset = build_dataset(sparse_config(sparse_root), "train_list", labeled=True, transform=EvalTransform())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset[0], dataset[1]
    assert len(caught) == 1 and "no unlabeled (254) pixel" in str(caught[0].message)


def test_inspect_labels_suggests_a_mask_mapping(tmp_path):
    binary = np.zeros((8, 8), np.uint8)
    binary[2:5, 2:5] = 255
    report = inspect_labels([write_png(tmp_path / "binary.png", binary)], 2)
    assert "data.mask_mapping: {0: 0, 255: 1}" in report.summary()
    gray = np.where(binary == 255, 128, 0).astype(np.uint8)
    assert "data.mask_mapping: {0: 0, 128: 1}" in inspect_labels([write_png(tmp_path / "gray.png", gray)], 2).summary()
    dense = np.arange(64, dtype=np.uint8).reshape(8, 8) % 3
    assert "mask_mapping" not in inspect_labels([write_png(tmp_path / "dense.png", dense)], 3).summary()
