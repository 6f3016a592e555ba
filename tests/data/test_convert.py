"""Cityscapes labelIds -> trainIds."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparseg.data import convert_cityscapes, labelids_to_trainids


def test_lookup_table():
    ids = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33])
    np.testing.assert_array_equal(labelids_to_trainids(ids), np.arange(19))
    others = np.array([-1, 0, 1, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 255])
    assert (labelids_to_trainids(others) == 255).all()


def test_convert_tree(tmp_path: Path):
    for city in ("a", "b"):
        folder = tmp_path / "gtFine/train" / city
        folder.mkdir(parents=True)
        Image.fromarray(np.array([[7, 33], [0, 26]], dtype=np.uint8)).save(folder / f"{city}_0_1_gtFine_labelIds.png")
    assert convert_cityscapes(tmp_path) == 2
    with Image.open(tmp_path / "gtFine/train/b/b_0_1_gtFine_labelTrainIds.png") as out:
        np.testing.assert_array_equal(np.asarray(out), [[0, 18], [255, 13]])


def test_convert_needs_files(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no \\*_gtFine_labelIds.png"):
        convert_cityscapes(tmp_path)
