"""Teachers: the one interface the method and the trainer are written against.

``load_teacher(cfg)`` picks the implementation for ``cfg.family``.
"""
from __future__ import annotations

from .base import Cond, PromptBank, Teacher, cat_cond, index_cond, repeat_cond
from .registry import load_teacher, load_teacher_with_prompts

__all__ = ["Cond", "PromptBank", "Teacher", "cat_cond", "index_cond", "repeat_cond", "load_teacher",
           "load_teacher_with_prompts"]
