import numpy as np
import pytest
from PIL import Image

from sparseg.eval import colorize, default_palette, overlay, save_mask_png

MASK = np.array([[0, 1, 2], [255, 20, 1]], dtype=np.uint8)


def test_default_palette_is_the_voc_colour_map():
    palette = default_palette(21)
    assert len(palette) == 21
    assert palette[:5] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128)]
    assert palette[15] == (192, 128, 128)  # VOC "person"
    assert palette[20] == (0, 64, 128)  # VOC "tvmonitor"


def test_colorize_palette_png_round_trip(tmp_path):
    palette = default_palette(21)
    image = colorize(MASK, palette)
    assert image.mode == "P"
    path = tmp_path / "out" / "mask.png"
    save_mask_png(MASK, palette, path)
    read = Image.open(path)
    assert read.mode == "P"
    assert np.array_equal(np.asarray(read), MASK)
    rgb = np.asarray(read.convert("RGB"))
    assert tuple(rgb[0, 1]) == (128, 0, 0)
    assert tuple(rgb[1, 0]) == (224, 224, 192)  # ignore shown in VOC cream


def test_colorize_accepts_int64_masks_and_rejects_bad_ones():
    image = colorize(MASK.astype(np.int64), default_palette(21))
    assert np.array_equal(np.asarray(image), MASK)
    with pytest.raises(ValueError, match="0..255"):
        colorize(np.array([[0, 300]]), default_palette(21))
    with pytest.raises(ValueError, match="2-D"):
        colorize(np.zeros((1, 2, 2), np.uint8), default_palette(21))


def test_overlay_blends_colours_and_leaves_ignore_pixels():
    rgb = np.full((2, 3, 3), 100, dtype=np.uint8)
    out = np.asarray(overlay(Image.fromarray(rgb), MASK, default_palette(21), alpha=0.5))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert tuple(out[0, 0]) == (50, 50, 50)  # black class 0: 0.5 * 100
    assert tuple(out[0, 1]) == (114, 50, 50)  # (128, 0, 0): 0.5 * (100 + 128) = 114
    assert tuple(out[1, 0]) == (100, 100, 100)  # ignore: unchanged
    with pytest.raises(ValueError, match="differ"):
        overlay(Image.fromarray(rgb), MASK[:, :2], default_palette(21))
