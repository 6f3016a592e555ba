"""Dataset specs, label mapping and loading errors on tiny fixture trees."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sparseg.config import ConfigError, DataConfig
from sparseg.data import (
    DataError,
    EvalTransform,
    SegmentationDataset,
    SplitEntry,
    StreamSampler,
    TrainTransform,
    build_dataset,
    create_dataset_spec,
    voc_colormap,
)
from sparseg.data.errors import DataWarning

H, W = 6, 8


def save(path: Path, array: np.ndarray, palette: list | None = None) -> Path:
    """Write a PNG/JPEG; with ``palette`` a mode-P PNG whose indices are ``array``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette is not None:
        image = Image.frombytes("P", image.size, array.tobytes())
        image.putpalette([c for color in palette for c in color])
    image.save(path)
    return path


def rgb(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def labels(*values: int) -> np.ndarray:
    return np.resize(np.array(values, dtype=np.uint8), (H, W))


def item_mask(cfg: DataConfig, list_key: str = "train_list", labeled: bool = True) -> np.ndarray:
    return build_dataset(cfg, list_key, labeled, EvalTransform())[0]["mask"].numpy()


def test_voc_palette_png_is_read_as_indices(tmp_path: Path):
    save(tmp_path / "JPEGImages/a.jpg", rgb())
    mask = save(tmp_path / "SegmentationClass/a.png", labels(0, 15, 255), voc_colormap(256))
    with Image.open(mask) as image:
        assert image.mode == "P"
    (tmp_path / "train.txt").write_text("a\n")
    cfg = DataConfig(dataset="voc", root=str(tmp_path), train_list="train.txt")
    np.testing.assert_array_equal(item_mask(cfg), labels(0, 15, 255))


def test_voc_spec():
    spec = create_dataset_spec(DataConfig(dataset="voc"))
    assert spec.num_classes == 21 and spec.class_names[15] == "person"
    assert spec.palette[:3] == ((0, 0, 0), (128, 0, 0), (0, 128, 0))
    assert voc_colormap(256)[255] == (224, 224, 192)


def test_camvid_void_becomes_ignore(tmp_path: Path):
    save(tmp_path / "train/x.png", rgb())
    save(tmp_path / "trainannot/x.png", labels(0, 10, 11))
    (tmp_path / "train.txt").write_text("train/x.png\n")
    cfg = DataConfig(dataset="camvid", root=str(tmp_path), train_list="train.txt")
    np.testing.assert_array_equal(item_mask(cfg), labels(0, 10, 255))
    assert create_dataset_spec(cfg).class_names[-1] == "bicyclist"


def test_cityscapes_derived_train_ids(tmp_path: Path):
    save(tmp_path / "leftImg8bit/val/c/c_0_1_leftImg8bit.png", rgb())
    save(tmp_path / "gtFine/val/c/c_0_1_gtFine_labelTrainIds.png", labels(0, 18, 255))
    (tmp_path / "val.txt").write_text("leftImg8bit/val/c/c_0_1_leftImg8bit.png")
    cfg = DataConfig(dataset="cityscapes", root=str(tmp_path), val_list="val.txt")
    np.testing.assert_array_equal(item_mask(cfg, "val_list"), labels(0, 18, 255))
    spec = create_dataset_spec(cfg)
    assert spec.num_classes == 19 and spec.palette[0] == (128, 64, 128)


@pytest.fixture
def binary_folder(tmp_path: Path) -> Path:
    save(tmp_path / "images/a.png", rgb())
    save(tmp_path / "masks/a.png", labels(0, 255))
    (tmp_path / "train.txt").write_text("a\n")
    return tmp_path


def test_folder_mask_mapping_for_binary_masks(binary_folder: Path):
    cfg = DataConfig(
        root=str(binary_folder), train_list="train.txt", class_names=["bg", "fg"], mask_mapping={0: 0, 255: 1}
    )
    np.testing.assert_array_equal(item_mask(cfg), labels(0, 1))
    spec = create_dataset_spec(cfg)
    assert spec.class_names == ("bg", "fg") and len(spec.palette) == 2


def test_unmapped_raw_value_is_an_error(binary_folder: Path):
    cfg = DataConfig(root=str(binary_folder), train_list="train.txt", num_classes=2, mask_mapping={0: 0})
    with pytest.raises(DataError, match=r"masks/a\.png: label values \[255\].*mask_mapping"):
        item_mask(cfg)


def test_reduce_zero_label(tmp_path: Path):
    save(tmp_path / "images/a.png", rgb())
    save(tmp_path / "masks/a.png", labels(0, 1, 3, 255))
    (tmp_path / "train.txt").write_text("images/a.png masks/a.png\n")
    cfg = DataConfig(root=str(tmp_path), train_list="train.txt", num_classes=3, reduce_zero_label=True)
    np.testing.assert_array_equal(item_mask(cfg), labels(255, 0, 2, 255))
    cfg.num_classes = 2  # raw 3 -> 2 == K survives the shift
    with pytest.raises(DataError, match=r"label values \[3\].*reduce_zero_label"):
        item_mask(cfg)


def test_label_out_of_range_names_file_and_values(tmp_path: Path):
    save(tmp_path / "images/a.png", rgb())
    save(tmp_path / "masks/a.png", labels(0, 1, 7, 9))
    (tmp_path / "train.txt").write_text("a\n")
    with pytest.raises(DataError, match=r"masks/a\.png: label values \[7, 9\] are not classes 0\.\.1"):
        item_mask(DataConfig(root=str(tmp_path), train_list="train.txt", num_classes=2))


def entry(root: Path, image: np.ndarray, mask: np.ndarray | None) -> SplitEntry:
    save(root / "i.png", image)
    if mask is not None:
        save(root / "m.png", mask)
    return SplitEntry(root / "i.png", root / "m.png" if mask is not None else None, "i")


def folder_spec(k: int = 3):
    return create_dataset_spec(DataConfig(num_classes=k))


def test_size_mismatch_names_both_files_and_sizes(tmp_path: Path):
    e = entry(tmp_path, rgb(), np.zeros((H, W + 1), dtype=np.uint8))
    ds = SegmentationDataset([e], folder_spec(), EvalTransform(), labeled=True)
    with pytest.raises(DataError, match=rf"m\.png: mask size {W + 1}x{H} differs from image .*i\.png size {W}x{H}"):
        ds[0]


def test_rgb_mask_is_rejected(tmp_path: Path):
    e = entry(tmp_path, rgb(), np.zeros((H, W, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"m\.png: mask must be single-channel"):
        SegmentationDataset([e], folder_spec(), EvalTransform(), labeled=True)[0]


def test_truncated_image_names_the_file(tmp_path: Path):
    e = entry(tmp_path, np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), None)
    data = e.image.read_bytes()
    e.image.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"i\.png: unreadable or truncated image"):
        SegmentationDataset([e], folder_spec(), EvalTransform(), labeled=False)[0]


def test_item_contract_and_seeded_augmentation(tmp_path: Path):
    e = entry(tmp_path, rgb(), labels(0, 1, 2))
    ds = SegmentationDataset([e], folder_spec(), TrainTransform((5, 5)), labeled=True)
    item = ds[(0, 11)]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 5, 5)
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["mask"].dtype == torch.int64 and item["valid"].dtype == torch.bool and int(item["index"]) == 0
    again = ds[(0, 11)]
    assert all(torch.equal(item[k], again[k]) for k in item)
    unlabeled = SegmentationDataset([e], folder_spec(), EvalTransform(), labeled=False)[0]
    assert set(unlabeled) == {"image", "valid", "index"} and unlabeled["valid"].all()


