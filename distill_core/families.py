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
    spacing: str = "timesteps"  # where a flow sampler's levels sit before the shift (schedules.FlowSchedule)
    # the family's own CFG value is guidance_scale - guidance_offset: Z-Image's pipeline combines pos + w (pos - neg),
    # i.e. the standard neg + (1 + w) (pos - neg) this project (and its configs) writes
    guidance_offset: float = 0.0
    guidance_name: str = "guidance_scale"  # what the family's own pipeline calls its CFG argument
    cfg_extras: bool = False  # its teacher takes teacher.cfg_truncation / cfg_normalization (as its pipeline does)
    # how the family's own scheduler sets the shift where it is not one static number ('' where it is)
    shift_note: str = ""


FAMILIES: dict[str, Family] = {
    # The default built-in teacher's values (shapes); the digits teacher's own differences are in builtin/kinds.py.
    # Shapes: what `dpdmd demo` trains and docs/results.md measures over 5 seeds (docs/investigation.md, issue 28):
    # strong updates (lr 1e-3, batch 32, 200 steps), lambda 0.5 (E2's), and a fair DMD: the fake score at the
    # student's lr with 5 updates per student update (DMD2's two time-scale rule; E2's fake score at half the lr
    # lagged on purpose, which issue 28 called a handicapped baseline).
    "builtin": Family("Built-in teacher: shapes or digits (runs on a CPU)", guidance_scale=2.0, num_steps=30, lr=1e-3,
                      fake_lr=None, diversity_weight=0.5, max_steps=200, batch_size=32, resolution=16,
                      prediction_type="flow", shift=1.0, comfy_native=False),
    # The paper's (lambda 0.05, one lr for both networks).
    "sd3": Family("SD3 / SD3.5 (local diffusers folder)", guidance_scale=3.5, num_steps=30, lr=1e-5, fake_lr=None,
                  diversity_weight=0.05, max_steps=400, batch_size=4, resolution=1024, prediction_type="flow",
                  shift=3.0, comfy_native=True),
    "sdxl": Family("SDXL (local diffusers folder)", guidance_scale=8.0, num_steps=50, lr=1e-5, fake_lr=None,
                   diversity_weight=0.05, max_steps=400, batch_size=4, resolution=1024, prediction_type="epsilon",
                   shift=None, comfy_native=True),
    # Z-Image (base, 6.15 B; Tongyi-MAI). From diffusers 0.42.1's ZImagePipeline.__call__: guidance_scale=5.0 (its
    # pos + 5 (pos - neg) = standard CFG 6), num_inference_steps=50, height = width = 1024, sigmas =
    # linspace(1, 1/N, N) through a FlowMatchEulerDiscreteScheduler (flow / velocity, negated by the pipeline).
    # Shift 3.0: ComfyUI 0.33.0 supported_models.ZImage sampling_settings (and Z-Image-Turbo's scheduler config).
    # lr and batch: the SD3 row's (the paper's settings for a transformer teacher).
    "zimage": Family("Z-Image (local diffusers folder)", guidance_scale=6.0, num_steps=50, lr=1e-5, fake_lr=None,
                     diversity_weight=0.05, max_steps=400, batch_size=4,
                     resolution=1024, prediction_type="flow", shift=3.0, comfy_native=True, spacing="linear",
                     guidance_offset=1.0, cfg_extras=True),
    # FLUX.2 [klein] base 4B / 9B (diffusers 0.42.1 Flux2KleinPipeline): CFG 4.0 and 50 steps are __call__'s
    # defaults, 1024 px its default_sample_size 128 x VAE factor 8; lr and batch as SD3 (paper Sec. 4). Its
    # scheduler shifts dynamically, mu = compute_empirical_mu(image tokens, steps); at 1024 px and 50 steps
    # mu = 2.02 (ComfyUI's Flux2 default "shift"), i.e. the static shift exp(2.02) = 7.56 written here.
    # Its sigmas before the shift are linspace(1, 1/n, n) (the pipeline passes them): spacing "linear".
    "flux2": Family("FLUX.2 [klein] base 4B / 9B (local diffusers folder)", guidance_scale=4.0, num_steps=50,
                    lr=1e-5, fake_lr=None, diversity_weight=0.05, max_steps=400, batch_size=4, resolution=1024,
                    prediction_type="flow", shift=7.56, comfy_native=True, spacing="linear",
                    shift_note="FLUX.2's own scheduler shifts by exp(mu), mu from the image size and step count "
                               "(mu 2.02 = shift 7.56 at 1024 px and 50 steps); the teacher computes it the same way "
                               "unless teacher.shift is set"),
}
# The names as a type: teacher.family's annotation, checked at run time (config.choices reads it).
FamilyName = Literal[tuple(FAMILIES)]  # type: ignore[valid-type]
COMFY_NATIVE = tuple(name for name, f in FAMILIES.items() if f.comfy_native)


def native_guidance(name: str, scale: float) -> str:
    """The CFG ``scale`` (this project's uncond + scale (cond - uncond)) in the family's own convention, for
    wizard, config comments and reports: '' where the two agree."""
    fam = family(name)
    if not fam.guidance_offset:
        return ""
    return f"= {fam.label.split(' (')[0]}'s own {fam.guidance_name} {scale - fam.guidance_offset:g}"


def family(name: str) -> Family:
    """The family called ``name``; unknown names are refused with the known ones."""
    if name not in FAMILIES:
        raise ConfigError(f"family {name!r} is not one of {', '.join(FAMILIES)}")
    return FAMILIES[name]
