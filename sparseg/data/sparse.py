"""Sparse labels: the toolkit encoding, converters from the public formats, rasterisation, inspection.

Canonical encoding (agmm.md §2): uint8, classes ``0..K-1``, ``UNLABELED = 254`` for an in-image pixel
without annotation, ``IGNORE = 255`` for void and crop padding. The public files use other encodings:

=============  ===========================================  =========================
encoding       content                                      converter
=============  ===========================================  =========================
``canonical``  0..K-1 classes, 254 unlabeled, 255 ignore    (none)
``reference``  AGMM-SASS files: K = unlabeled, 255 ignore   ``from_reference``
``ignore255``  TEL rasterisation: 255 = unannotated         ``from_ignore255``
``shifted``    0 = unannotated, class c stored as c + 1     ``from_shifted``
=============  ===========================================  =========================

Every converter is a lookup table, lossless on its domain; values outside the domain are an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sparseg.labels import IGNORE, UNLABELED

ENCODINGS = ("canonical", "reference", "ignore255", "shifted")
MAX_LABELED_FRACTION = 0.2  # more than this looks like a dense mask declared sparse (agmm.md §2)


class LabelFormatError(ValueError):
    """Label values fit no value of the declared encoding; the message lists them."""


def _check_classes(num_classes: int) -> None:
    if not 1 <= num_classes <= 254:
        raise ValueError(f"sparse labels need 1..254 classes (254 and 255 are reserved), got {num_classes}")


def _domain(encoding: str, num_classes: int) -> np.ndarray:
    """bool[256]: the raw values an encoding may contain."""
    _check_classes(num_classes)
    allowed = np.zeros(256, dtype=bool)
    allowed[:num_classes] = True
    allowed[IGNORE] = True
    if encoding == "canonical":
        allowed[UNLABELED] = True
    elif encoding in ("reference", "shifted"):
        allowed[num_classes] = True  # reference: unlabeled; shifted: class K-1 stored as K
    elif encoding != "ignore255":
        raise ValueError(f"unknown sparse label encoding '{encoding}' (known: {', '.join(ENCODINGS)})")
    return allowed


def _lut(encoding: str, num_classes: int) -> np.ndarray:
    """uint8[256]: raw value -> canonical value for an encoding."""
    lut = np.arange(256, dtype=np.uint8)
    if encoding == "reference":
        lut[num_classes] = UNLABELED
    elif encoding == "ignore255":
        lut[IGNORE] = UNLABELED
    elif encoding == "shifted":
        lut[0] = UNLABELED
        lut[1 : num_classes + 1] = np.arange(num_classes)
    return lut


def _bad_values(y: np.ndarray, encoding: str, num_classes: int) -> np.ndarray:
    """Sorted values of ``y`` that the encoding does not allow (empty when ``y`` fits)."""
    present = np.bincount(np.asarray(y, dtype=np.uint8).ravel(), minlength=256) > 0
    return np.flatnonzero(present & ~_domain(encoding, num_classes))


def to_canonical(y: np.ndarray, num_classes: int, encoding: str = "canonical") -> np.ndarray:
    """Raw sparse labels in ``encoding`` -> canonical uint8; LabelFormatError on values outside its domain."""
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        raise LabelFormatError(f"labels must be integers, got {y.dtype}")
    if y.size and (y.min() < 0 or y.max() > 255):
        raise LabelFormatError(f"values {_some(np.unique(y[(y < 0) | (y > 255)]))} are outside 0..255")
    y = y.astype(np.uint8, copy=False)
    bad = _bad_values(y, encoding, num_classes)
    if bad.size:
        guess = guess_encoding(np.bincount(y.ravel(), minlength=256), num_classes)[0]
        hint = f"; they look like '{guess}' labels" if guess not in (encoding, "unknown") else ""
        raise LabelFormatError(
            f"values {_some(bad)} fit no '{encoding}' sparse label of {num_classes} classes "
            f"({_describe(encoding, num_classes)}){hint}"
        )
    return _lut(encoding, num_classes)[y]


def from_reference(y: np.ndarray, num_classes: int) -> np.ndarray:
    """AGMM reference files (K = unlabeled, 255 = ignore) -> canonical: K -> 254."""
    return to_canonical(y, num_classes, "reference")


def to_reference(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Canonical -> AGMM reference encoding: 254 -> K."""
    y = to_canonical(y, num_classes)  # checks the domain
    lut = np.arange(256, dtype=np.uint8)
    lut[UNLABELED] = num_classes
    return lut[y]


def from_ignore255(y: np.ndarray, num_classes: int) -> np.ndarray:
    """TEL-style files (unannotated = 255, no padding yet) -> canonical: 255 -> 254."""
    return to_canonical(y, num_classes, "ignore255")


