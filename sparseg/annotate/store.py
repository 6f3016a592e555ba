"""What `sparseg annotate` reads and writes: the image list, the class set, and the label folder.

The label folder (``--out``) has the layout ``sparseg sparsify`` writes: ``<image id>.png`` canonical sparse
labels (classes ``0..K-1``, ``254`` unlabeled; ``sparseg.data.sparse``), ``train.txt`` with one
``image_path mask_path`` line per labeled image (absolute paths, so it trains whatever ``data.root`` is), and
``manifest.json`` (classes and labeled pixels per class). Every file is replaced atomically, so a reader or a
crash never sees half a file; the PNGs are also fsynced, and the list and manifest of a folder made here are
rebuilt from them at every start. One server at a time writes a folder (``annotate.lock``, see
``lock_label_folder``). Each label file has a version (a hash of its bytes) that a save can be made
conditional on. The image root is never written to.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from sparseg.config import ConfigError, DataConfig
from sparseg.data import DataError, create_dataset_spec, read_split
from sparseg.data.splits import image_files
from sparseg.engine.rundir import RunLock
from sparseg.labels import IGNORE, UNLABELED
from sparseg.serialization import write_atomic

TOOL = "sparseg annotate"  # the manifest's "tool": folders this module maintains
MAX_IMAGE_PIXELS = 50_000_000  # larger images are refused: the page keeps two bytes per pixel of the current image
LOCK_NAME = "annotate.lock"
NO_FILE = "none"  # the version of a label that has no file yet


class LabelError(ValueError):
    """An uploaded label does not fit its image or the class set; the message says how."""


class VersionConflict(RuntimeError):
    """A conditional save found the label file changed since the version it was based on."""

    def __init__(self, image_id: str, current: str) -> None:
        super().__init__(f"the labels of {image_id} changed since they were loaded (now version {current})")
        self.current = current


def lock_label_folder(out: str | Path) -> RunLock:
    """Claim ``out`` for one server (``out/annotate.lock``, training's lock: a dead holder's lock is taken over)."""
    lock = RunLock(Path(out), LOCK_NAME, "sparseg annotate")
    lock.acquire()
    return lock


def version_of(data: bytes) -> str:
    """The version of a label file: a hash of its bytes."""
    return hashlib.sha256(data).hexdigest()[:20]


@dataclass(frozen=True)
class ClassSet:
    """Class names and their RGB colours."""

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]

    def __len__(self) -> int:
        return len(self.names)


def load_classes(path: str | Path) -> ClassSet:
    """Classes from a YAML file ``names: [...]`` with an optional ``palette: [[r, g, b], ...]``."""
    from sparseg.data import voc_colormap

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the class file: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(doc, dict) or "names" not in doc:
        raise ConfigError(f"{path}: expected a mapping with 'names: [...]' and optionally 'palette: [[r, g, b], ...]'")
    if set(doc) - {"names", "palette"}:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(map(str, sorted(set(doc) - {'names', 'palette'})))}; "
                          "known: names, palette")
    names = doc["names"]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{path}: names must be a list of non-empty strings")
    if not 1 <= len(names) <= UNLABELED:
        raise ConfigError(f"{path}: names has {len(names)} classes; sparse labels allow 1..{UNLABELED}")
    palette = doc.get("palette")
    if palette is None:
        return ClassSet(tuple(names), tuple(voc_colormap(len(names))))
    if not isinstance(palette, list) or len(palette) != len(names):
        raise ConfigError(f"{path}: palette must list one [r, g, b] per name ({len(names)})")
    for i, colour in enumerate(palette):
        if not (isinstance(colour, list) and len(colour) == 3
                and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)):
            raise ConfigError(f"{path}: palette[{i}] is {colour!r}, expected [r, g, b] with integers 0..255")
    return ClassSet(tuple(names), tuple(tuple(c) for c in palette))


def dataset_classes(name: str) -> ClassSet:
    """The classes and colours of one of sparseg's dataset specs (``voc``, ``camvid``, ...)."""
    try:
        spec = create_dataset_spec(DataConfig(dataset=name))
    except ConfigError as err:
        raise ConfigError(f"--dataset {name}: {err}; give the classes with --classes FILE") from None
    return ClassSet(spec.class_names, spec.palette)


@dataclass(frozen=True)
class ImageEntry:
    """One image: its id (path relative to the root without suffix), file and size (width, height)."""

    id: str
    path: Path
    size: tuple[int, int]


