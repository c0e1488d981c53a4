"""Drawing samples from a student, one independent noise per seed.

Image i of a batch is exactly what its seed gives alone: SD3 / SDXL noise is
ComfyUI's own (comfy.sample.prepare_noise of a batch-1 latent, as SamplerCustom
draws it), built-in noise is distill_core's (sampling.seed_noise).
"""
from __future__ import annotations

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy.k_diffusion import sampling as k_diffusion_sampling

from distill_core.errors import ConfigError
from distill_core.grids import tile
from distill_core.hybrid import sample_legs

from .compute import student_sigmas, to_comfy_images, upscale
from .student import Student

PREVIEW_CELL = 64  # px per image in a sampling preview, smaller when many columns would pass PREVIEW_WIDTH
PREVIEW_WIDTH = 512


def student_sampler() -> comfy.samplers.KSAMPLER:
    """Deterministic Euler on the given sigmas, the step the student was trained with.

    ComfyUI's euler without churn: for flow (CONST) models x += (s' - s) v, for
    epsilon models the DDIM step in k-diffusion scaling; no noise is added.
    """
    return comfy.samplers.KSAMPLER(k_diffusion_sampling.sample_euler, extra_options={"s_churn": 0.0})


def _draw_builtin(student: Student, prompts: list[str], seeds: list[int], size: int) -> tuple[torch.Tensor, dict]:
    total = sum(leg.steps for leg in student.legs)
    pbar = comfy.utils.ProgressBar(total)
    # every image, laid out as the result is: a row per prompt (one prompt's batch wraps at 8 columns)
    cols = len(seeds) if len(prompts) > 1 else min(len(seeds), 8)
    cell = max(8, min(PREVIEW_CELL, PREVIEW_WIDTH // cols))

    def on_step(i: int, x0: torch.Tensor) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        shown = student.teacher.decode(x0.float().cpu())
        pbar.update_absolute(i + 1, total, ("JPEG", tile(shown, cols, cell=cell), PREVIEW_WIDTH))

    latents = sample_legs(student.teacher, student.legs, prompts, seeds, on_step=on_step)
    images = upscale(student.teacher.decode(latents), size)
    return to_comfy_images(images), {"samples": latents}


def _draw_native(student: Student, positive, vae, seeds: list[int], width: int, height: int) -> tuple[torch.Tensor, dict]:
    if positive is None:
        raise ConfigError(f"{student.name} is an {student.info.family} student: connect a positive CONDITIONING "
                          "(CLIP Text Encode) to sample it")
    if vae is None:
        raise ConfigError(f"{student.name} is an {student.info.family} student: connect a VAE (e.g. from Load "
                          "Checkpoint) to decode its samples")
    model = student.model
    channels = model.get_model_object("latent_format").latent_channels
    empty = torch.zeros([1, channels, height // 8, width // 8])
    noise = torch.cat([comfy.sample.prepare_noise(empty, seed) for seed in seeds])
    latent = empty.repeat(len(seeds), 1, 1, 1)
    sigmas = torch.tensor(student_sigmas(student.info), dtype=torch.float32)
    callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
    samples = comfy.sample.sample_custom(model, noise, 1.0, student_sampler(), sigmas, positive, positive, latent,
                                         callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
                                         seed=seeds[0])
    images = vae.decode(samples)
    if images.dim() == 5:  # video VAEs return (B, T, H, W, C)
        images = images.reshape(-1, *images.shape[-3:])
    return images, {"samples": samples}


def draw(student: Student, *, prompts: list[str], seeds: list[int], positive=None, vae=None, width: int = 1024,
         height: int = 1024, size: int = 64) -> tuple[torch.Tensor, dict]:
    """(IMAGE, LATENT) for every (prompt, seed), prompt-major.

    Built-in students condition on the prompts (one row each); SD3 / SDXL
    students on ``positive`` (one prompt), decoded with ``vae``.
    """
    if student.native:
        return _draw_native(student, positive, vae, seeds, width, height)
    return _draw_builtin(student, prompts, seeds, size)
