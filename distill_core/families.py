"""The teacher families and what differs between them, written once.

The config's defaults, the teachers, the ComfyUI nodes, the wizard and the CLI
all read this table; it imports nothing heavy, so every one of them can.
Defaults follow the paper (Sec. 4 / Appendix C); the built-in teacher's were
chosen on it (docs/results.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import ConfigError


@dataclass(frozen=True)
class Family:
    label: str  # how the wizard names it
    guidance_scale: float  # teacher CFG (baked into the student)
    num_steps: int  # the teacher's own sampling steps (anchor rollout, reference samples)
    lr: float  # student and fake-score learning rate
    batch_size: int  # per process
    resolution: int  # image size in pixels
    prediction_type: Literal["flow", "epsilon"]
    shift: float | None  # flow shift of the family's default schedule (SD3: its scheduler's); None: VP
    comfy_native: bool  # ComfyUI loads its students as its own MODEL


FAMILIES: dict[str, Family] = {
    # The default built-in teacher's values (shapes); the digits teacher's own differences are in builtin/kinds.py.
    # Shapes: strong updates (lr 1e-3, batch 32), where plain DMD loses modes (docs/investigation.md, shapes).
    "builtin": Family("Built-in teacher: shapes or digits (runs on a CPU)", guidance_scale=2.0, num_steps=30, lr=1e-3,
                      batch_size=32, resolution=16, prediction_type="flow", shift=1.0, comfy_native=False),
    "sd3": Family("SD3 / SD3.5 (local diffusers folder)", guidance_scale=3.5, num_steps=30, lr=1e-5, batch_size=4,
                  resolution=1024, prediction_type="flow", shift=3.0, comfy_native=True),
    "sdxl": Family("SDXL (local diffusers folder)", guidance_scale=8.0, num_steps=50, lr=1e-5, batch_size=4,
                   resolution=1024, prediction_type="epsilon", shift=None, comfy_native=True),
}
# The names as a type: teacher.family's annotation, checked at run time (config.choices reads it).
FamilyName = Literal[tuple(FAMILIES)]  # type: ignore[valid-type]
COMFY_NATIVE = tuple(name for name, f in FAMILIES.items() if f.comfy_native)


def family(name: str) -> Family:
    """The family called ``name``; unknown names are refused with the known ones."""
    if name not in FAMILIES:
        raise ConfigError(f"family {name!r} is not one of {', '.join(FAMILIES)}")
    return FAMILIES[name]