def find_images(
    source: str | Path, root: str | Path | None = None, dataset: str | None = None
) -> tuple[Path, list[ImageEntry]]:
    """The image root and its images, from a folder (``image_files``: recursive, hidden ones left out, as
    training reads a folder) or a split list.

    A list's paths are relative to ``root`` (default: the list's folder) and read like ``sparseg
    sparsify`` reads them, so the ids, and therefore the label files, coincide. Files whose real path
    lies outside the root (symlinks out) are left out.
    """
    source = Path(source)
    if source.is_dir():
        if root is not None:
            raise ConfigError("--root applies to a split list, not to an image folder")
        root = source.resolve()
        found = [(p.relative_to(root).with_suffix("").as_posix(), p) for p in image_files(root)]
    elif source.is_file():
        root = Path(root).resolve() if root else source.resolve().parent
        # a folder spec needs a class count to exist; only its path rules are used here
        spec = create_dataset_spec(DataConfig(dataset=dataset or "folder", num_classes=None if dataset else 1))
        found = [(e.id, e.image) for e in read_split(source, root, spec, labeled=False)]
    else:
        raise FileNotFoundError(f"no such image folder or split list: {source}")
    entries, first_of = [], {}
    for image_id, path in found:
        real = path.resolve()
        if not real.is_relative_to(root):
            continue
        if image_id in first_of:
            raise DataError(f"{first_of[image_id]} and {path} share the id '{image_id}' (labels are named by "
                            "the path without its suffix); rename one or list the images you want")
        first_of[image_id] = path
        try:
            with Image.open(real) as image:
                size = image.size
        except OSError as err:
            raise DataError(f"{path}: unreadable image: {err}") from None
        if size[0] * size[1] > MAX_IMAGE_PIXELS:
            raise DataError(f"{path}: {size[0]}x{size[1]} is larger than {MAX_IMAGE_PIXELS} pixels")
        entries.append(ImageEntry(image_id, real, size))
    if not entries:
        raise DataError(f"no images found in {source}")
    return root, entries


def encode_png(label: np.ndarray) -> bytes:
    """PNG bytes of a uint8 label map, encoded exactly as ``sparseg sparsify`` saves its files."""
    buffer = io.BytesIO()
    Image.fromarray(label).save(buffer, format="PNG")
    return buffer.getvalue()


