"""The hybrid sampler (distill_core.hybrid): the teacher's first k CFG steps, then the student from t_k."""
from __future__ import annotations

import copy

import pytest
import torch

from distill_core.errors import ConfigError
from distill_core.hybrid import Leg, hybrid_legs, sample_legs
from distill_core.method import ddim_sample, teacher_anchor
from distill_core.sampling import grid_inputs, sample_grid
from distill_core.teachers.base import index_cond
from distill_core.teachers.builtin import BuiltinTeacher

PROMPTS = ["a handwritten 3", "a handwritten 7"]
SEEDS = [4, 5]


@pytest.fixture(scope="module")
def teacher():
    return BuiltinTeacher()


@pytest.fixture(scope="module")
def student_net(teacher):
    """Any network of the teacher's architecture will do as the student: a perturbed copy of the teacher."""
    torch.manual_seed(0)
    net = copy.deepcopy(teacher.network)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def test_legs_hand_over_at_the_teachers_level_after_k_steps(teacher, student_net):
    t_levels, s_levels = teacher.teacher_levels(30), teacher.student_levels(4)
    first, second = hybrid_legs(teacher.network, t_levels, 2.0, 5, student_net, s_levels)
    assert first.levels == t_levels[:6] and first.guidance == 2.0 and first.nfe == 10
    assert second.levels == [t_levels[5], *[v for v in s_levels if v < t_levels[5]]] and second.guidance == 1.0
    assert second.levels[-1] == s_levels[-1] and second.nfe == second.steps == len(second.levels) - 1
    first, second = hybrid_legs(teacher.network, t_levels, 2.0, 5, student_net, s_levels, handover=s_levels[1])
    assert first.levels == [*t_levels[:5], s_levels[1]] and second.levels == s_levels[1:]


@pytest.mark.parametrize("k, handover, message", [
    (0, None, "k = 0"), (30, None, "k = 30"), (5, 0.99, "handover = 0.99"), (5, -0.1, "handover = -0.1"),
])
def test_bad_k_or_handover_is_refused_with_the_field(teacher, student_net, k, handover, message):
    with pytest.raises(ConfigError, match=message):
        hybrid_legs(teacher.network, teacher.teacher_levels(30), 2.0, k, student_net, teacher.student_levels(4),
                    handover)


def test_hybrid_is_the_teacher_anchor_then_the_student(teacher, student_net):
    """The state handed over is DP-DMD's anchor x_{t_k} (method.teacher_anchor); the student samples on from it."""
    t_levels, s_levels, k = teacher.teacher_levels(30), teacher.student_levels(4), 5
    legs = hybrid_legs(teacher.network, t_levels, 2.0, k, student_net, s_levels)
    cond, noise = grid_inputs(teacher, PROMPTS, SEEDS)
    null = {key: v.expand(noise.shape[0], *v.shape[1:]) for key, v in teacher.null_condition().items()}
    x_tk, t_k = teacher_anchor(lambda x, lv: teacher.predict_cfg(teacher.network, x, lv, cond, null, 2.0),
                               teacher.schedule, noise, t_levels, k)
    expected = ddim_sample(lambda x, lv: teacher.predict(student_net, x, lv, index_cond(cond, torch.arange(4))),
                           teacher.schedule, x_tk, [t_k, *legs[1].levels[1:]])
    steps = []
    out = sample_legs(teacher, legs, PROMPTS, SEEDS, on_step=lambda i, x0: steps.append(i))
    assert torch.allclose(out, expected, atol=1e-5), (out - expected).abs().max()
    assert steps == list(range(legs[0].steps + legs[1].steps))
    assert not torch.allclose(out, sample_grid(teacher, student_net, PROMPTS, SEEDS, s_levels), atol=1e-3)


def test_one_leg_is_plain_sampling(teacher):
    levels = teacher.student_levels(4)
    assert torch.equal(sample_legs(teacher, [Leg(teacher.network, levels)], PROMPTS, SEEDS),
                       sample_grid(teacher, teacher.network, PROMPTS, SEEDS, levels))