def test_iterating_a_dataset_stops_after_its_last_entry(tmp_path: Path):
    entries = [entry(tmp_path / str(i), rgb(i), labels(0, 1, 2)) for i in range(3)]
    ds = SegmentationDataset(entries, folder_spec(), EvalTransform(), labeled=True)
    assert [int(item["index"]) for item in ds] == [0, 1, 2]
    assert int(ds[-1]["index"]) == 2
    with pytest.raises(IndexError):
        ds[3]


def test_spec_overrides_and_config_errors():
    cs = create_dataset_spec(DataConfig(dataset="cityscapes", palette=[(1, 2, 3)] * 19))
    assert cs.palette[0] == (1, 2, 3) and cs.class_names[0] == "road"
    with pytest.raises(ConfigError, match="needs data.num_classes"):
        create_dataset_spec(DataConfig(dataset="folder"))
    with pytest.raises(ConfigError, match="did you mean 'camvid'"):
        create_dataset_spec(DataConfig(dataset="camvd"))
    with pytest.raises(ConfigError, match="3 names but num_classes is 2"):
        create_dataset_spec(DataConfig(num_classes=2, class_names=["a", "b", "c"]))
    with pytest.raises(ConfigError, match="mask_mapping: 1 -> 5"):
        create_dataset_spec(DataConfig(num_classes=2, mask_mapping={1: 5}))
    assert create_dataset_spec(DataConfig(dataset="synthetic")).class_names[0] == "background"


