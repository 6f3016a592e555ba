"""Split lists: reading with format detection and path checks, writing labeled/unlabeled partitions.

Line formats (one per list, detected per line):
- ``image mask``: two columns split by a tab (CPS) or whitespace; a leading ``/`` is dropped;
- ``image``: one column with an image extension (or a whole line naming an image file, spaces and all);
  the dataset spec derives the mask path;
- ``id``: a bare id; the dataset spec maps it to image and mask paths (VOC, U2PL/CPS lists).
Paths are relative to the data root. A folder in place of a list stands for every image file below it
(sorted; hidden entries and files that are another listed image's mask left out).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")  # in order of preference


class PathRules(Protocol):
    """The list path rules of a dataset (``sparseg.data.datasets.DatasetSpec`` provides them)."""

    name: str
    strip_prefixes: tuple[str, ...]

    def mask_candidates(self, image: str) -> list[str]: ...

    def id_candidates(self, item_id: str) -> tuple[list[str], list[str]]: ...


class SplitError(ValueError):
    """A split list is malformed or names missing files; the message names list path and line."""


@dataclass(frozen=True)
class SplitEntry:
    """One list line resolved to files; ``id`` is the image path relative to the root, without suffix."""

    image: Path
    mask: Path | None
    id: str


@dataclass(frozen=True)
class _Line:
    lineno: int
    text: str
    kind: str  # "pair" | "image" | "id"
    entry: SplitEntry


def read_split(list_path: str | Path, root: str | Path, spec: PathRules, labeled: bool,
               root_key: str = "--root") -> list[SplitEntry]:
    """Entries of a split list; labeled lists must name existing masks, unlabeled ones may not (mask None).
    ``root_key`` is the setting that gave ``root`` (``data.root``), named when the list's files are found
    elsewhere."""
    return [line.entry for line in _read_lines(Path(list_path), Path(root), spec, labeled, root_key)]


def check_disjoint(labeled: Sequence[SplitEntry], unlabeled: Sequence[SplitEntry]) -> None:
    """Raise SplitError when an image is in both lists."""
    shared = {e.image for e in labeled} & {e.image for e in unlabeled}
    if shared:
        example = min(shared)
        raise SplitError(
            f"labeled and unlabeled lists share {len(shared)} image(s), e.g. {example}; "
            "a split family must keep them disjoint"
        )


def detect_layout(list_path: str | Path, root: str | Path, specs: Sequence[PathRules]) -> PathRules:
    """The first of ``specs`` whose path rules resolve every line of the list to an image and a mask."""
    if not Path(list_path).exists():
        raise SplitError(f"{list_path}: split list or image folder not found")
    failures = []
    for spec in specs:
        try:
            _read_lines(Path(list_path), Path(root), spec, labeled=True)
            return spec
        except SplitError as err:
            failures.append(f"as {spec.name}: {err}")
    raise SplitError(f"{list_path}: no dataset layout resolves this list ({failures[-1]}); pass --dataset")


def write_splits(
    list_path: str | Path, root: str | Path, spec: PathRules, labeled: str, seed: int, out_dir: str | Path,
    overwrite: bool = False,
) -> tuple[int, int]:
    """Partition a labeled list into ``labeled.txt`` / ``unlabeled.txt`` under ``out_dir``.

    ``labeled`` is a fraction (``"1/8"``, rounded up) or a count (``"92"``). The lines keep the input's
    format and order; the choice depends only on ``seed``. Existing split files are replaced only with
    ``overwrite``. Returns (n_labeled, n_unlabeled).
    """
    out_dir = Path(out_dir)
    existing = [out_dir / name for name in ("labeled.txt", "unlabeled.txt") if (out_dir / name).exists()]
    if existing and not overwrite:
        raise SplitError(f"{existing[0]} exists; choose another --out or pass --overwrite to replace the split")
    lines = _read_lines(Path(list_path), Path(root), spec, labeled=True)
    count = _labeled_count(labeled, len(lines))
    chosen = np.zeros(len(lines), dtype=bool)
    chosen[np.random.default_rng(seed).permutation(len(lines))[:count]] = True
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, keep in (("labeled.txt", chosen), ("unlabeled.txt", ~chosen)):
        text = "".join(line.text + "\n" for line, k in zip(lines, keep) if k)
        (out_dir / name).write_text(text, encoding="utf-8")
    return count, len(lines) - count


def _labeled_count(labeled: str, n: int) -> int:
    text = str(labeled).strip()
    fraction = re.fullmatch(r"(\d+)\s*[/_]\s*(\d+)", text)
    if fraction and int(fraction[2]) > 0:
        count = -(-n * int(fraction[1]) // int(fraction[2]))
    elif text.isdigit():
        count = int(text)
    else:
        raise SplitError(f"labeled size '{labeled}' is neither a fraction like 1/8 nor a count like 92")
    if not 1 <= count < n:
        raise SplitError(f"labeled size '{labeled}' gives {count} of {n} images; need 1..{n - 1}")
    return count


def _read_lines(list_path: Path, root: Path, spec: PathRules, labeled: bool, root_key: str = "--root") -> list[_Line]:
    if list_path.is_dir():
        return _folder_lines(list_path, root, spec, labeled)
    try:
        text = list_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SplitError(f"{list_path}: split list not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SplitError(f"{list_path}: cannot read split list: {err}") from None
    lines: list[_Line] = []
    first_of: dict[Path, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()  # also drops the \r of CRLF files
        if not stripped:
            continue
        where = f"{list_path}:{lineno}"
        try:
            line = _parse_line(stripped, lineno, where, root, spec, labeled)
        except SplitError as err:
            raise SplitError(f"{err}{_root_hint(list_path, root, stripped, spec, labeled, root_key)}") from None
        if lines and line.kind != lines[0].kind:
            raise SplitError(
                f"{where}: {_KIND_NAMES[line.kind]} line in a list of {_KIND_NAMES[lines[0].kind]} lines "
                f"(line {lines[0].lineno}); mixed formats"
            )
        image = line.entry.image
        if image in first_of:
            raise SplitError(f"{where}: duplicate of line {first_of[image]}: {image}")
        first_of[image] = lineno
        lines.append(line)
    if not lines:
        raise SplitError(f"{list_path}: split list is empty")
    return lines


def image_files(folder: Path) -> list[Path]:
    """Every image file below ``folder`` (recursive, sorted), hidden files and folders (``.name``) left out."""
    return sorted(
        path for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def _root_hint(list_path: Path, root: Path, text: str, spec: PathRules, labeled: bool, root_key: str) -> str:
    """Where a list line that does not resolve under ``root`` does: under the list's own folder, or under the
    root that a ``manifest.json`` beside the list names (``sparsify`` and ``annotate`` write one); '' if neither."""
    others = {list_path.parent: "the list's folder"}
    manifest = list_path.parent / "manifest.json"
    try:
        others.setdefault(Path(json.loads(manifest.read_text(encoding="utf-8"))["root"]), f"the root {manifest} names")
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no manifest, or not one of ours
    for other, what in others.items():
        if other.resolve() == root.resolve():
            continue
        try:
            _parse_line(text, 0, "", other, spec, labeled)
        except SplitError:
            continue
        return f"; it is found under {other} ({what}): set {root_key} to {other}"
    return ""


def _folder_lines(folder: Path, root: Path, spec: PathRules, labeled: bool) -> list[_Line]:
    """Every image below ``folder`` as an image-path line, in sorted order. A file that is the mask of another
    image (a dataset root holding images and masks) is a mask, not an image."""
    lines = []
    for number, path in enumerate(image_files(folder), start=1):
        text = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path.absolute())
        lines.append(_parse_line(text, number, str(path), root, spec, labeled=False))
    masks = {line.entry.mask for line in lines}
    lines = [line for line in lines if line.entry.image not in masks]
    if not lines:
        raise SplitError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    if labeled:  # the error of a missing mask, named by the image
        lines = [_parse_line(line.text, line.lineno, str(line.entry.image), root, spec, labeled=True)
                 if line.entry.mask is None else line for line in lines]
    return lines


_KIND_NAMES = {"pair": "'image mask'", "image": "image-path", "id": "bare-id"}


def _parse_line(text: str, lineno: int, where: str, root: Path, spec: PathRules, labeled: bool) -> _Line:
    columns = [c.strip() for c in text.split("\t")] if "\t" in text else text.split()
    if "\t" not in text and len(columns) > 1 and PurePosixPath(text).suffix.lower() in IMAGE_SUFFIXES \
            and _first_existing(root, [_relative(text, root, spec)]):
        columns = [text]  # one image whose name has spaces
    if len(columns) == 2:
        kind = "pair"
        image_candidates = [_relative(columns[0], root, spec)]
        mask_candidates = [_relative(columns[1], root, spec)]
    elif len(columns) == 1 and PurePosixPath(columns[0]).suffix.lower() in IMAGE_SUFFIXES:
        kind = "image"
        image_candidates = [_relative(columns[0], root, spec)]
        mask_candidates = spec.mask_candidates(image_candidates[0])
    elif len(columns) == 1:
        kind = "id"
        image_candidates, mask_candidates = spec.id_candidates(columns[0])
        if not image_candidates:
            raise SplitError(f"{where}: dataset '{spec.name}' lists need image paths, got the bare id '{columns[0]}'")
    else:
        raise SplitError(f"{where}: expected 'image mask', an image path or an id, got {len(columns)} columns "
                         "(separate image and mask by a tab when a name has spaces)")

    image = _first_existing(root, image_candidates)
    if image is None:
        raise SplitError(f"{where}: image not found: {_tried(root, image_candidates)}")
    mask = _first_existing(root, mask_candidates)
    if mask is None and labeled:
        if not mask_candidates:
            raise SplitError(
                f"{where}: cannot derive a mask path from {image_candidates[0]} for dataset '{spec.name}'; "
                "write 'image mask' lines"
            )
        raise SplitError(f"{where}: mask not found: {_tried(root, mask_candidates)}")
    item_id = PurePosixPath((image.relative_to(root) if image.is_relative_to(root) else image).as_posix())
    item_id = item_id.with_suffix("").as_posix()
    return _Line(lineno, text, kind, SplitEntry(image=image, mask=mask, id=item_id))


def _relative(path: str, root: Path, spec: PathRules) -> str:
    """A list path relative to the root: spec prefixes (SegNet) and a leading '/' (CPS) removed; an
    absolute path to an existing file outside the root (``sparsify`` output elsewhere) is kept."""
    for prefix in spec.strip_prefixes:
        if path.startswith(prefix):
            return path[len(prefix) :]
    absolute = Path(path)
    if absolute.is_absolute() and absolute.is_relative_to(root.resolve()):
        return absolute.relative_to(root.resolve()).as_posix()
    if absolute.is_absolute() and not (root / path.lstrip("/")).is_file() and absolute.is_file():
        return path
    return path.lstrip("/")


def _first_existing(root: Path, candidates: list[str]) -> Path | None:
    return next((root / c for c in candidates if (root / c).is_file()), None)


def _tried(root: Path, candidates: list[str]) -> str:
    others = f" (also tried {', '.join(candidates[1:])})" if len(candidates) > 1 else ""
    return f"{root / candidates[0]}{others}"
