"""The built-in teachers, written once: which data each one draws and where its weights are.

Light on purpose (no torch): the config reads the names for ``teacher.builtin``'s choices.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Literal


@dataclass(frozen=True)
class BuiltinKind:
    label: str  # how the wizard and docs name it
    teacher_file: str  # in builtin/weights/
    image_size: int  # pixels (square)
    module: str  # the data module under distill_core.builtin: prompts, classes, image format
    # Family fields where this teacher differs from the family's values (which are the default teacher's)
    defaults: dict = field(default_factory=dict)


KINDS: dict[str, BuiltinKind] = {
    "shapes": BuiltinKind("coloured shapes, 16x16 RGB, 8 exactly known modes per prompt",
                          "shapes_teacher.safetensors", 16, "shapes"),
    "digits": BuiltinKind("handwritten digits (scikit-learn), 8x8 grey", "digits_teacher.safetensors", 8, "digits",
                          defaults={"guidance_scale": 2.0, "lr": 1e-4, "fake_lr": None, "batch_size": 64,
                                    "diversity_weight": 0.05, "max_steps": 400}),
}
BuiltinName = Literal[tuple(KINDS)]  # type: ignore[valid-type]
DEFAULT_KIND = "shapes"


def data_module(kind: str) -> ModuleType:
    """The data module of a built-in teacher: parse_prompt, canonical_prompt, NUM_CLASSES, NULL_LABEL, IMAGE_SIZE."""
    return importlib.import_module(f"{__package__}.{KINDS[kind].module}")
