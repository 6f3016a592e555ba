import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseg.config import EvalConfig
from sparseg.eval import center_crop, default_stride, predict_probs

K = 3


class PixelModel(nn.Module):
    """Per-pixel 1x1 conv at stride 1: translation- and flip-equivariant."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, K, 1)

    def forward(self, x):
        return {"pred": 5 * self.conv(x)}


class Stride4Model(PixelModel):
    def forward(self, x):
        logits = F.avg_pool2d(self.conv(x), 4, ceil_mode=True)
        return {"pred": logits, "fts": logits}


class RecordingModel(nn.Module):
    """Records every input it sees; predicts from channel 0."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return {"pred": x[:, :1].repeat(1, K, 1, 1) * torch.arange(K).view(1, K, 1, 1)}


def position_image(height, width):
    """Channel 0 = 1 (real pixel), channel 1 = row + 1, channel 2 = column + 1."""
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1).expand(height, width)
    cols = torch.arange(width, dtype=torch.float32).view(1, -1).expand(height, width)
    return torch.stack([torch.ones(height, width), rows + 1, cols + 1])[None]


def windows_seen(model):
    """(top, left, height, width) of each window, decoded from its top-left pixel."""
    return [(int(x[0, 1, 0, 0]) - 1, int(x[0, 2, 0, 0]) - 1, *x.shape[-2:]) for x in model.inputs]


def test_whole_upsamples_stride4_logits_to_input_size():
    image = torch.rand(2, 3, 13, 18)
    probs = predict_probs(Stride4Model(), image, K, EvalConfig())
    assert probs.shape == (2, K, 13, 18)
    assert torch.allclose(probs.sum(1), torch.ones(2, 13, 18))


def test_wrong_number_of_classes_is_an_error():
    with pytest.raises(ValueError, match="predicts 3 classes, expected 5"):
        predict_probs(PixelModel(), torch.rand(1, 3, 8, 8), 5, EvalConfig())


def test_sliding_window_equals_whole_for_position_independent_model():
    image = torch.rand(1, 3, 13, 17)
    model = PixelModel()
    whole = predict_probs(model, image, K, EvalConfig())
    cfg = EvalConfig(mode="sliding_window", crop_size=(8, 6), stride=(5, 4))
    sliding = predict_probs(model, image, K, cfg)
    assert torch.allclose(sliding, whole, atol=1e-6)


def test_sliding_window_grid_sizes_not_divisible_by_stride():
    model = RecordingModel()
    cfg = EvalConfig(mode="sliding_window", crop_size=(8, 6), stride=(5, 4))
    probs = predict_probs(model, position_image(13, 17), K, cfg)
    # rows: starts 0, then 5 = 13 - 8 (snapped); columns: 0, 4, 8, then 11 = 17 - 6 (snapped)
    expected = [(top, left, 8, 6) for top in (0, 5) for left in (0, 4, 8, 11)]
    assert windows_seen(model) == expected
    count = torch.zeros(13, 17)
    for top, left, h, w in expected:
        count[top : top + h, left : left + w] += 1
    assert count.min() >= 1
    # RecordingModel's output is constant over the image, so the count-weighted average is too
    assert torch.allclose(probs, predict_probs(RecordingModel(), position_image(13, 17), K, EvalConfig()))


def test_sliding_window_default_stride_is_two_thirds_rounded_up():
    assert default_stride((769, 801)) == (513, 534)
    model = RecordingModel()
    predict_probs(model, position_image(20, 9), K, EvalConfig(mode="sliding_window", crop_size=(10, 9)))
    # stride ceil(20 / 3) = 7: rows 0, 7, then 10 = 20 - 10; one column (the window fits)
    assert [w[:2] for w in windows_seen(model)] == [(0, 0), (7, 0), (10, 0)]


def test_sliding_window_pads_an_image_smaller_than_the_window():
    model = RecordingModel()
    image = position_image(5, 7)
    predict_probs(model, image, K, EvalConfig(mode="sliding_window", crop_size=(8, 9)))
    (window,) = model.inputs
    assert window.shape == (1, 3, 8, 9)
    assert torch.equal(window[..., :5, :7], image)
    assert window[..., 5:, :].abs().sum() == 0 and window[..., 7:].abs().sum() == 0

    pixel = PixelModel()
    image = torch.rand(1, 3, 5, 7)
    cfg = EvalConfig(mode="sliding_window", crop_size=(8, 9))
    sliding = predict_probs(pixel, image, K, cfg)
    assert sliding.shape == (1, K, 5, 7)
    assert torch.allclose(sliding, predict_probs(pixel, image, K, EvalConfig()), atol=1e-6)


