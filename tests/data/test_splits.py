"""Split-list reading (every format, every error) and writing."""

from pathlib import Path

import pytest

from sparseg.config import DataConfig
from sparseg.data import SplitError, check_disjoint, create_dataset_spec, read_split, write_splits


def touch(root: Path, *paths: str) -> None:
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(b"")


def spec(name: str, **kw):
    return create_dataset_spec(DataConfig(dataset=name, **kw))


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    touch(tmp_path, *(f"JPEGImages/{i}.jpg" for i in "abcd"))
    touch(tmp_path, "SegmentationClass/a.png", "SegmentationClass/b.png", "SegmentationClassAug/c.png")
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def test_two_columns_space(voc: Path):
    lst = write(voc / "l.txt", "JPEGImages/a.jpg SegmentationClass/a.png\nJPEGImages/b.jpg SegmentationClass/b.png\n")
    entries = read_split(lst, voc, spec("voc"), labeled=True)
    assert [e.image for e in entries] == [voc / "JPEGImages/a.jpg", voc / "JPEGImages/b.jpg"]
    assert entries[1].mask == voc / "SegmentationClass/b.png"
    assert entries[0].id == "JPEGImages/a"


def test_cps_tab_format_with_leading_slash(tmp_path: Path):
    touch(tmp_path, "images/train/x.png", "segmentation/train/x_gtFine.png")
    lst = write(tmp_path / "l.txt", "/images/train/x.png\t/segmentation/train/x_gtFine.png")
    (entry,) = read_split(lst, tmp_path, spec("cityscapes"), labeled=True)
    assert entry.mask == tmp_path / "segmentation/train/x_gtFine.png"


def test_one_column_cityscapes_derives_train_ids(tmp_path: Path):
    touch(tmp_path, "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png")
    touch(tmp_path, "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png")
    lst = write(tmp_path / "l.txt", "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png\n")
    (entry,) = read_split(lst, tmp_path, spec("cityscapes"), labeled=True)
    assert entry.mask == tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"


def test_one_column_camvid_and_segnet_prefix(tmp_path: Path):
    touch(tmp_path, "train/x.png", "trainannot/x.png", "val/y.png", "valannot/y.png")
    lst = write(tmp_path / "l.txt", "train/x.png\n")
    assert read_split(lst, tmp_path, spec("camvid"), labeled=True)[0].mask == tmp_path / "trainannot/x.png"
    segnet = write(tmp_path / "s.txt", "/SegNet/CamVid/val/y.png /SegNet/CamVid/valannot/y.png\n")
    assert read_split(segnet, tmp_path, spec("camvid"), labeled=True)[0].image == tmp_path / "val/y.png"


def test_bare_voc_ids_fall_back_to_aug(voc: Path):
    lst = write(voc / "l.txt", "a\nc")
    a, c = read_split(lst, voc, spec("voc"), labeled=True)
    assert a.image == voc / "JPEGImages/a.jpg" and a.mask == voc / "SegmentationClass/a.png"
    assert c.mask == voc / "SegmentationClassAug/c.png"
    assert c.id == "JPEGImages/c"  # same id as the path formats give


def test_crlf_blank_lines_and_no_final_newline(voc: Path):
    lst = write(voc / "l.txt", "a\r\n\r\n  b  \r\nc")
    assert [e.image.stem for e in read_split(lst, voc, spec("voc"), labeled=True)] == ["a", "b", "c"]


def test_unlabeled_lines_may_lack_masks(voc: Path, tmp_path: Path):
    lst = write(voc / "u.txt", "d\na\n")
    d, a = read_split(lst, voc, spec("voc"), labeled=False)
    assert d.mask is None and a.mask == voc / "SegmentationClass/a.png"
    touch(tmp_path, "images/p.jpg")
    one_col = write(tmp_path / "f.txt", "images/p.jpg\n")
    assert read_split(one_col, tmp_path, spec("folder", num_classes=2), labeled=False)[0].mask is None


def test_folder_ids_find_any_image_extension(tmp_path: Path):
    touch(tmp_path, "images/p.jpeg", "masks/p.png")
    lst = write(tmp_path / "l.txt", "p\n")
    (entry,) = read_split(lst, tmp_path, spec("folder", num_classes=2), labeled=True)
    assert entry.image == tmp_path / "images/p.jpeg" and entry.mask == tmp_path / "masks/p.png"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a\nJPEGImages/b.jpg SegmentationClass/b.png extra\n", 2, "3 columns"),
        ("a\nzzz\n", 2, "JPEGImages/zzz.jpg"),
        ("a\nd\n", 2, "SegmentationClass/d.png"),
        ("a\n\nb\na\n", 4, "duplicate of line 1"),
        ("a\nJPEGImages/b.jpg SegmentationClass/b.png\n", 2, "mixed formats"),
    ],
)
def test_errors_name_list_line_and_path(voc: Path, text: str, line: int, message: str):
    lst = write(voc / "bad.txt", text)
    with pytest.raises(SplitError) as err:
        read_split(lst, voc, spec("voc"), labeled=True)
    assert f"{lst}:{line}:" in str(err.value) and message in str(err.value)


