"""Pick and load the teacher a config names."""
from __future__ import annotations

import torch

from ..config import Config
from ..errors import ConfigError
from .base import Teacher

FAMILIES = ("builtin", "sd3", "sdxl")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_teacher(cfg: Config, device: torch.device | str = "cpu") -> Teacher:
    """The frozen teacher of a resolved config, on ``device``."""
    t = cfg.teacher
    dtype = DTYPES[t.dtype]
    if t.family == "builtin":
        from .builtin import BuiltinTeacher
        teacher: Teacher = BuiltinTeacher(t.path, shift=t.shift, dtype=dtype)
    elif t.family in ("sd3", "sdxl"):
        try:
            from . import diffusers_teachers
        except ImportError as e:  # pragma: no cover - present once the real-teacher adapters land
            raise ConfigError(f"teacher.family = {t.family!r} is not available in this build ({e})") from None
        teacher = diffusers_teachers.load(cfg, dtype)
    else:
        raise ConfigError(f"teacher.family = {t.family!r} is not one of {', '.join(FAMILIES)}")
    teacher.network.to(device)
    return teacher
