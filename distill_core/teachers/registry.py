"""Pick and load the teacher a config names."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..config import Config, TeacherSection, choices
from ..progress import phase
from .base import PromptBank, Teacher

DTYPES = {name: getattr(torch, name) for name in choices(TeacherSection, "dtype")}


def load_teacher(cfg: Config, device: torch.device | str = "cpu") -> Teacher:
    """The frozen teacher of a resolved config, on ``device``."""
    teacher = _build(cfg)
    teacher.network.to(device)
    return teacher


def load_teacher_with_prompts(cfg: Config, device: torch.device | str,
                              prompts: Sequence[str]) -> tuple[Teacher, PromptBank]:
    """The teacher on ``device`` and its encoded, cached training prompts.

    The prompts are encoded on ``device`` while the denoiser still waits on the
    CPU, and the text encoders are freed before it moves: the two never share
    the accelerator (SD3.5: 11 GB of text encoders, 5 GB of transformer).
    """
    with phase(f"loading the {cfg.teacher.family} teacher"):
        teacher = _build(cfg)
    bank = teacher.prompt_bank(prompts, device)  # a diffusers teacher's encoding is a phase of its own
    with phase(f"moving the teacher to {device}"):
        teacher.network.to(device)
    return teacher, bank


def _build(cfg: Config) -> Teacher:
    """The frozen teacher, on the CPU."""
    t = cfg.teacher
    dtype = DTYPES[t.dtype]
    if t.family == "builtin":
        from .builtin import BuiltinTeacher
        return BuiltinTeacher(t.path, shift=t.shift, dtype=dtype, kind=t.builtin)
    from .diffusers_base import teacher_class

    teacher = teacher_class(t.family)(cfg, dtype)
    if t.quantize == "fp8":  # on the CPU, a layer at a time, before the network moves to the accelerator
        from ..training.fp8 import quantize_linears
        quantize_linears(teacher.network)
    return teacher