def from_shifted(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Files with 0 = unannotated and class c stored as c + 1 -> canonical: 0 -> 254, v -> v - 1."""
    return to_canonical(y, num_classes, "shifted")


def _describe(encoding: str, k: int) -> str:
    return {
        "canonical": f"classes 0..{k - 1}, {UNLABELED} unlabeled, {IGNORE} ignore",
        "reference": f"classes 0..{k - 1}, {k} unlabeled, {IGNORE} ignore",
        "ignore255": f"classes 0..{k - 1}, {IGNORE} unannotated",
        "shifted": f"0 unannotated, classes stored as 1..{k}, {IGNORE} ignore",
    }[encoding]


def _some(values: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


# ---------------------------------------------------------------- statistics


def labeled_fraction(y: np.ndarray, num_classes: int) -> float:
    """Share of in-image (not IGNORE) pixels of canonical labels that carry a class."""
    in_image = int((y != IGNORE).sum())
    return float((y < num_classes).sum()) / in_image if in_image else 0.0


def class_tags(y: np.ndarray, num_classes: int) -> np.ndarray:
    """float32[K]: 1 for classes with a labeled pixel in canonical labels ``y`` (agmm.md §5, t)."""
    counts = np.bincount(y.ravel(), minlength=256)[:num_classes]
    return (counts > 0).astype(np.float32)


def sparse_warning(y: np.ndarray, num_classes: int) -> str | None:
    """Why canonical labels look mis-declared as sparse (agmm.md §2), or None."""
    if not (y == UNLABELED).any():
        return f"no unlabeled ({UNLABELED}) pixel"
    fraction = labeled_fraction(y, num_classes)
    if fraction > MAX_LABELED_FRACTION:
        return f"{fraction:.0%} of the pixels are labeled (more than {MAX_LABELED_FRACTION:.0%})"
    return None


# ---------------------------------------------------------------- rasterisation


def _paint_capsule(canvas: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float, value: int) -> None:
    """Paint pixels whose centre lies within ``radius`` of segment a-b (points as (x, y))."""
    h, w = canvas.shape
    x0, y0 = np.floor(np.minimum(a, b) - radius).astype(int)
    x1, y1 = np.ceil(np.maximum(a, b) + radius).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
    if x0 > x1 or y0 > y1:
        return
    ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1]
    d = b - a
    length2 = float(d @ d)
    t = np.zeros(xs.shape) if length2 == 0 else np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / length2, 0, 1)
    inside = (xs - a[0] - t * d[0]) ** 2 + (ys - a[1] - t * d[1]) ** 2 <= radius * radius
    canvas[y0 : y1 + 1, x0 : x1 + 1][inside] = value


def rasterize(
    points: Iterable[tuple[float, float, int]],
    polylines: Iterable[tuple[Sequence[tuple[float, float]], int]],
    shape: tuple[int, int],
    width: float = 3,
) -> np.ndarray:
    """Canonical labels of ``shape`` (H, W) from vector annotations (agmm.md §2): a canvas of 254 with
    discs of diameter ``width`` at points ``(x, y, class)`` and round-joint polylines
    ``([(x, y), ...], class)`` of that width. Pixel (row r, column c) has its centre at (x=c, y=r).
    Points are drawn first, then polylines, each later item over earlier ones.
    """
    canvas = np.full(shape, UNLABELED, dtype=np.uint8)
    radius = width / 2
    for x, y, cls in points:
        p = np.array([x, y], dtype=float)
        _paint_capsule(canvas, p, p, radius, cls)
    for vertices, cls in polylines:
        v = np.asarray(vertices, dtype=float).reshape(-1, 2)
        for a, b in zip(v, v[1:] if len(v) > 1 else v):
            _paint_capsule(canvas, a, b, radius, cls)
    return canvas


# ---------------------------------------------------------------- inspection


@dataclass
class LabelReport:
    """What ``inspect_labels`` found in a set of label files."""

    num_files: int
    num_classes: int
    histogram: np.ndarray  # int64[256] pixel counts over all files
    guess: str  # an encoding, "dense" or "unknown"
    reason: str
    labeled_fraction: float | None  # under the guessed encoding (None when unknown)
    files_with_issue: dict[str, list[str]] = field(default_factory=dict)  # issue -> the files showing it
    mapping_hint: str | None = None  # a data.mask_mapping suggestion for raw values that are not class ids

    def summary(self) -> str:
        total = int(self.histogram.sum())
        values = np.flatnonzero(self.histogram)
        shown = ", ".join(f"{v}: {self.histogram[v] / total:.2%}" for v in values[:40])
        lines = [
            f"{self.num_files} files, {total} pixels, {len(values)} distinct values",
            f"value shares: {shown}{' ...' if len(values) > 40 else ''}",
            f"guessed format: {self.guess} ({self.reason})",
        ]
        if self.labeled_fraction is not None:
            lines.append(f"labeled fraction of in-image pixels: {self.labeled_fraction:.3%}")
        for issue, files in self.files_with_issue.items():
            lines.append(f"{issue}: {len(files)} file(s), e.g. {files[0]}")
        if self.mapping_hint:
            lines.append(f"suggestion: {self.mapping_hint}")
        return "\n".join(lines)


def mask_mapping_hint(histogram: np.ndarray, num_classes: int) -> str | None:
    """A ``data.mask_mapping`` suggestion when the raw values look like classes stored as other numbers:
    0/255 binary masks (255 would be read as ignore), or at most K values not all below K."""
    values = np.flatnonzero(histogram).tolist()
    if values == [0, IGNORE] and num_classes >= 2:
        return ("the masks hold only 0 and 255, and 255 is ignore: only class 0 would be learned; if 255 marks a "
                "class (binary masks), set data.mask_mapping: {0: 0, 255: 1}")
    if len(values) <= num_classes and max(values, default=0) >= num_classes and IGNORE not in values:
        mapping = ", ".join(f"{v}: {i}" for i, v in enumerate(values))
        return (f"the {len(values)} values are not class ids 0..{num_classes - 1}; "
                f"if each is a class, set data.mask_mapping: {{{mapping}}}")
    return None


def guess_encoding(histogram: np.ndarray, num_classes: int) -> tuple[str, str]:
    """The likeliest encoding (``ENCODINGS``, ``dense`` or ``unknown``) of a value histogram, and why."""
    k = num_classes
    present = histogram > 0
    if not present.any():
        return "unknown", "no pixels"
    known = _domain("canonical", k) | _domain("reference", k)
    if (present & ~known).any():
        return "unknown", f"values {_some(np.flatnonzero(present & ~known))} fit no convention for {k} classes"
    dominant = int(np.argmax(histogram))
    classes = histogram[:k].sum() / histogram.sum()
    sparse_share = f"classes cover {classes:.2%} of the pixels"
    if present[UNLABELED] and not present[k]:
        return "canonical", f"has {UNLABELED} (unlabeled) and no {k}; {sparse_share}"
    if dominant == k:
        return "reference", f"the most frequent value is {k} = K (unlabeled in AGMM's files); {sparse_share}"
    if dominant == IGNORE and not present[k] and classes < MAX_LABELED_FRACTION:
        return "ignore255", f"{IGNORE} covers most pixels; {sparse_share}"
    shifted_share = histogram[1 : k + 1].sum() / histogram.sum()
    if dominant == 0 and not present[k] and not present[UNLABELED]:
        return "dense", (f"every value is a class 0..{k - 1} or {IGNORE}; read as 'shifted' sparse labels "
                         f"(0 unannotated, class c stored as c + 1) class {k - 1} ({k}) would never occur")
    if dominant == 0 and shifted_share < MAX_LABELED_FRACTION:
        return "shifted", f"0 covers most pixels and 1..{k} {shifted_share:.2%} (ambiguous: 0 may be a real class)"
    if classes >= MAX_LABELED_FRACTION and not present[UNLABELED]:
        void = f"; value {k} is present (a void value? e.g. CamVid's 11)" if present[k] else ""
        return "dense", f"{sparse_share}{void}"
    return "unknown", f"{sparse_share}, values {_some(np.flatnonzero(present))}"


def inspect_labels(paths: Sequence[str | Path], num_classes: int) -> LabelReport:
    """Value histogram, guessed encoding and labeled fraction of label PNGs (agmm.md §2)."""
    histogram = np.zeros(256, dtype=np.int64)
    per_file: list[tuple[str, np.ndarray]] = []
    unreadable: list[str] = []
    for path in paths:
        with Image.open(path) as image:
            raw = np.asarray(image)
        if raw.ndim != 2 or raw.dtype != np.uint8:
            unreadable.append(str(path))
            continue
        counts = np.bincount(raw.ravel(), minlength=256)
        histogram += counts
        per_file.append((str(path), counts))
    guess, reason = guess_encoding(histogram, num_classes)
    report = LabelReport(len(per_file), num_classes, histogram, guess, reason, None)
    if unreadable:
        report.files_with_issue["not single-channel 8-bit (skipped)"] = unreadable
    report.mapping_hint = mask_mapping_hint(histogram, num_classes)
    if guess in ENCODINGS:
        lut = _lut(guess, num_classes)
        canonical = np.bincount(lut, weights=histogram, minlength=256)
        in_image = canonical.sum() - canonical[IGNORE]
        report.labeled_fraction = float(canonical[:num_classes].sum() / in_image) if in_image else 0.0
        for name, counts in per_file:
            if ((counts > 0) & ~_domain(guess, num_classes)).any():
                report.files_with_issue.setdefault(f"values outside '{guess}'", []).append(name)
                continue
            c = np.bincount(lut, weights=counts, minlength=256)
            if c[UNLABELED] == 0:
                report.files_with_issue.setdefault("no unlabeled pixel", []).append(name)
            elif c[:num_classes].sum() > MAX_LABELED_FRACTION * (c.sum() - c[IGNORE]):
                report.files_with_issue.setdefault(f"labeled fraction > {MAX_LABELED_FRACTION:.0%}", []).append(name)
    return report
