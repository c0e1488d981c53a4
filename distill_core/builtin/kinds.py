"""The built-in teachers, written once: which data each one draws and where its weights are.

Light on purpose (no torch): the config reads the names for ``teacher.builtin``'s choices.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class BuiltinKind:
    label: str  # how the wizard and docs name it
    teacher_file: str  # in builtin/weights/
    image_size: int  # pixels (square)
    module: str  # the data module under distill_core.builtin: prompts, classes, image format
    defaults: dict = field(default_factory=dict)  # Family fields this teacher sets apart from the family's (CFG, lr)


KINDS: dict[str, BuiltinKind] = {
    "shapes": BuiltinKind("coloured shapes, 16x16 RGB, 8 exactly known modes per prompt",
                          "shapes_teacher.safetensors", 16, "shapes"),
    "digits": BuiltinKind("handwritten digits (scikit-learn), 8x8 grey", "digits_teacher.safetensors", 8, "digits"),
}
BuiltinName = Literal[tuple(KINDS)]  # type: ignore[valid-type]
DEFAULT_KIND = "shapes"
