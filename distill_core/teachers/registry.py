"""Pick and load the teacher a config names."""
from __future__ import annotations

import torch

from ..config import Config, TeacherSection, choices
from ..errors import ConfigError
from .base import Teacher

DTYPES = {name: getattr(torch, name) for name in choices(TeacherSection, "dtype")}


def load_teacher(cfg: Config, device: torch.device | str = "cpu") -> Teacher:
    """The frozen teacher of a resolved config, on ``device``."""
    t = cfg.teacher
    dtype = DTYPES[t.dtype]
    if t.family == "builtin":
        from .builtin import BuiltinTeacher
        teacher: Teacher = BuiltinTeacher(t.path, shift=t.shift, dtype=dtype, kind=t.builtin)
    else:
        try:
            from . import diffusers_teachers
        except ImportError as e:  # pragma: no cover - present once the real-teacher adapters land
            raise ConfigError(f"teacher.family = {t.family!r} is not available in this build ({e})") from None
        teacher = diffusers_teachers.load(cfg, dtype)
    teacher.network.to(device)
    return teacher