def test_list_path_relative_to_root_and_loader_with_stream_sampler(tmp_path: Path):
    for i in range(3):
        save(tmp_path / f"images/{i}.png", rgb(i))
        save(tmp_path / f"masks/{i}.png", labels(i % 2, 1))
    (tmp_path / "train.txt").write_text("".join(f"images/{i}.png\n" for i in range(3)))
    cfg = DataConfig(root=str(tmp_path), train_list="train.txt", num_classes=2)
    ds = build_dataset(cfg, "train_list", True, TrainTransform((4, 4)))
    assert [e.id for e in ds.entries] == ["images/0", "images/1", "images/2"]

    def batches():
        loader = DataLoader(ds, batch_size=2, sampler=StreamSampler(3, length=4, seed=1), drop_last=True)
        return list(loader)

    first, second = batches(), batches()
    assert len(first) == 2 and first[0]["image"].shape == (2, 3, 4, 4)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(first, second) for k in a)
    with pytest.raises(ConfigError, match="data.val_list is not set"):
        build_dataset(cfg, "val_list", True, EvalTransform())


def test_a_list_in_both_the_working_folder_and_the_root_must_be_the_same_list(tmp_path, monkeypatch):
    """A relative list is taken as given (working folder) first, then under data.root; when both exist with
    other contents the run is refused, naming the key and both files, instead of silently reading one."""
    from sparseg.data.datasets import resolve_list

    root, work = tmp_path / "root", tmp_path / "work"
    (root / "splits").mkdir(parents=True)
    (work / "splits").mkdir(parents=True)
    monkeypatch.chdir(work)
    cfg = DataConfig(dataset="folder", root=str(root), num_classes=2, val_list="splits/val.txt")
    (root / "splits" / "val.txt").write_text("a.png\n")
    assert resolve_list(cfg, "val_list") == root / "splits" / "val.txt"  # only under the root
    (work / "splits" / "val.txt").write_text("a.png\n")
    assert resolve_list(cfg, "val_list") == Path("splits/val.txt")  # both, the same list: no question
    (work / "splits" / "val.txt").write_text("b.png\n")
    with pytest.raises(ConfigError, match=r"data\.val_list: splits/val\.txt names two different lists.*work.*root"):
        resolve_list(cfg, "val_list")
    (root / "splits" / "val.txt").unlink()
    assert resolve_list(cfg, "val_list") == Path("splits/val.txt")  # only in the working folder