def test_missing_mask_names_the_derived_path(tmp_path: Path):
    touch(tmp_path, "train/x.png")
    lst = write(tmp_path / "l.txt", "train/x.png\n")
    with pytest.raises(SplitError, match=r"l\.txt:1: mask not found: .*trainannot/x\.png"):
        read_split(lst, tmp_path, spec("camvid"), labeled=True)


def test_bare_id_needs_a_spec_rule(tmp_path: Path):
    lst = write(tmp_path / "l.txt", "x\n")
    with pytest.raises(SplitError, match="l.txt:1: dataset 'camvid' lists need image paths"):
        read_split(lst, tmp_path, spec("camvid"), labeled=False)


def test_empty_and_missing_lists(voc: Path):
    with pytest.raises(SplitError, match="empty"):
        read_split(write(voc / "e.txt", "\n \r\n"), voc, spec("voc"), labeled=True)
    with pytest.raises(SplitError, match="nope.txt: split list not found$"):
        read_split(voc / "nope.txt", voc, spec("voc"), labeled=True)


def test_check_disjoint_names_an_example(voc: Path):
    labeled = read_split(write(voc / "l.txt", "a\nb\n"), voc, spec("voc"), labeled=True)
    unlabeled = read_split(write(voc / "u.txt", "JPEGImages/c.jpg\nJPEGImages/b.jpg\n"), voc, spec("voc"), False)
    with pytest.raises(SplitError, match=r"share 1 image.*JPEGImages/b\.jpg"):
        check_disjoint(labeled, unlabeled)
    check_disjoint(labeled, unlabeled[:1])


@pytest.fixture
def train_list(tmp_path: Path) -> tuple[Path, Path]:
    names = [f"n{i}" for i in range(10)]
    touch(tmp_path, *(f"images/{n}.png" for n in names), *(f"segmentation/{n}_gtFine.png" for n in names))
    lines = "".join(f"/images/{n}.png\t/segmentation/{n}_gtFine.png\n" for n in names)
    return write(tmp_path / "train.txt", lines), tmp_path


@pytest.mark.parametrize(("size", "expected"), [("1/4", 3), ("1_8", 2), ("4", 4)])
def test_write_splits_counts(train_list, size: str, expected: int):
    lst, root = train_list
    assert write_splits(lst, root, spec("cityscapes"), size, seed=0, out_dir=root / "out") == (expected, 10 - expected)


def test_write_splits_deterministic_disjoint_and_same_format(train_list):
    lst, root = train_list
    cs = spec("cityscapes")
    write_splits(lst, root, cs, "1/2", seed=3, out_dir=root / "a")
    write_splits(lst, root, cs, "1/2", seed=3, out_dir=root / "b")
    write_splits(lst, root, cs, "1/2", seed=4, out_dir=root / "c")
    a = (root / "a/labeled.txt").read_text()
    assert a == (root / "b/labeled.txt").read_text() != (root / "c/labeled.txt").read_text()
    labeled = read_split(root / "a/labeled.txt", root, cs, labeled=True)
    unlabeled = read_split(root / "a/unlabeled.txt", root, cs, labeled=False)
    check_disjoint(labeled, unlabeled)
    assert len(labeled) + len(unlabeled) == 10
    assert set(a.splitlines()) | set((root / "a/unlabeled.txt").read_text().splitlines()) == set(
        lst.read_text().splitlines()
    )


@pytest.mark.parametrize("size", ["10", "0", "1/1", "half"])
def test_write_splits_rejects_bad_sizes(train_list, size: str):
    lst, root = train_list
    with pytest.raises(SplitError):
        write_splits(lst, root, spec("cityscapes"), size, seed=0, out_dir=root / "out")


def test_a_folder_lists_every_image_below_it_sorted_without_hidden_files(tmp_path: Path):
    touch(tmp_path, "imgs/b.jpg", "imgs/a.png", "imgs/city/c.JPG", "imgs/.cache/d.png", "imgs/notes.txt")
    entries = read_split(tmp_path / "imgs", tmp_path, spec("folder", num_classes=2), labeled=False)
    assert [e.id for e in entries] == ["imgs/a", "imgs/b", "imgs/city/c"]
    assert all(e.mask is None for e in entries)


