import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sparseg.config import EvalConfig
from sparseg.eval import EvalResult, evaluate, format_table

IGNORE = 255


class OneHotModel(nn.Module):
    """Predicts class c where image channel c is 1 (stride 1); records its mode at forward."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.modes_seen = []

    def forward(self, x):
        self.modes_seen.append((self.training, self.bn.training))
        return {"pred": 10 * x[:, :2], "fts": x}


class Stride4Model(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return {"pred": F.avg_pool2d(self.conv(x), 4, ceil_mode=True)}


def item(pred, mask):
    """Image whose channels 0/1 one-hot encode ``pred`` (channel 2 zero), with its mask."""
    pred = torch.tensor(pred)
    image = torch.stack([pred == 0, pred == 1, torch.zeros_like(pred, dtype=torch.bool)]).float()
    return {"image": image, "mask": torch.tensor(mask, dtype=torch.int64)}


# A: class 0 I=3 U=4, class 1 I=0 U=1 (the ignored third column, predicted 1, must not count)
# B: class 0 I=0 U=1, class 1 I=3 U=4. Per-image mIoU 37.5 each; whole set: I=3, U=5 -> 60.
DATASET = [
    item([[0, 0, 1], [0, 0, 1]], [[0, 0, IGNORE], [0, 1, IGNORE]]),
    item([[1, 1], [1, 0]], [[1, 1], [1, 1]]),
]


@pytest.mark.parametrize(
    "cfg",
    [
        EvalConfig(),
        EvalConfig(mode="center_crop", crop_size=(5, 4)),
        EvalConfig(mode="sliding_window", crop_size=(2, 2), stride=(1, 1)),
        EvalConfig(flip=True, scales=[1.0]),
    ],
)
def test_expected_miou_on_stand_in_dataset(cfg):
    result = evaluate(OneHotModel(), DATASET, cfg, 2, "cpu")
    assert result.miou == pytest.approx(60.0)
    assert result.iou == pytest.approx([60.0, 60.0])
    assert result.num_images == 2
    assert torch.equal(result.confusion, torch.tensor([[3, 0], [2, 3]]))
    assert result.pixel_accuracy == pytest.approx(6 / 8 * 100)
    assert result.accuracy == pytest.approx([100.0, 60.0])  # 3 of 3, 3 of 5 labeled pixels
    assert result.mean_accuracy == pytest.approx(80.0)


def test_restores_each_module_mode():
    model = OneHotModel()
    model.train()
    model.bn.eval()  # e.g. frozen BN inside a training model
    evaluate(model, DATASET, EvalConfig(), 2, "cpu")
    assert model.modes_seen == [(False, False), (False, False)]
    assert model.training and not model.bn.training

    model.eval()
    evaluate(model, DATASET, EvalConfig(), 2, "cpu")
    assert not model.training


def test_restores_mode_after_an_error():
    model = OneHotModel().train()
    bad = [{"image": torch.zeros(3, 2, 2), "mask": torch.full((2, 2), 7)}]
    with pytest.raises(ValueError, match=r"\[7\]"):
        evaluate(model, bad, EvalConfig(), 2, "cpu")
    assert model.training and model.bn.training


def test_indices_select_this_process_share():
    result = evaluate(OneHotModel(), DATASET, EvalConfig(), 2, "cpu", indices=[1])
    assert result.num_images == 1
    assert result.miou == pytest.approx(37.5)


def test_empty_class_under_all_and_present():
    three = [{"image": d["image"], "mask": d["mask"]} for d in DATASET]

    class ThreeClass(OneHotModel):
        def forward(self, x):
            return {"pred": 10 * x}

    all_ = evaluate(ThreeClass(), three, EvalConfig(miou_over="all"), 3, "cpu")
    present = evaluate(ThreeClass(), three, EvalConfig(miou_over="present"), 3, "cpu")
    assert math.isnan(all_.iou[2])
    assert all_.miou == pytest.approx((0.6 + 0.6 + 0) / 3 * 100)
    assert present.miou == pytest.approx(60.0)


def test_stride4_model_counts_every_labelled_pixel():
    torch.manual_seed(1)
    masks = [torch.randint(0, 2, (9, 14)), torch.randint(0, 2, (6, 5))]
    masks[0][0, :3] = IGNORE
    dataset = [{"image": torch.rand(3, *m.shape), "mask": m} for m in masks]
    result = evaluate(Stride4Model(), dataset, EvalConfig(), 2, torch.device("cpu"), progress=True)
    assert result.confusion.sum() == 9 * 14 - 3 + 6 * 5


def test_all_reduce_under_a_single_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        result = evaluate(OneHotModel(), DATASET, EvalConfig(), 2, "cpu")
    finally:
        dist.destroy_process_group()
    assert result.miou == pytest.approx(60.0) and result.num_images == 2


def test_crop_modes_need_a_crop_size():
    with pytest.raises(ValueError, match="crop_size"):
        evaluate(OneHotModel(), DATASET, EvalConfig(mode="center_crop"), 2, "cpu")


def test_to_dict_is_json_and_table_ends_with_miou():
    result = EvalResult(
        miou=63.2149,
        iou=[80.0, 46.4298, float("nan")],
        class_names=["road", "car", "bike"],
        confusion=torch.zeros(3, 3, dtype=torch.int64),
        miou_over="present",
        num_images=4,
        mode="whole image, single scale",
        pixel_accuracy=90.0,
    )
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["iou"] == {"road": 80.0, "car": 46.4298, "bike": None}
    assert data["miou"] == 63.2149 and data["num_images"] == 4

    text = format_table(result)
    assert text.splitlines()[-1] == "mIoU: 63.21"
    assert "\x1b[" not in text
    assert "46.43" in text and "n/a" in text and "road" in text


def test_table_from_evaluate():
    result = evaluate(OneHotModel(), DATASET, EvalConfig(), 2, "cpu", class_names=["bg", "fg"])
    assert result.mode == "whole image, single scale"
    lines = format_table(result).splitlines()
    assert lines[-1] == "mIoU: 60.00"
    assert lines[-2] == "pixel accuracy: 75.00, mean accuracy: 80.00"
    assert any("bg" in line and "60.00" in line and "100.00" in line for line in lines)  # IoU 60, Acc 100
    assert json.loads(json.dumps(result.to_dict()))["mean_accuracy"] == pytest.approx(80.0)
    assert any("bg" in line and "60.00" in line for line in lines)