def test_binary_0_255_masks_without_mask_mapping_warn_before_training(binary_folder: Path):
    cfg = DataConfig(root=str(binary_folder), train_list="train.txt", num_classes=2)
    with pytest.warns(DataWarning) as warned:
        build_dataset(cfg, "train_list", labeled=True, transform=EvalTransform())  # no item loaded yet
    [message] = [str(w.message) for w in warned]
    assert message.startswith("train.txt: the masks hold only 0 and 255, and 255 is ignore")
    assert "data.mask_mapping: {0: 0, 255: 1}" in message
    assert f"sparseg inspect-labels {binary_folder / 'masks'} --num-classes 2" in message
    mapped = cfg.model_copy(update={"mask_mapping": {0: 0, 255: 1}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mapped set, or one with other values, is not suspicious
        build_dataset(mapped, "train_list", labeled=True, transform=EvalTransform())
        save(binary_folder / "masks/a.png", labels(0, 1, 255, 0))
        build_dataset(cfg, "train_list", labeled=True, transform=EvalTransform())


def test_16_bit_grayscale_images_are_scaled_to_8_bits_not_clipped(tmp_path: Path):
    values = np.linspace(0, 65535, H * W).round().astype(np.uint16).reshape(H, W)
    path = tmp_path / "images/a.png"
    path.parent.mkdir()
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    save(tmp_path / "masks/a.png", labels(0, 1, 0, 1))
    cfg = DataConfig(root=str(tmp_path), train_list="images", num_classes=2)
    image = build_dataset(cfg, "train_list", labeled=True, transform=EvalTransform())[0]["image"]
    expected = torch.from_numpy(np.rint(values * (255 / 65535))).float() / 255
    for channel in image:
        torch.testing.assert_close(channel, expected, atol=1e-6, rtol=0)
    from sparseg.eval.predict import read_rgb

    np.testing.assert_array_equal(np.asarray(read_rgb(path))[..., 0], np.rint(values * (255 / 65535)))


def test_float_images_and_jpeg_masks_are_refused_up_front(tmp_path: Path):
    save(tmp_path / "images/a.png", rgb())
    save(tmp_path / "masks/a.jpg", labels(0, 1, 0, 1))
    (tmp_path / "train.txt").write_text("images/a.png masks/a.jpg\n")
    cfg = DataConfig(root=str(tmp_path), train_list="train.txt", num_classes=2)
    with pytest.raises(DataError, match=r"masks/a\.jpg: JPEG mask: JPEG is lossy.*save masks as PNG"):
        build_dataset(cfg, "train_list", labeled=True, transform=EvalTransform())
    (tmp_path / "float").mkdir()
    Image.fromarray(np.ones((H, W), np.float32)).save(tmp_path / "float/f.tif")
    cfg = DataConfig(root=str(tmp_path), train_list="float", num_classes=2)
    with pytest.raises(DataError, match=r"f\.tif: 32-bit float image"):
        build_dataset(cfg, "train_list", labeled=False, transform=EvalTransform())


def test_an_image_over_the_pixel_limit_is_unreadable_and_skippable(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W)  # PIL refuses images over twice this
    big = save(tmp_path / "images/big.png", np.zeros((3 * H, W, 3), np.uint8))
    save(tmp_path / "images/ok.png", rgb())
    cfg = DataConfig(root=str(tmp_path), train_list="images", num_classes=2)
    with pytest.raises(DataError, match=rf"{big}: unreadable image: Image size \({3 * H * W} pixels\) exceeds"):
        build_dataset(cfg, "train_list", labeled=False, transform=EvalTransform())
    with pytest.warns(DataWarning, match=f"skipped .*{big}"):
        dataset = build_dataset(cfg.model_copy(update={"on_bad_image": "skip"}), "train_list", labeled=False,
                                transform=EvalTransform())
    assert dataset.skipped == {big} and dataset[0]["index"].item() == 1
