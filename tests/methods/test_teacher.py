"""EMA teacher helper (dgcl.md §2, §6.9)."""

import pytest
import torch
from torch import nn

from sparseg.methods.teacher import copy_parameters, create_teacher, ema_decay, ema_update


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())


def test_teacher_is_an_independent_copy_without_gradients():
    student = small_net()
    teacher = create_teacher(student)
    for t, s in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(t, s) and t.data_ptr() != s.data_ptr() and not t.requires_grad
    assert all(p.requires_grad for p in student.parameters())


def test_copy_never_aliases():
    student, teacher = small_net(), create_teacher(small_net())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    copy_parameters(teacher, student)
    for t, s in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(t, s) and t.data_ptr() != s.data_ptr()
    with torch.no_grad():
        next(student.parameters()).add_(1.0)
    assert not torch.equal(next(teacher.parameters()), next(student.parameters()))


def test_ema_averages_parameters_and_leaves_buffers_alone():
    student, teacher = small_net(), create_teacher(small_net())
    with torch.no_grad():
        for p in student.parameters():
            p.fill_(1.0)
        for p in teacher.parameters():
            p.fill_(3.0)
    student[1].running_mean.fill_(5.0)
    teacher[1].running_mean.fill_(-2.0)
    ema_update(teacher, student, 0.75)
    assert all(torch.allclose(t, torch.full_like(t, 0.75 * 3 + 0.25 * 1)) for t in teacher.parameters())
    assert torch.equal(teacher[1].running_mean, torch.full((4,), -2.0))  # buffers: never copied or averaged
    copy_parameters(teacher, student)
    assert torch.equal(teacher[1].running_mean, torch.full((4,), -2.0))


def test_decay_formula_capped_at_momentum():
    # d_i = min(1 - 1/(i - L e0 + 1), mu)
    assert ema_decay(10, 10, 0.999) == 0.0
    assert ema_decay(11, 10, 0.999) == 0.5
    assert ema_decay(13, 10, 0.999) == pytest.approx(0.75)
    assert ema_decay(10_000, 10, 0.999) == 0.999
    with pytest.raises(ValueError):
        ema_decay(5, 10, 0.999)
    with pytest.raises(ValueError):
        ema_update(small_net(), small_net(), 1.5)


def test_mismatched_models_are_refused():
    with pytest.raises(ValueError, match="different parameters"):
        copy_parameters(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))
