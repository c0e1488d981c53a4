"""Tiny models in the files a real ComfyUI install holds, built with ComfyUI's own classes.

The SD3 "teacher checkpoint" has the layout of sd3.5_medium_incl_clips_*.safetensors:
an MMDiT under model.diffusion_model. (ComfyUI's own key format), CLIP-L under
text_encoders.clip_l. (full size: ComfyUI's text encoders have fixed shapes; the
checkpoint loader detects which encoders are present) and a 16-channel TAESD-shaped
VAE under first_stage_model. (ComfyUI picks the VAE class from the keys). Weights
are random but scaled so that activations stay finite.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

import comfy.sd
import comfy.taesd.taesd
import comfy.text_encoders.sd3_clip

from comfy_pack import tiny_sd3_transformer


def _random_like(key: str, t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    if "norm" in key and key.endswith("weight"):
        return torch.ones_like(t, dtype=torch.float32)
    if key.endswith("bias") or t.dim() == 0:
        return torch.zeros_like(t, dtype=torch.float32)
    fan_in = t[0].numel() if t.dim() > 1 else t.numel()
    return torch.randn(t.shape, generator=g) / math.sqrt(max(fan_in, 1))


def clip_l_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    model = comfy.text_encoders.sd3_clip.SD3ClipModel(clip_l=True, clip_g=False, t5=False, device="cpu",
                                                      dtype=torch.float16)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        out[k] = (torch.tensor(4.6052) if k.endswith("logit_scale") else
                  torch.randn(v.shape, generator=g) * 0.02 if "embedding" in k else _random_like(k, v, g))
    return {k: v.half() for k, v in out.items()}


def taesd_state_dict(latent_channels: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    vae = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    g = torch.Generator().manual_seed(seed)
    out = {k: _random_like(k, v, g) for k, v in vae.state_dict().items() if k not in ("vae_scale", "vae_shift")}
    out["vae_scale"], out["vae_shift"] = torch.tensor(1.5305), torch.tensor(0.0609)  # SD3's latent scaling
    return out


def mmdit_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """The tiny diffusers SD3 transformer in ComfyUI's MMDiT key format (as ComfyUI itself converts it)."""
    net = tiny_sd3_transformer(seed)
    model = comfy.sd.load_diffusion_model_state_dict({k: v.contiguous() for k, v in net.state_dict().items()})
    return {k: v.float() for k, v in model.model.diffusion_model.state_dict().items()}


def sd3_checkpoint(path: Path, seed: int = 7) -> Path:
    """A tiny SD3.5-style all-in-one checkpoint: teacher MMDiT, CLIP-L, VAE."""
    sd = {f"model.diffusion_model.{k}": v for k, v in mmdit_state_dict(seed).items()}
    sd |= {f"text_encoders.{k}": v for k, v in clip_l_state_dict(seed).items()}
    sd |= {f"first_stage_model.{k}": v for k, v in taesd_state_dict(seed=seed).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path