def test_flip_with_flip_equivariant_model_equals_whole():
    image = torch.rand(1, 3, 9, 11)
    model = PixelModel()
    whole = predict_probs(model, image, K, EvalConfig())
    assert torch.allclose(predict_probs(model, image, K, EvalConfig(flip=True)), whole, atol=1e-6)
    cfg = EvalConfig(mode="sliding_window", crop_size=(6, 6), flip=True)
    assert torch.allclose(predict_probs(model, image, K, cfg), whole, atol=1e-6)


def test_flipped_pass_is_flipped_back():
    class ColumnModel(nn.Module):
        def forward(self, x):
            cols = torch.arange(x.shape[-1], dtype=x.dtype).expand(x.shape[0], 1, *x.shape[-2:])
            return {"pred": torch.cat([cols, torch.zeros_like(cols)], 1)}

    image = torch.rand(1, 3, 2, 4)
    plain = predict_probs(ColumnModel(), image, 2, EvalConfig())
    flipped = predict_probs(ColumnModel(), image, 2, EvalConfig(flip=True))
    assert torch.allclose(flipped, (plain + plain.flip(-1)) / 2)


def test_scales_resize_input_and_average_back():
    model = RecordingModel()
    cfg = EvalConfig(scales=[0.5, 1.25], flip=True)
    probs = predict_probs(model, torch.rand(1, 3, 10, 15), K, cfg)
    # 0.5 * 15 = 7.5 and 1.25 * 10 = 12.5 round half up; one plain and one flipped pass per scale
    assert [tuple(x.shape[-2:]) for x in model.inputs] == [(5, 8), (5, 8), (13, 19), (13, 19)]
    assert probs.shape == (1, K, 10, 15)

    constant = torch.tensor([0.2, 0.7, 0.4]).view(1, 3, 1, 1).expand(1, 3, 10, 15)
    pixel = PixelModel()
    whole = predict_probs(pixel, constant, K, EvalConfig())
    cfg = EvalConfig(scales=[0.5, 0.75, 1.0, 1.5], flip=True)
    assert torch.allclose(predict_probs(pixel, constant, K, cfg), whole, atol=1e-6)


def test_runs_under_inference_mode():
    probs = predict_probs(Stride4Model(), torch.rand(1, 3, 8, 8), K, EvalConfig())
    assert probs.is_inference() and not probs.requires_grad


def test_center_crop_pads_image_with_0_and_mask_with_255():
    image = torch.ones(3, 4, 6)
    image[0] = torch.arange(6, dtype=torch.float32)  # column index in channel 0
    mask = torch.zeros(4, 6, dtype=torch.int64)
    cropped_image, cropped_mask = center_crop(image, mask, (7, 4))
    assert cropped_image.shape == (3, 7, 4) and cropped_mask.shape == (7, 4)
    # height 4 -> 7: pad 1 row on top, 2 at the bottom; width 6 -> 4: columns 1..4
    assert cropped_mask[:, 0].tolist() == [255, 0, 0, 0, 0, 255, 255]
    assert (cropped_image[:, [0, 5, 6]] == 0).all()
    assert cropped_image[0, 1].tolist() == [1, 2, 3, 4]
    assert (cropped_image[1:, 1:5] == 1).all()


def test_sliding_window_needs_a_crop_size():
    with pytest.raises(ValueError, match="crop_size"):
        predict_probs(PixelModel(), torch.rand(1, 3, 8, 8), K, EvalConfig(mode="sliding_window"))


def test_invalid_scales_and_stride():
    with pytest.raises(ValueError, match="scales"):
        EvalConfig(scales=[])
    with pytest.raises(ValueError, match="stride"):
        EvalConfig(mode="sliding_window", crop_size=(4, 4), stride=(0, 2))
    # inference checks them too, for configs built without validation
    unchecked = EvalConfig.model_construct(scales=[], mode="whole", flip=False)
    with pytest.raises(ValueError, match="scales"):
        predict_probs(PixelModel(), torch.rand(1, 3, 8, 8), K, unchecked)
    unchecked = EvalConfig.model_construct(mode="sliding_window", crop_size=(4, 4), stride=(0, 2), scales=[1.0],
                                           flip=False)
    with pytest.raises(ValueError, match="stride"):
        predict_probs(PixelModel(), torch.rand(1, 3, 8, 8), K, unchecked)