def test_a_dataset_root_as_folder_keeps_images_and_leaves_their_masks_out(tmp_path: Path):
    touch(tmp_path, "images/a.jpg", "images/b.jpg", "masks/a.png", "masks/b.png")
    folder_spec = spec("folder", num_classes=2)
    unlabeled = read_split(tmp_path, tmp_path, folder_spec, labeled=False)
    assert [(e.image, e.mask) for e in unlabeled] == [(tmp_path / f"images/{i}.jpg", tmp_path / f"masks/{i}.png")
                                                      for i in "ab"]
    assert read_split(tmp_path, tmp_path, folder_spec, labeled=True) == unlabeled


def test_a_labeled_folder_names_the_image_without_a_mask_and_an_empty_folder_fails(tmp_path: Path):
    touch(tmp_path, "images/a.jpg", "images/b.jpg", "masks/a.png", "empty/notes.txt")
    with pytest.raises(SplitError, match=r"images/b\.jpg: mask not found: .*masks/b\.png"):
        read_split(tmp_path / "images", tmp_path, spec("folder", num_classes=2), labeled=True)
    with pytest.raises(SplitError, match=r"empty: no image files"):
        read_split(tmp_path / "empty", tmp_path, spec("folder", num_classes=2), labeled=False)


def test_a_folder_outside_the_root_keeps_absolute_paths(tmp_path: Path):
    touch(tmp_path, "outside/x.png")
    (tmp_path / "root").mkdir()
    entries = read_split(tmp_path / "outside", tmp_path / "root", spec("folder", num_classes=2), labeled=False)
    assert [e.image for e in entries] == [tmp_path / "outside/x.png"]


def test_image_names_with_spaces_in_a_folder_list_and_its_splits(tmp_path: Path):
    names = ["a b.png", "c  d.jpg", "e.png", "f g h.png"]
    touch(tmp_path, *(f"images/{n}" for n in names), *(f"masks/{n.rsplit('.', 1)[0]}.png" for n in names))
    folder = spec("folder", num_classes=2)
    entries = read_split(tmp_path / "images", tmp_path, folder, labeled=True)
    assert [e.image.name for e in entries] == sorted(names)
    assert entries[0].mask == tmp_path / "masks/a b.png"
    write_splits(tmp_path / "images", tmp_path, folder, "2", seed=0, out_dir=tmp_path / "split")
    read_back = [e for name in ("labeled", "unlabeled")
                 for e in read_split(tmp_path / "split" / f"{name}.txt", tmp_path, folder, labeled=True)]
    assert sorted(read_back, key=lambda e: e.image) == entries
    with pytest.raises(SplitError, match="got 4 columns .separate image and mask by a tab"):
        read_split(write(tmp_path / "l.txt", "images/a b.png masks/a b.png\n"), tmp_path, folder, labeled=True)
    tabbed = write(tmp_path / "t.txt", "images/a b.png\tmasks/a b.png\n")
    assert read_split(tabbed, tmp_path, folder, labeled=True) == entries[:1]


def test_a_list_not_found_under_the_root_names_where_it_is_found_and_the_key_to_set(tmp_path: Path):
    import json

    from sparseg.data import build_dataset

    data, wrong, labels = tmp_path / "data", tmp_path / "wrong", tmp_path / "labels"
    touch(data, "img/a.png", "ann/a.png")
    wrong.mkdir()
    lst = write(data / "train.txt", "img/a.png ann/a.png\n")
    cfg = DataConfig(dataset="folder", num_classes=2, root=str(wrong), train_list=str(lst))
    with pytest.raises(SplitError) as err:  # the paths are relative to the list's own folder
        build_dataset(cfg, "train_list", labeled=True, transform=None)
    assert str(err.value) == (f"{lst}:1: image not found: {wrong / 'img/a.png'}; it is found under {data} "
                              f"(the list's folder): set data.root to {data}")
    # labels written outside the data root (sparsify, annotate): the manifest beside the list names the root
    labels.mkdir()
    other = write(labels / "train.txt", "img/a.png ann/a.png\n")
    (labels / "manifest.json").write_text(json.dumps({"root": str(data)}))
    with pytest.raises(SplitError, match=f"; it is found under {data} \\(the root {labels / 'manifest.json'} "
                                         f"names\\): set --root to {data}$"):
        read_split(other, wrong, spec("folder", num_classes=2), labeled=True)
    (labels / "manifest.json").unlink()
    with pytest.raises(SplitError, match=f"image not found: {wrong / 'img/a.png'}$"):  # found nowhere: no hint
        read_split(other, wrong, spec("folder", num_classes=2), labeled=True)
