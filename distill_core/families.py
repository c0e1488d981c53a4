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
    spacing: str = "timesteps"  # where a flow sampler's levels sit before the shift (schedules.FlowSchedule)


FAMILIES: dict[str, Family] = {
    # The default built-in teacher's values (shapes); the digits teacher's own differences are in builtin/kinds.py.
    # Shapes: strong updates (lr 1e-3, batch 32), where plain DMD loses modes (docs/investigation.md, shapes).
    "builtin": Family("Built-in teacher: shapes or digits (runs on a CPU)", guidance_scale=2.0, num_steps=30, lr=1e-3,
                      batch_size=32, resolution=16, prediction_type="flow", shift=1.0, comfy_native=False),
    "sd3": Family("SD3 / SD3.5 (local diffusers folder)", guidance_scale=3.5, num_steps=30, lr=1e-5, batch_size=4,
                  resolution=1024, prediction_type="flow", shift=3.0, comfy_native=True),
    "sdxl": Family("SDXL (local diffusers folder)", guidance_scale=8.0, num_steps=50, lr=1e-5, batch_size=4,
                   resolution=1024, prediction_type="epsilon", shift=None, comfy_native=True),
    # FLUX.2 [klein] base 4B / 9B (diffusers 0.42.1 Flux2KleinPipeline): CFG 4.0 and 50 steps are __call__'s
    # defaults, 1024 px its default_sample_size 128 x VAE factor 8; lr and batch as SD3 (paper Sec. 4). Its
    # scheduler shifts dynamically, mu = compute_empirical_mu(image tokens, steps); at 1024 px and 50 steps
    # mu = 2.02 (ComfyUI's Flux2 default "shift"), i.e. the static shift exp(2.02) = 7.56 written here.
    # Its sigmas before the shift are linspace(1, 1/n, n) (the pipeline passes them): spacing "linear".
    "flux2": Family("FLUX.2 [klein] base 4B / 9B (local diffusers folder)", guidance_scale=4.0, num_steps=50,
                    lr=1e-5, batch_size=4, resolution=1024, prediction_type="flow", shift=7.56, comfy_native=True,
                    spacing="linear"),
}
# The names as a type: teacher.family's annotation, checked at run time (config.choices reads it).
FamilyName = Literal[tuple(FAMILIES)]  # type: ignore[valid-type]
COMFY_NATIVE = tuple(name for name, f in FAMILIES.items() if f.comfy_native)


def family(name: str) -> Family:
    """The family called ``name``; unknown names are refused with the known ones."""
    if name not in FAMILIES:
        raise ConfigError(f"family {name!r} is not one of {', '.join(FAMILIES)}")
    return FAMILIES[name]
