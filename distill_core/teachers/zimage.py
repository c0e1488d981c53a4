"""Z-Image teachers (ZImagePipeline folders): rectified flow, Qwen3 prompts of variable length.

Read from diffusers 0.42.1's ``pipelines/z_image/pipeline_z_image.py``; each of
its conventions is turned into the project's one here and nowhere else:

- time: the network is fed ``(1000 - t) / 1000`` with ``t = 1000 * sigma``, i.e.
  1 at the clean image and 0 at pure noise (the project's level is sigma);
- sign: the network predicts ``x0 - noise``; the pipeline negates it before the
  Euler step, so the project's velocity (noise - x0, as SD3) is ``-output``;
- CFG: the pipeline combines ``pos + w (pos - neg)``: its ``guidance_scale`` w is
  the project's ``uncond + (1 + w) (cond - uncond)`` (families.py's offset);
  ``cfg_truncation`` / ``cfg_normalization`` keep the pipeline's meaning;
- prompts: ``hidden_states[-2]`` of the Qwen3 encoder with the padding dropped,
  a list of variable-length tensors. They are stored right-padded with a mask
  (``prompt_mask``, False on padding) and unpadded again before the network;
- levels: the pipeline passes ``sigmas = linspace(1, 1/N, N)`` through the
  scheduler's shift (families.py: ``sigmas = "linear"``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..schedules import NoiseSchedule
from ..training.merge import KeyFormat
from .base import Cond
from .diffusers_base import DiffusersTeacher


class ZImageTeacher(DiffusersTeacher):
    """ZImagePipeline folders (Z-Image base; Turbo is CFG-free and step-distilled already)."""

    family = "zimage"
    pipeline_class = "ZImagePipeline"
    net_folder = "transformer"
    net_class = "ZImageTransformer2DModel"
    required = ("scheduler", "vae", "text_encoder", "tokenizer")
    max_sequence_length = 512  # ZImagePipeline.encode_prompt's default
    plan_text_tokens = 512  # the longest prompt the pipeline keeps (padding is dropped: most prompts are shorter)
    # the blocks' attention and SwiGLU feed-forward (ComfyUI's z_image_to_diffusers maps each of them)
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
    # the layouts diffusers' _convert_non_diffusers_z_image_lora_to_diffusers reads: the diffusers layer names behind
    # ComfyUI's / ai-toolkit's prefix, or kohya's with underscores. Files by the original checkpoint's names (fused
    # attention.qkv) match no layer and are refused whole
    lora_key_formats = (KeyFormat("diffusers", "transformer.", False), KeyFormat("PEFT", "base_model.model.", False),
                        KeyFormat("kohya", "lora_unet_", True),
                        KeyFormat("ComfyUI / ai-toolkit", "diffusion_model.", False))

    @staticmethod
    def plan_inputs(config: dict, x: torch.Tensor, t: torch.Tensor, tokens: int) -> dict:
        return {"x": list(x.unsqueeze(2).unbind(0)), "t": t,
                "cap_feats": [x.new_empty(tokens, config["cap_feat_dim"])], "return_dict": False}

    def _schedule(self, sc: dict) -> NoiseSchedule:
        return self._flow_schedule(sc)

    def _patch_size(self) -> int:
        return max(self.network.config.all_patch_size)

    def _check_resolution(self) -> None:
        """Also within the network's position table (axes_lens: image tokens per side), which it indexes unchecked."""
        super()._check_resolution()
        side = self.resolution // (self.vae_scale_factor * self._patch_size())
        most = min(self.network.config.axes_lens[1:])
        if side > most:
            raise ConfigError(f"teacher.resolution = {self.resolution} is {side} tokens per side; this Z-Image "
                              f"network's position table (axes_lens) covers {most}: use at most "
                              f"{most * self.vae_scale_factor * self._patch_size()} px")

    def _encode_with(self, pipe, prompts: list[str]) -> Cond:
        embeds, _ = pipe.encode_prompt(prompt=list(prompts), device=self.text_device, do_classifier_free_guidance=False,
                                       max_sequence_length=self.max_sequence_length)
        length = max(e.shape[0] for e in embeds)
        padded = torch.zeros(len(embeds), length, embeds[0].shape[-1], dtype=embeds[0].dtype)
        mask = torch.zeros(len(embeds), length, dtype=torch.bool)
        for i, e in enumerate(embeds):
            padded[i, :e.shape[0]], mask[i, :e.shape[0]] = e.cpu(), True
        return {"prompt_embeds": padded, "prompt_mask": mask}

    def call_network(self, net: nn.Module, x: torch.Tensor, levels: torch.Tensor, cond: Cond) -> torch.Tensor:
        dtype = self._net_dtype(net)
        t = self.schedule.model_timestep(levels).to(x.device)
        embeds, mask = cond["prompt_embeds"].to(x.device, dtype), cond["prompt_mask"].to(x.device)
        out = net(list(x.to(dtype).unsqueeze(2).unbind(0)), (1000 - t) / 1000,
                  [e[m] for e, m in zip(embeds, mask)], return_dict=False)[0]
        return -torch.stack(out).squeeze(2).to(x.dtype)

    def guide(self, c: torch.Tensor, u: torch.Tensor, scale: float, levels: torch.Tensor) -> torch.Tensor:
        """u + s (c - u), with the pipeline's cfg_normalization (a per-sample cap on the norm) and cfg_truncation
        (cond only where its time 1 - level exceeds the truncation)."""
        out = super().guide(c, u, scale, levels)
        t, per_sample = self.cfg.teacher, (-1, *[1] * (c.dim() - 1))
        if t.cfg_normalization > 0:
            cap = c.flatten(1).norm(dim=1) * t.cfg_normalization
            norm = out.flatten(1).norm(dim=1)
            out = out * torch.where(norm > cap, cap / norm, torch.ones_like(norm)).view(per_sample)
        if t.cfg_truncation <= 1:
            off = ((1000 - self.schedule.model_timestep(levels)) / 1000 > t.cfg_truncation).to(c.device)
            out = torch.where(off.view(per_sample), c, out)
        return out


TEACHER = ZImageTeacher
