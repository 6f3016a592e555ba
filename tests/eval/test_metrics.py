import math

import pytest
import torch

from sparseg.eval import ConfusionMatrix

# 3x3 example, K = 4: the bottom-left pixel is ignored (its prediction 0 must not count) and
# class 3 appears in neither labels nor predictions.
TARGET = torch.tensor([[0, 0, 1], [1, 1, 2], [255, 2, 2]])
PRED = torch.tensor([[0, 1, 1], [1, 2, 2], [0, 2, 0]])


def test_hand_computed_3x3():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    # counted (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (1,2) (2,2) (2,2) (2,0)
    expected = torch.tensor([[1, 1, 0, 0], [0, 2, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]])
    assert torch.equal(cm.matrix, expected)
    # class 0: I = 1, U = 2 pred + 2 gt - 1 = 3; class 1: I = 2, U = 3 + 3 - 2 = 4;
    # class 2: I = 2, U = 3 + 3 - 2 = 4; class 3: U = 0
    iou = cm.iou()
    assert iou[:3].tolist() == pytest.approx([1 / 3, 2 / 4, 2 / 4])
    assert math.isnan(iou[3])
    assert cm.miou("all") == pytest.approx((1 / 3 + 0.5 + 0.5 + 0) / 4 * 100)  # 33.33
    assert cm.miou("present") == pytest.approx((1 / 3 + 0.5 + 0.5) / 3 * 100)  # 44.44
    assert cm.pixel_accuracy() == pytest.approx(5 / 8 * 100)


def test_dataset_wide_sums_differ_from_mean_of_per_image_iou():
    # image A: class 0 I=3 U=4, class 1 I=0 U=1 -> mIoU 37.5
    target_a, pred_a = torch.tensor([[0, 0], [0, 1]]), torch.tensor([[0, 0], [0, 0]])
    # image B: class 0 I=0 U=1, class 1 I=3 U=4 -> mIoU 37.5
    target_b, pred_b = torch.tensor([[1, 1], [1, 1]]), torch.tensor([[1, 1], [1, 0]])
    per_image = []
    for pred, target in [(pred_a, target_a), (pred_b, target_b)]:
        single = ConfusionMatrix(2)
        single.update(pred, target)
        per_image.append(single.miou())
    assert per_image == pytest.approx([37.5, 37.5])

    cm = ConfusionMatrix(2)
    cm.update(pred_a, target_a)
    cm.update(pred_b, target_b)
    # whole set: class 0 I=3, U=5 pred + 3 gt - 3 = 5; class 1 I=3, U=3 + 5 - 3 = 5
    assert cm.iou().tolist() == pytest.approx([0.6, 0.6])
    assert cm.miou() == pytest.approx(60.0)


def test_out_of_range_target_names_the_values():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 5], [7, 255]])
    with pytest.raises(ValueError, match=r"\[5, 7\]"):
        cm.update(torch.zeros_like(target), target)


def test_shape_mismatch_and_bad_over():
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="present"):
        cm.miou("some")


def test_empty_matrix():
    cm = ConfusionMatrix(2)
    assert cm.miou("all") == 0.0
    assert math.isnan(cm.miou("present"))
    assert math.isnan(cm.pixel_accuracy())


def test_all_reduce_without_distributed_is_a_no_op():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    before = cm.matrix.clone()
    assert cm.all_reduce() is cm
    assert torch.equal(cm.matrix, before)


def test_class_and_mean_accuracy():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)  # rows (gt): [1,1,0,0], [0,2,1,0], [1,0,2,0], [0,0,0,0]
    assert cm.class_accuracy()[:3].tolist() == pytest.approx([1 / 2, 2 / 3, 2 / 3])
    assert math.isnan(cm.class_accuracy()[3])  # no labeled pixel: not part of the mean
    assert cm.mean_accuracy() == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3 * 100)
    assert math.isnan(ConfusionMatrix(2).mean_accuracy())
