"""What the nodes compute, with no ComfyUI import: sigmas, summaries, grids, diversity.

The node classes are thin wrappers that move tensors between ComfyUI's types
(IMAGE is (B, H, W, C) in [0, 1]) and these functions, so everything here is
unit-tested without ComfyUI.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from distill_core import families
from distill_core.errors import CheckpointError, ConfigError
from distill_core.evaluation.evaluate import diversity
from distill_core.export.student_file import StudentInfo
from distill_core.grids import tile
from distill_core.schedules import FlowSchedule, NoiseSchedule, VPSchedule, schedule_from_description


def family_schedule(name: str, shift: float | None = None) -> NoiseSchedule:
    """The noise schedule a family's students are trained on (SD3: flow with shift 3, SDXL: VP eps);
    ``shift`` replaces a flow family's default and is ignored for VP ones."""
    fam = families.family(name)
    if fam.prediction_type == "epsilon":
        return VPSchedule()
    return FlowSchedule(shift=fam.shift if shift is None else shift, spacing=fam.spacing)


def family_sigmas(family: str, steps: int, shift: float | None = None) -> list[float]:
    """ComfyUI sigmas of a ``steps``-step student of ``family`` trained on the default schedule.

    SD3: diffusers' FlowMatchEuler sigmas (1, .8577, .6022, .0089, 0 for 4 steps at shift 3);
    SDXL: sigma(t) at the 'trailing' timesteps 999, 749, 499, 249, then 0. ComfyUI's
    'simple' scheduler gives other values (SD3 4 steps: 1, .9, .75, .5, 0).
    """
    if steps < 1:
        raise ConfigError(f"steps = {steps}: a student needs at least one step")
    schedule = family_schedule(family, shift)
    return schedule.comfy_sigmas(schedule.sampling_levels(steps))


def student_sigmas(info: StudentInfo) -> list[float]:
    """The sigmas the student was trained on, checked against its levels and schedule.

    The stored sigmas must be strictly decreasing, end at 0, and agree with the
    sigmas recomputed from the stored levels and schedule (a damaged or
    hand-edited file is refused rather than sampled wrongly).
    """
    sigmas = [float(s) for s in info.sigmas]
    where = f"student {info.title!r}"
    if len(sigmas) < 2 or len(sigmas) != len(info.levels):
        raise CheckpointError(f"{where} stores {len(sigmas)} sigmas for {len(info.levels)} levels; export it again")
    if sigmas[-1] != 0.0 or any(a <= b for a, b in zip(sigmas, sigmas[1:])):
        raise CheckpointError(f"{where} has sigmas {sigmas} that do not decrease to 0; export it again")
    try:
        expected = schedule_from_description(info.schedule).comfy_sigmas(info.levels)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where} has an unreadable schedule {info.schedule!r} ({e})") from None
    if not all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) for a, b in zip(sigmas, expected)):
        raise CheckpointError(f"{where}: stored sigmas {sigmas} disagree with its levels {info.levels} "
                              f"(expected {expected}); export it again")
    return sigmas


def summary(info: StudentInfo) -> dict:
    """The facts a person needs before sampling a student (the loader's UI and the web extension)."""
    return {
        "title": info.title, "family": info.family, "prediction_type": info.prediction_type,
        "steps": info.num_steps, "levels": [round(v, 6) for v in info.levels],
        "sigmas": [round(v, 6) for v in info.sigmas], "schedule": info.schedule, "method": info.method,
        "anchor_step": info.anchor_step, "diversity_weight": info.diversity_weight,
        "teacher": info.teacher, "teacher_guidance": info.teacher_guidance, "steps_trained": info.steps_trained,
    }


def describe(info: StudentInfo) -> str:
    """A few lines of text: what the student is and how it must be sampled."""
    sig = ", ".join(f"{s:.4g}" for s in info.sigmas)
    return (f"{info.title}\n{info.family} {info.prediction_type} student, {info.num_steps} steps, cfg 1\n"
            f"sigmas: {sig}\n{info.method}: k={info.anchor_step}, lambda={info.diversity_weight}, "
            f"teacher cfg {info.teacher_guidance:g}, {info.steps_trained} training steps")


def seed_list(first: int, count: int) -> list[int]:
    if count < 1:
        raise ConfigError(f"seeds = {count}: draw at least one seed")
    return [first + i for i in range(count)]


def prompt_lines(text: str) -> list[str]:
    """One prompt per non-empty line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ConfigError("prompt is empty: write one prompt per line")
    return lines


def to_comfy_images(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) to ComfyUI's IMAGE layout (B, H, W, 3), float32 on the CPU."""
    return images.detach().float().cpu().permute(0, 2, 3, 1).contiguous()


def from_comfy_images(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) to (B, 3, H, W): grey is repeated, alpha dropped."""
    if images.dim() != 4:
        raise ConfigError(f"expected an IMAGE batch (B, H, W, C), got shape {tuple(images.shape)}")
    x = images.float().permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x[:, :3]


def upscale(images: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-neighbour upscale of (B, C, h, w) images to height ``size``: 16x16 shapes stay crisp."""
    factor = max(1, size // images.shape[-2])
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def grid_image(images: torch.Tensor, cols: int, row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None, title: str | None = None) -> torch.Tensor:
    """Tile an IMAGE batch (B, H, W, C) row-major into one labelled IMAGE (1, H', W', 3)."""
    pil = tile(from_comfy_images(images).clamp(0, 1), cols, row_labels=row_labels, col_labels=col_labels,
               title=title or None)
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).unsqueeze(0)


def to_teacher_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) images back to a built-in teacher's size (area average undoes the upscale)."""
    return F.interpolate(images, size=(size, size), mode="area") if images.shape[-1] != size else images


def batch_diversity(features: torch.Tensor, per_prompt: int) -> dict:
    """Eq. 9 over a prompt-major batch: 1 - mean pairwise cosine within each group of ``per_prompt``."""
    n = features.shape[0]
    per_prompt = per_prompt or n
    if per_prompt < 2 or n % per_prompt:
        raise ConfigError(f"per_prompt = {per_prompt} must be at least 2 and divide the batch of {n} images "
                          "(0 = the whole batch is one prompt)")
    return {"diversity": diversity(features.flatten(1), per_prompt), "images": n, "prompts": n // per_prompt,
            "per_prompt": per_prompt}
