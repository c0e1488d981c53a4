"""The hybrid sampler: the teacher's first k steps with CFG, then the student from the level they reach.

DP-DMD trains a student's first step towards the teacher's anchor x_{t_k}, the
state after k CFG steps of the teacher's own schedule (method.teacher_anchor).
Running those k teacher steps for real and handing their state to the student at
t_k keeps the teacher's layout for each seed at the cost of 2k teacher network
evaluations (k at cfg 1); the student's remaining steps below t_k add the rest.
For a plain DMD student, whose first step collapses layouts, this buys variety back.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError
from .sampling import grid_inputs, sample_latents
from .teachers.base import Teacher


@dataclass(frozen=True)
class Leg:
    """One part of a sampling run: ``net`` stepped through ``levels`` with CFG ``guidance``."""
    net: nn.Module
    levels: list[float]
    guidance: float = 1.0

    @property
    def steps(self) -> int:
        return len(self.levels) - 1

    @property
    def nfe(self) -> int:
        """Network evaluations per image (CFG runs the network twice a step)."""
        return self.steps * (1 if self.guidance == 1.0 else 2)


def hybrid_legs(teacher_net: nn.Module, teacher_levels: list[float], guidance: float, k: int,
                student_net: nn.Module, student_levels: list[float], handover: float | None = None) -> list[Leg]:
    """The teacher's first k steps of ``teacher_levels`` (its own schedule), then the student.

    The hand-over level defaults to the teacher's level after k steps, t_k (the level the
    student's first step was trained to reach); a given ``handover`` replaces t_k as the
    teacher's k-th target. The student continues with its own levels below it.
    """
    if not 1 <= k < len(teacher_levels) - 1:
        raise ConfigError(f"k = {k}: the teacher's steps before the hand-over must lie in 1..{len(teacher_levels) - 2}")
    level = teacher_levels[k] if handover is None else handover
    if not 0.0 < level < teacher_levels[k - 1]:
        raise ConfigError(f"handover = {level:g} must lie between 0 and the teacher's level after {k - 1} steps "
                          f"({teacher_levels[k - 1]:g}); 0 = the teacher's level after k steps")
    rest = [v for v in student_levels if v < level]  # always ends at the student's clean level 0
    return [Leg(teacher_net, [*teacher_levels[:k], level], guidance), Leg(student_net, [level, *rest])]


@torch.no_grad()
def sample_legs(teacher: Teacher, legs: Sequence[Leg], prompts: Sequence[str], seeds: Sequence[int],
                on_step=None) -> torch.Tensor:
    """Latents for every (prompt, seed), prompt-major, each leg starting where the last one stopped.

    ``on_step(i, x0_hat)`` counts steps across the legs.
    """
    cond, x = grid_inputs(teacher, prompts, seeds)
    done = 0
    for leg in legs:
        step = None if on_step is None else (lambda i, x0, done=done: on_step(done + i, x0))
        x = sample_latents(teacher, leg.net, cond, x, leg.levels, leg.guidance, on_step=step)
        done += leg.steps
    return x
