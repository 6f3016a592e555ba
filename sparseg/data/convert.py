"""Cityscapes ``*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png`` (the 19 training classes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sparseg.labels import IGNORE

# labelId -> trainId for the 19 evaluated classes (cityscapesscripts' labels.py); every other id -> 255
LABELID_TO_TRAINID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
_LUT = np.full(256, IGNORE, dtype=np.uint8)
_LUT[list(LABELID_TO_TRAINID)] = list(LABELID_TO_TRAINID.values())


def labelids_to_trainids(labelids: np.ndarray) -> np.ndarray:
    """Map an integer labelId array to uint8 trainIds (unknown ids, including -1, -> 255)."""
    return _LUT[np.clip(labelids, 0, 255)]


def convert_cityscapes(root: str | Path) -> int:
    """Write ``*_gtFine_labelTrainIds.png`` beside every ``*_gtFine_labelIds.png`` under ``root``.

    Returns the number of files written; raises FileNotFoundError when there are none.
    """
    root = Path(root)
    sources = sorted(root.rglob("*_gtFine_labelIds.png"))
    if not sources:
        raise FileNotFoundError(f"no *_gtFine_labelIds.png files under {root}")
    for source in sources:
        with Image.open(source) as image:
            labelids = np.asarray(image)
        if labelids.ndim != 2:
            raise ValueError(f"{source}: expected a single-channel labelIds image, got shape {labelids.shape}")
        target = source.with_name(source.name.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"))
        Image.fromarray(labelids_to_trainids(labelids)).save(target)
    return len(sources)