class LabelStore:
    """Sparse labels of an image list kept in ``out``; thread-safe, every write atomic. ``exclusive`` claims
    the folder for this process (``lock_label_folder``) before reading it."""

    def __init__(self, root: Path, images: list[ImageEntry], classes: ClassSet, out: str | Path,
                 exclusive: bool = False) -> None:
        self.root, self.classes, self.out = root, classes, Path(out).resolve()
        if self.out.is_relative_to(root):
            raise ConfigError(f"--out {out} is inside the image root {root}; labels are never written there")
        self.lock = lock_label_folder(self.out) if exclusive else None
        self.images = {entry.id: entry for entry in images}
        self._lock = threading.Lock()
        self._counts: dict[str, np.ndarray] = {}  # id -> labeled pixels per class, for ids with a file
        for entry in images:
            path = self.label_path(entry.id)
            if path.is_file():
                try:
                    label = self._decode(entry, path.read_bytes(), "image/png")
                except LabelError as err:
                    raise DataError(f"{path}: {err}") from None
                self._counts[entry.id] = self._class_counts(label)
        if self._counts and self._index_is_ours():
            self._write_index()  # derived from the PNGs: rebuilt at every start

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label_path(self, image_id: str) -> Path:
        return self.out / f"{image_id}.png"

    def entry(self, image_id: str) -> ImageEntry:
        """The image of a listed id; KeyError for anything else (unknown ids, ``..``, absolute paths)."""
        return self.images[image_id]

    def labeled_pixels(self, image_id: str) -> int:
        counts = self._counts.get(image_id)
        return int(counts.sum()) if counts is not None else 0

    def progress(self) -> tuple[int, int]:
        """(images with a labeled pixel, all images)."""
        return sum(int(c.sum()) > 0 for c in self._counts.values()), len(self.images)

    def read(self, image_id: str) -> np.ndarray:
        """The label map [H, W] uint8 of an image; all 254 when it has none yet."""
        return self.read_versioned(image_id)[0]

    def read_versioned(self, image_id: str) -> tuple[np.ndarray, str]:
        """The label map and its version (``NO_FILE`` when the image has no label file)."""
        entry = self.entry(image_id)
        data = self._file_bytes(image_id)
        if data is None:
            return np.full(entry.size[::-1], UNLABELED, dtype=np.uint8), NO_FILE
        return self._decode(entry, data, "image/png"), version_of(data)

    def save(self, image_id: str, payload: bytes, content_type: str,
             expected: Collection[str] | None = None) -> tuple[np.ndarray, str]:
        """Validate an uploaded label (raw bytes row by row, or a PNG) and replace the image's file and
        the folder's list and manifest; return the per-class pixel counts and the new version. With
        ``expected``, VersionConflict unless the file is still at one of those versions. Concurrent saves of one image
        are serialised and the file is never torn."""
        entry = self.entry(image_id)
        label = self._decode(entry, payload, content_type)
        counts = self._class_counts(label)
        path = self.label_path(image_id)
        data = encode_png(label)
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.parent.resolve().is_relative_to(self.root):
                raise PermissionError(f"{path.parent} resolves into the image root {self.root}; labels are never "
                                      "written there")
            if expected is not None:
                current = self._file_bytes(image_id)
                current = NO_FILE if current is None else version_of(current)
                if current not in expected:
                    raise VersionConflict(image_id, current)
            write_atomic(path, data)
            self._counts[image_id] = counts
            self._write_index()
        return counts, version_of(data)

    def _file_bytes(self, image_id: str) -> bytes | None:
        try:
            return self.label_path(image_id).read_bytes()
        except FileNotFoundError:
            return None

    def _decode(self, entry: ImageEntry, payload: bytes, content_type: str) -> np.ndarray:
        width, height = entry.size
        if content_type == "application/octet-stream":
            if len(payload) != width * height:
                raise LabelError(f"label has {len(payload)} bytes; image {entry.id} is {width}x{height} "
                                 f"= {width * height} pixels, one byte each")
            label = np.frombuffer(payload, dtype=np.uint8).reshape(height, width)
        elif content_type == "image/png":
            try:
                with Image.open(io.BytesIO(payload), formats=["PNG"]) as image:
                    if image.size != entry.size:  # checked before decoding: no decompression bombs
                        raise LabelError(f"label is {image.size[0]}x{image.size[1]}; image {entry.id} is "
                                         f"{width}x{height}")
                    if image.mode != "L":
                        raise LabelError(f"label PNG has mode {image.mode}; expected single-channel 8-bit (L)")
                    label = np.asarray(image)
            except (OSError, SyntaxError, ValueError) as err:
                if isinstance(err, LabelError):
                    raise
                raise LabelError(f"not a readable PNG: {err}") from None
        else:
            raise LabelError(f"content type {content_type!r}: send application/octet-stream (one byte per pixel, "
                             "row by row) or image/png")
        present = np.bincount(label.ravel(), minlength=256) > 0
        allowed = np.zeros(256, dtype=bool)
        allowed[: self.num_classes] = allowed[UNLABELED] = allowed[IGNORE] = True
        bad = np.flatnonzero(present & ~allowed)
        if bad.size:
            shown = ", ".join(map(str, bad[:10])) + (", ..." if bad.size > 10 else "")
            raise LabelError(f"label values [{shown}] are not classes 0..{self.num_classes - 1}, "
                             f"{UNLABELED} (unlabeled) or {IGNORE} (ignore)")
        return label

    def _class_counts(self, label: np.ndarray) -> np.ndarray:
        return np.bincount(label.ravel(), minlength=256)[: self.num_classes]

    def _index_is_ours(self) -> bool:
        """Whether the folder has no manifest or one of ours (a ``sparsify`` folder stays as it is until an edit)."""
        try:
            return json.loads((self.out / "manifest.json").read_text()).get("tool") == TOOL
        except FileNotFoundError:
            return True
        except (OSError, ValueError, AttributeError):
            return False

    def _write_index(self) -> None:
        """``train.txt`` (labeled images, in list order; absolute paths) and ``manifest.json``, as ``sparsify``
        lays them out."""
        lines, images, totals = [], {}, np.zeros(self.num_classes, dtype=np.int64)
        for image_id, entry in self.images.items():
            counts = self._counts.get(image_id)
            if counts is None:
                continue
            images[image_id] = {"labeled_pixels": counts.tolist()}
            totals += counts
            if counts.sum() > 0:
                lines.append(f"{entry.path.as_posix()} {self.label_path(image_id).as_posix()}\n")
        labeled, total = self.progress()
        manifest = {
            "tool": TOOL,
            "encoding": "canonical",
            "unlabeled_value": UNLABELED,
            "root": str(self.root),
            "num_classes": self.num_classes,
            "class_names": list(self.classes.names),
            "palette": [list(c) for c in self.classes.palette],
            "summary": {"images": total, "images_labeled": labeled,
                        "labeled_pixels_per_class": dict(zip(self.classes.names, totals.tolist()))},
            "images": images,
        }
        # atomic but not fsynced: after a power loss they may be stale, and the next start rebuilds them
        write_atomic(self.out / "train.txt", "".join(lines).encode("utf-8"), durable=False)
        write_atomic(self.out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode("utf-8"), durable=False)
