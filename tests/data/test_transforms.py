"""Paired augmentation alignment and determinism; batch photometric and CutMix operations."""

import numpy as np
import pytest
import torch
from PIL import Image

from sparseg.data import (
    EvalTransform,
    TrainTransform,
    cutmix,
    half_area_boxes,
    random_area_boxes,
    strong_photometric,
)
from sparseg.data.transforms import _hue

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)


def block_scene(h: int = 24, w: int = 40, block: int = 8) -> tuple[Image.Image, np.ndarray]:
    """Blocks of 4 labels; every pixel's colour is its label's colour; no flip symmetry."""
    ys, xs = np.mgrid[0:h, 0:w]
    label = ((ys // block) * 3 + (xs // block) + (xs // (3 * block))) % len(COLOURS)
    return Image.fromarray(COLOURS[label]), label.astype(np.uint8)


def run(transform, seed: int, **extra):
    image, mask = block_scene()
    return transform({"image": image, "mask": mask, **extra}, np.random.default_rng(seed))


@pytest.mark.parametrize("seed", range(8))
def test_image_mask_valid_stay_aligned(seed: int):
    out = run(TrainTransform((32, 32), scale_range=(0.5, 2.0)), seed)
    image = (out["image"].permute(1, 2, 0).numpy() * 255).round()
    mask, valid = out["mask"].numpy(), out["valid"].numpy()
    assert image.shape == (32, 32, 3) and mask.shape == valid.shape == (32, 32)
    assert np.array_equal(mask == 255, ~valid)  # the source has no ignore pixels
    assert (image[~valid] == 0).all()
    # interior pixels (3x3 label-uniform neighbourhood) carry their label's colour
    padded = np.pad(mask, 1, constant_values=254)  # crop borders are never interior
    uniform = np.ones_like(valid)
    for dy in range(3):
        for dx in range(3):
            uniform &= padded[dy : dy + 32, dx : dx + 32] == mask
    interior = uniform & valid
    assert interior.sum() > 50
    assert np.abs(image[interior] - COLOURS[mask[interior]]).max() <= 2


def test_padding_when_crop_exceeds_image():
    out = run(TrainTransform((64, 64), scale_range=(1.0, 1.0), flip=False), 0)
    assert out["valid"].sum() == 24 * 40
    assert out["valid"][:24, :40].all() and (out["mask"][24:] == 255).all() and (out["image"][:, :, 40:] == 0).all()


def test_base_size_resizes_the_long_side():
    out = run(TrainTransform((48, 48), scale_range=(1.0, 1.0), base_size=20), 0)
    assert out["valid"].sum() == 20 * 12


def test_same_seed_same_result_regardless_of_call_order():
    transform = TrainTransform((16, 16))
    first = run(transform, 5)
    for other in range(3):
        run(transform, other)
    again = run(transform, 5)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first["image"], run(transform, s)["image"]) for s in range(6, 9))


def test_extra_fields_follow_the_table():
    depth = np.ones((24, 40), dtype=np.float32)  # d~ as sparseg.data.depth loads it
    out = run(TrainTransform((32, 48), scale_range=(1.0, 1.0)), 0, depth=depth)
    assert out["depth"].dtype == torch.float32
    assert torch.equal(out["depth"] == 1.0, out["valid"]) and (out["depth"][~out["valid"]] == 0).all()
    with pytest.raises(KeyError, match="no transform rule for field 'normals'"):
        run(TrainTransform((8, 8)), 0, normals=depth)
    with pytest.raises(ValueError, match="field 'mask' is"):
        TrainTransform((8, 8))({"image": np.zeros((4, 4, 3), np.uint8), "mask": np.zeros((4, 5), np.uint8)}, None)


