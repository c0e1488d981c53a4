"""A SAMPLER that runs a ComfyUI teacher MODEL with CFG for the first interval, then the student.

The sampler function gets the student's wrapped denoiser and the student's sigmas
(as SamplerCustom passes them). The teacher leg is k deterministic Euler steps from
sigmas[0] down to sigmas[handover], run through ComfyUI's own CFGGuider (positive,
negative, cfg); the student then takes deterministic Euler steps (the Student
Sampler's step) on sigmas[handover:]. Teacher and student must share a latent space
(same family). k = 0: the teacher does nothing and this is the plain student sampler.
"""
from __future__ import annotations

import torch

import comfy.model_sampling
import comfy.samplers
from comfy.k_diffusion import sampling as k_diffusion_sampling


def teacher_sigmas(teacher_model, start: float, end: float, k: int) -> torch.Tensor:
    """k teacher steps from start to end: uniform in sigma for flow (CONST) models, in log sigma otherwise."""
    ms = teacher_model.get_model_object("model_sampling")
    if isinstance(ms, comfy.model_sampling.CONST) or end <= 0:
        return torch.linspace(start, end, k + 1)
    return torch.exp(torch.linspace(torch.log(torch.tensor(start)), torch.log(torch.tensor(end)), k + 1))


def _teacher_leg(teacher_model, positive, negative, cfg: float, x: torch.Tensor, sigmas: torch.Tensor,
                 seed: int, disable) -> torch.Tensor:
    """Euler with CFG from x (model space, at sigmas[0]) on the teacher, through comfy's CFGGuider."""
    guider = comfy.samplers.CFGGuider(teacher_model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)

    result = []

    def from_x(model, scaled_zeros, sigmas, extra_args=None, callback=None, disable=None, **_):
        # the guider scaled zero noise; the teacher starts from the student's x instead. The model-space result
        # is kept here: what the guider returns has been through inverse_noise_scaling / process_latent_out.
        result.append(k_diffusion_sampling.sample_euler(model, x.to(scaled_zeros), sigmas, extra_args=extra_args,
                                                        callback=callback, disable=disable, s_churn=0.0))
        return result[-1]

    zeros = torch.zeros_like(x, device="cpu")
    guider.sample(zeros, zeros, comfy.samplers.KSAMPLER(from_x), sigmas.cpu(), disable_pbar=bool(disable), seed=seed)
    return result[-1].to(x)


def _base_model(model):
    """The student's BaseModel under the wrappers the sampler function gets (inner_model chain)."""
    seen = 0
    while model is not None and not hasattr(model, "current_patcher") and seen < 8:
        model, seen = getattr(model, "inner_model", None), seen + 1
    return model


def teacher_student_sampler(teacher_model, positive, negative, cfg: float, k: int,
                            handover: int = 1) -> comfy.samplers.KSAMPLER:
    """The SAMPLER: teacher k CFG Euler steps over sigmas[0] -> sigmas[handover], then student Euler."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        extra_args = extra_args or {}
        h = min(handover, len(sigmas) - 1) if k > 0 else 0
        if h > 0:
            levels = teacher_sigmas(teacher_model, float(sigmas[0]), float(sigmas[h]), k)
            base = _base_model(model)
            saved = getattr(base, "current_patcher", None)
            x = _teacher_leg(teacher_model, positive, negative, cfg, x, levels, int(extra_args.get("seed", 0) or 0),
                             disable)
            if saved is not None and getattr(base, "current_patcher", None) is None:
                base.current_patcher = saved  # the teacher's guider cleaned up loaded models; the student runs on
        shifted = None if callback is None else (lambda d: callback({**d, "i": d["i"] + h}))
        return k_diffusion_sampling.sample_euler(model, x, sigmas[h:], extra_args=extra_args, callback=shifted,
                                                 disable=disable, s_churn=0.0)

    return comfy.samplers.KSAMPLER(sample)


def nfe_text(k: int, cfg: float) -> str:
    """The teacher's network evaluations per image (CFG runs it twice a step); the student adds 1 per step."""
    teacher = k * (1 if cfg == 1.0 else 2)
    text = f"teacher {k} steps at cfg {cfg:g}: {teacher} NFE" + ("" if cfg != 1.0 or k == 0 else " (cfg 1: no uncond)")
    return text + ", then the student's remaining steps (1 NFE each, cfg 1)"
