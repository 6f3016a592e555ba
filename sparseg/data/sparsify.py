"""Synthesising sparse labels from dense masks (agmm.md §3), so any dense dataset can be used sparsely.

These are **not** the benchmarks' procedures (VOC points and scribbles are human-made, the Cityscapes
click sampling is undocumented): scores on synthetic labels are not comparable with published tables.

Rules shared by the generators:
- output is canonical (``sparseg.data.sparse``): classes, 254 for unpainted in-image pixels, and void
  as 254 (``void_as="unlabeled"``, default) or 255 (``"ignore"``);
- every footprint is clipped to its own class (clicks) or object (points, scribbles), so labels agree
  with the dense mask, and void is never labeled;
- points and scribbles label every object of at least ``min_area`` pixels, background and stuff
  included, because the absent-class term suppresses every class without a label in the image;
- randomness comes only from the ``rng`` passed in; ``sparsify_list`` seeds one per image from
  (seed, SHA-256 of the image id), so output depends neither on list order nor on workers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from scipy import ndimage

from sparseg.config import ConfigError
from sparseg.data.datasets import DataError, DatasetSpec, SegmentationDataset
from sparseg.data.sparse import labeled_fraction, rasterize
from sparseg.data.splits import read_split
from sparseg.labels import IGNORE, UNLABELED

GENERATOR_VERSION = 1
VoidAs = Literal["unlabeled", "ignore"]
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity


def image_rng(seed: int, image_id: str) -> np.random.Generator:
    """The generator of one image: from (seed, stable hash of its id), independent of order."""
    digest = hashlib.sha256(image_id.encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def _canvas(dense: np.ndarray, void_as: VoidAs) -> np.ndarray:
    if void_as not in ("unlabeled", "ignore"):
        raise ValueError(f"void_as must be 'unlabeled' or 'ignore', got '{void_as}'")
    canvas = np.full(dense.shape, UNLABELED, dtype=np.uint8)
    if void_as == "ignore":
        canvas[dense == IGNORE] = IGNORE
    return canvas


def _disc(shape: tuple[int, int], row: int, col: int, diameter: float) -> tuple[tuple[slice, slice], np.ndarray]:
    """A disc of ``diameter`` at (row, col) in an array of ``shape``: (window slices, bool disc in the window)."""
    r = int(np.ceil(diameter / 2))
    top, left = max(row - r, 0), max(col - r, 0)
    window = (slice(top, min(row + r + 1, shape[0])), slice(left, min(col + r + 1, shape[1])))
    size = (window[0].stop - top, window[1].stop - left)
    return window, rasterize([(col - left, row - top, 0)], [], size, diameter) == 0


def _stamp(canvas: np.ndarray, mask: np.ndarray, row: int, col: int, diameter: float, value: int) -> None:
    """Paint a disc at (row, col) with ``value``, clipped to the bool ``mask`` (same shape as canvas)."""
    window, disc = _disc(mask.shape, row, col, diameter)
    canvas[window][disc & mask[window]] = value


# ---------------------------------------------------------------- generators


def random_clicks(
    dense: np.ndarray,
    rng: np.random.Generator,
    n: int = 50,
    *,
    diameter: float = 3,
    stratified: bool = False,
    void_as: VoidAs = "unlabeled",
) -> np.ndarray:
    """Cityscapes-style clicks: ``min(n, #non-void)`` distinct centres drawn uniformly from non-void
    pixels, each a disc of ``diameter`` (1 = one pixel) clipped to the centre's class. ``stratified``
    first draws one centre per present class (a toolkit option, not the benchmark protocol).
    """
    canvas = _canvas(dense, void_as)
    flat = dense.ravel()
    candidates = np.flatnonzero(flat != IGNORE)
    n = min(n, candidates.size)
    chosen: list[int] = []
    if stratified:
        for cls in np.unique(flat[candidates]):
            chosen.append(int(rng.choice(candidates[flat[candidates] == cls])))
        chosen = rng.permutation(chosen)[:n].tolist()
        candidates = np.setdiff1d(candidates, chosen, assume_unique=True)
    chosen += rng.choice(candidates, size=n - len(chosen), replace=False).tolist()
    for index in chosen:
        row, col = divmod(int(index), dense.shape[1])
        cls = int(dense[row, col])
        window, disc = _disc(dense.shape, row, col, diameter)
        canvas[window][disc & (dense[window] == cls)] = cls
    return canvas


def iter_objects(
    dense: np.ndarray, instances: np.ndarray | None = None
) -> Iterator[tuple[int, tuple[slice, slice], np.ndarray]]:
    """``(class, bounding-box slices, object mask inside the box)`` for every object of a dense mask.

    Objects are the instance ids of ``instances`` (id 0 = no instance) within each class, else
    8-connected components of each class; pixels of a class without an instance id are split into
    components. Void (255) is never an object.
    """
    for cls in np.unique(dense):
        if cls == IGNORE:
            continue
        of_class = dense == cls
        if instances is not None:
            for instance in np.unique(instances[of_class]):
                if instance != 0:
                    region = of_class & (instances == instance)
                    box = ndimage.find_objects(region.astype(np.int32))[0]
                    yield int(cls), box, region[box]
            of_class &= instances == 0
        components, _ = ndimage.label(of_class, structure=_EIGHT)
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            yield int(cls), box, components[box] == index


def _distance_inside(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance to the nearest pixel outside ``mask`` (the image border counts as outside)."""
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def _point_pixels(
    mask: np.ndarray, rng: np.random.Generator, count: int, placement: str, margin: float = 2
) -> list[tuple[int, int]]:
    """``count`` distinct (row, col) of ``mask``: 'interior' draws uniformly among pixels at least
    ``margin`` from the boundary (else the farthest pixel); 'center' takes the farthest pixel."""
    distance = _distance_inside(mask)
    interior = np.flatnonzero(distance.ravel() >= margin)
    if placement == "interior" and interior.size:
        picked = rng.choice(interior, size=min(count, interior.size), replace=False)
    elif placement in ("interior", "center"):
        picked = [int(np.argmax(distance))]
    else:
        raise ValueError(f"placement must be 'interior' or 'center', got '{placement}'")
    return [divmod(int(i), mask.shape[1]) for i in picked]


def object_points(
    dense: np.ndarray,
    rng: np.random.Generator,
    *,
    instances: np.ndarray | None = None,
    min_area: int = 9,
    per_object: int = 1,
    placement: Literal["interior", "center"] = "interior",
    diameter: float = 3,
    void_as: VoidAs = "unlabeled",
) -> np.ndarray:
    """VOC-style points: ``per_object`` discs of ``diameter`` in every object of at least ``min_area``
    pixels, clipped to the object (see ``iter_objects``, ``_point_pixels``)."""
    canvas = _canvas(dense, void_as)
    for cls, box, mask in iter_objects(dense, instances):
        if mask.sum() < min_area:
            continue
        for row, col in _point_pixels(mask, rng, per_object, placement):
            _stamp(canvas[box], mask, row, col, diameter, cls)
    return canvas


def _skeleton_path(core: np.ndarray) -> np.ndarray:
    """Longest geodesic path (rows, cols) on the skeleton of ``core``'s largest component: two BFS."""
    try:
        from skimage.morphology import skeletonize
    except ImportError:
        raise ImportError(
            "scribbles with method 'skeleton' need scikit-image (pip install scikit-image); "
            "or use method 'walk'"
        ) from None
    components, count = ndimage.label(core, structure=_EIGHT)
    largest = 1 + int(np.argmax(ndimage.sum_labels(core, components, range(1, count + 1))))
    skeleton = skeletonize(components == largest)
    pixels = set(zip(*np.nonzero(skeleton)))

    def farthest(start):
        parent = {start: None}
        queue, last = deque([start]), start
        while queue:
            last = queue.popleft()
            r, c = last
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    nb = (r + dr, c + dc)
                    if nb in pixels and nb not in parent:
                        parent[nb] = last
                        queue.append(nb)
        return last, parent

    end, _ = farthest(min(pixels))
    other, parent = farthest(end)
    path = [other]
    while parent[path[-1]] is not None:
        path.append(parent[path[-1]])
    return np.array(path, dtype=float)


def _walk_path(core: np.ndarray, rng: np.random.Generator, steps: int, turn_deg: float = 20) -> np.ndarray:
    """A random walk (rows, cols) inside ``core``: 1-px steps, heading turning by N(0, turn_deg),
    reflected at the border of ``core``."""
    inside = np.flatnonzero(core.ravel())
    position = np.array(divmod(int(rng.choice(inside)), core.shape[1]), dtype=float)
    heading = rng.uniform(0, 2 * np.pi)
    path = [position.copy()]

    def ok(p):
        r, c = np.rint(p).astype(int)
        return 0 <= r < core.shape[0] and 0 <= c < core.shape[1] and core[r, c]

    for _ in range(steps):
        heading += np.deg2rad(rng.normal(0, turn_deg))
        step = np.array([np.sin(heading), np.cos(heading)])
        for flip in ((1, 1), (-1, 1), (1, -1), (-1, -1)):  # straight, or mirrored at a row / column border
            if ok(position + step * flip):
                step = step * flip
                break
        else:
            continue  # boxed in: turn again next step
        heading = np.arctan2(step[0], step[1])
        position = position + step
        path.append(position.copy())
    return np.array(path)


def scribbles(
    dense: np.ndarray,
    rng: np.random.Generator,
    *,
    instances: np.ndarray | None = None,
    width: float = 3,
    method: Literal["skeleton", "walk"] = "skeleton",
    length_frac: float = 0.6,
    margin: float = 2,
    min_area: int = 64,
    void_as: VoidAs = "unlabeled",
) -> np.ndarray:
    """ScribbleSup-like scribbles: one round-joint polyline of ``width`` per object of at least
    ``min_area`` pixels, clipped to the object. The object is eroded by ``margin`` (nothing left: a
    point at its farthest-inside pixel); 'skeleton' keeps the central ``length_frac`` of the longest
    skeleton path, 'walk' takes ``length_frac * 2 sqrt(area)`` steps of a random walk.
    """
    canvas = _canvas(dense, void_as)
    for cls, box, mask in iter_objects(dense, instances):
        area = int(mask.sum())
        if area < min_area:
            continue
        core = _distance_inside(mask) > margin
        if not core.any():
            (row, col), = _point_pixels(mask, rng, 1, "center")
            _stamp(canvas[box], mask, row, col, width, cls)
            continue
        if method == "skeleton":
            path = _skeleton_path(core)
            drop = round(len(path) * (1 - length_frac) / 2)
            path = path[drop : len(path) - drop] if len(path) - 2 * drop >= 1 else path
        elif method == "walk":
            path = _walk_path(core, rng, max(1, round(length_frac * 2 * np.sqrt(area))))
        else:
            raise ValueError(f"scribble method must be 'skeleton' or 'walk', got '{method}'")
        line = rasterize([], [(path[:, ::-1], 0)], mask.shape, width) == 0  # (x, y) = (col, row)
        canvas[box][line & mask] = cls
    return canvas


GENERATORS: dict[str, Callable[..., np.ndarray]] = {
    "clicks": random_clicks,
    "points": object_points,
    "scribbles": scribbles,
}


def generator_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` completed with the generator's defaults (what a manifest records); ConfigError when
    they do not fit the generator."""
    if kind not in GENERATORS:
        raise ConfigError(f"unknown sparse label kind '{kind}' (known: {', '.join(GENERATORS)})")
    if "instances" in params:
        raise ConfigError("instance masks are per image: pass them to the generator, not to a whole list")
    try:
        bound = inspect.signature(GENERATORS[kind]).bind_partial(None, None, **params)
    except TypeError as err:
        raise ConfigError(f"{kind}: {err}") from None
    bound.apply_defaults()
    resolved = {k: v for k, v in list(bound.arguments.items())[2:] if k != "instances"}  # after (dense, rng)
    if resolved.get("method") == "skeleton" and importlib.util.find_spec("skimage") is None:
        raise ConfigError("scribbles with method 'skeleton' need scikit-image (pip install scikit-image); "
                          "or use method 'walk'")
    return resolved


# ---------------------------------------------------------------- whole lists


def sparsify_list(
    list_path: str | Path,
    root: str | Path,
    spec: DatasetSpec,
    kind: str,
    seed: int,
    out_dir: str | Path,
    overwrite: bool = False,
    **params: Any,
) -> dict[str, Any]:
    """Write sparse labels for every entry of a dense split list (agmm.md §3); return the manifest.

    ``OUT/<image id>.png`` holds canonical labels, ``OUT/train.txt`` lines ``image_path mask_path``
    relative to ``root`` (masks absolute when OUT is outside it), and ``OUT/manifest.json`` the generator,
    parameters, seed and per-image labeled fraction and classes. Generated once: an OUT whose manifest
    records the same inputs (list, mask file sizes and times, parameters) is reused, a different one
    is an error unless ``overwrite``.
    """
    root, out_dir, list_path = Path(root), Path(out_dir), Path(list_path)
    resolved = generator_params(kind, params)
    entries = read_split(list_path, root, spec, labeled=True)
    recipe = {
        "generator": f"sparseg.data.sparsify.{GENERATORS[kind].__name__}",
        "version": GENERATOR_VERSION,
        "kind": kind,
        "params": resolved,
        "seed": seed,
        "source_list": str(list_path.resolve()),
        "root": str(root.resolve()),
        "dataset": spec.name,
        "masks_fingerprint": _fingerprint([e.mask for e in entries]),
        "encoding": "canonical",
    }
    manifest_path, list_out = out_dir / "manifest.json", out_dir / "train.txt"
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if {k: old.get(k) for k in recipe} == recipe and list_out.is_file():
            return old
        if not overwrite:
            raise DataError(f"{out_dir} holds sparse labels made from other inputs or settings ({manifest_path}); "
                            "choose another --out or pass --overwrite")
        manifest_path.unlink()  # an interrupted overwrite must not look complete
    reader = SegmentationDataset(entries, spec, transform=None, labeled=True)
    k = spec.num_classes
    lines, images = [], {}
    for entry in entries:
        with Image.open(entry.image) as image:
            size = image.size
        dense = reader.read_mask(entry, size)
        sparse = GENERATORS[kind](dense, image_rng(seed, entry.id), **params)
        target = out_dir / f"{entry.id}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sparse).save(target)
        present = set(np.unique(dense[dense < k]).tolist())
        labeled = set(np.unique(sparse[sparse < k]).tolist())
        images[entry.id] = {
            "labeled_fraction": round(labeled_fraction(sparse, k), 6),
            "classes": sorted(labeled),
            "present_unlabeled": sorted(present - labeled),  # suppressed by the absent-class term
        }
        lines.append(f"{entry.image.relative_to(root).as_posix()} {_list_path(target, root)}\n")
    list_out.write_text("".join(lines), encoding="utf-8")
    manifest = {**recipe, "num_classes": k, "class_names": list(spec.class_names),
                "summary": summarize(images, spec.class_names), "images": images}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")  # last: marks a complete output
    return manifest


def _list_path(path: Path, root: Path) -> str:
    """How a list line names ``path``: relative to ``root`` when inside it, else absolute (no ``../..``)."""
    path, root = path.resolve(), root.resolve()
    return (path.relative_to(root) if path.is_relative_to(root) else path).as_posix()


def _fingerprint(paths: list[Path]) -> str:
    """SHA-256 of the files' paths, sizes and modification times: changes when a mask is rewritten."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def summarize(images: dict[str, dict[str, Any]], class_names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Dataset statistics of per-image manifest records."""
    fractions = np.array([r["labeled_fraction"] for r in images.values()])
    labeled = np.zeros(len(class_names), dtype=int)
    missed = np.zeros(len(class_names), dtype=int)
    for record in images.values():
        labeled[record["classes"]] += 1
        missed[record["present_unlabeled"]] += 1
    return {
        "images": len(images),
        "labeled_fraction_mean": float(fractions.mean()),
        "labeled_fraction_min": float(fractions.min()),
        "labeled_fraction_max": float(fractions.max()),
        "images_labeling_class": dict(zip(class_names, labeled.tolist())),
        "images_with_present_unlabeled_class": sum(bool(r["present_unlabeled"]) for r in images.values()),
        "images_missing_class": dict(zip(class_names, missed.tolist())),
    }