def test_eval_transform_only_converts():
    image, mask = block_scene()
    out = EvalTransform()({"image": image, "mask": mask})
    assert out["image"].shape == (3, 24, 40) and out["image"].dtype == torch.float32
    assert torch.equal(out["mask"], torch.from_numpy(mask.astype(np.int64))) and out["valid"].all()
    assert torch.allclose(out["image"][:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def images(b: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_strong_photometric_range_shape_determinism():
    x = images()
    original = x.clone()
    out = strong_photometric(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert 0 <= out.min() and out.max() <= 1
    assert torch.equal(x, original)  # input untouched
    assert torch.equal(out, strong_photometric(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, strong_photometric(x, torch.Generator().manual_seed(2)))


def test_strong_photometric_is_fp32_inside_autocast():
    """The trainer runs methods inside autocast: the strong view (its blur is a conv) must not change there."""
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = strong_photometric(x, torch.Generator().manual_seed(3), p_blur=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = strong_photometric(x, torch.Generator().manual_seed(3), p_blur=1.0)
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)


def test_strong_photometric_parameters_differ_per_image():
    same = images(1).expand(8, -1, -1, -1).contiguous()
    out = strong_photometric(same, torch.Generator().manual_seed(0))
    assert len({tuple(o.flatten()[:5].tolist()) for o in out}) > 4


def test_strong_photometric_switches():
    x, g = images(), torch.Generator().manual_seed(0)
    assert torch.equal(strong_photometric(x, g, p_jitter=0, p_gray=0, p_blur=0), x)
    gray = strong_photometric(x, g, p_jitter=0, p_gray=1, p_blur=0)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    blurred = strong_photometric(x, g, p_jitter=0, p_gray=0, p_blur=1)
    assert blurred.std() < x.std()


def test_hue_rotation_turns_red_into_green():
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1
    g = torch.Generator()
    out = strong_photometric(red, g, brightness=0, contrast=0, saturation=0, hue=0.0, p_jitter=1, p_gray=0, p_blur=0)
    assert torch.allclose(out, red)
    assert torch.allclose(_hue(red, torch.tensor([1 / 3])), torch.roll(red, 1, dims=1), atol=1e-5)


def box_extent(box: torch.Tensor) -> tuple[int, int]:
    rows, cols = box.any(1).nonzero().squeeze(1), box.any(0).nonzero().squeeze(1)
    h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    assert box.sum() == h * w  # one solid rectangle
    return h, w


def test_half_area_boxes():
    boxes = half_area_boxes(64, 20, 30, torch.Generator().manual_seed(0))
    assert boxes.shape == (64, 20, 30) and boxes.dtype == torch.bool
    for box in boxes:
        h, w = box_extent(box)
        assert 16 <= w <= 29 and abs(h * w - 300) <= w / 2
    assert torch.equal(boxes, half_area_boxes(64, 20, 30, torch.Generator().manual_seed(0)))


def test_random_area_boxes():
    g = torch.Generator().manual_seed(0)
    boxes = random_area_boxes(400, 32, 32, g, p=0.5)
    has_box = boxes.flatten(1).any(1)
    assert 150 < has_box.sum() < 250
    for box in boxes[has_box]:
        box_extent(box)
    area = boxes[has_box].flatten(1).sum(1).float() / (32 * 32)
    assert area.max() <= 0.4 and area.min() > 0.005
    assert not random_area_boxes(4, 32, 32, g, p=0).any()


def test_cutmix_takes_the_partner_inside_the_box():
    b = 3
    imgs = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, 4, 4)
    labels = torch.arange(b).view(b, 1, 1).expand(b, 4, 4)
    boxes = torch.zeros(b, 4, 4, dtype=torch.bool)
    boxes[:, :2] = True
    mixed, mixed_labels = cutmix(imgs, boxes), cutmix(labels, boxes)
    for i in range(b):
        assert (mixed[i, :, :2] == (i + 1) % b).all() and (mixed[i, :, 2:] == i).all()
        assert (mixed_labels[i, :2] == (i + 1) % b).all() and (mixed_labels[i, 2:] == i).all()
    reverse = cutmix(labels, boxes, partner=torch.tensor([2, 1, 0]))
    assert (reverse[0, :2] == 2).all() and (reverse[1] == 1).all()
