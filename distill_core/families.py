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
    lr: float  # student learning rate (and the fake score's, unless fake_lr)
    fake_lr: float | None  # the fake score's learning rate; None: lr
    diversity_weight: float  # lambda
    max_steps: int  # student updates
    batch_size: int  # per process
    resolution: int  # image size in pixels
    prediction_type: Literal["flow", "epsilon"]
    shift: float | None  # flow shift of the family's default schedule (SD3: its scheduler's); None: VP
    comfy_native: bool  # ComfyUI loads its students as its own MODEL


FAMILIES: dict[str, Family] = {
    # The default built-in teacher's values (shapes); the digits teacher's own differences are in builtin/kinds.py.
    # Shapes: the measured setting E2 of docs/investigation.md, which `dpdmd demo` trains: strong updates (lr 1e-3,
    # batch 32), a fake score at half the student's lr (it lags, so plain DMD loses modes) and lambda 0.5 (the anchor
    # holds DP-DMD's first step against that pull), 200 steps.
    "builtin": Family("Built-in teacher: shapes or digits (runs on a CPU)", guidance_scale=2.0, num_steps=30, lr=1e-3,
                      fake_lr=5e-4, diversity_weight=0.5, max_steps=200, batch_size=32, resolution=16,
                      prediction_type="flow", shift=1.0, comfy_native=False),
    # The paper's (lambda 0.05, one lr for both networks).
    "sd3": Family("SD3 / SD3.5 (local diffusers folder)", guidance_scale=3.5, num_steps=30, lr=1e-5, fake_lr=None,
                  diversity_weight=0.05, max_steps=400, batch_size=4, resolution=1024, prediction_type="flow",
                  shift=3.0, comfy_native=True),
    "sdxl": Family("SDXL (local diffusers folder)", guidance_scale=8.0, num_steps=50, lr=1e-5, fake_lr=None,
                   diversity_weight=0.05, max_steps=400, batch_size=4, resolution=1024, prediction_type="epsilon",
                   shift=None, comfy_native=True),
}
# The names as a type: teacher.family's annotation, checked at run time (config.choices reads it).
FamilyName = Literal[tuple(FAMILIES)]  # type: ignore[valid-type]
COMFY_NATIVE = tuple(name for name, f in FAMILIES.items() if f.comfy_native)


def family(name: str) -> Family:
    """The family called ``name``; unknown names are refused with the known ones."""
    if name not in FAMILIES:
        raise ConfigError(f"family {name!r} is not one of {', '.join(FAMILIES)}")
    return FAMILIES[name]
