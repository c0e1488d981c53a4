"""SDXL teachers: discrete VP schedule, epsilon prediction, added time ids."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..schedules import NoiseSchedule, VPSchedule
from ..training.merge import KeyFormat, original_unet_layers
from .base import Cond
from .diffusers_base import DiffusersTeacher

# UNet modules whose kohya name diffusers' converter cannot map back; their LDM names both loaders know
_LDM_NAMES = {"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


class SDXLTeacher(DiffusersTeacher):
    """StableDiffusionXLPipeline folders: discrete VP schedule, epsilon prediction, added time ids."""

    family = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    net_folder = "unet"
    net_class = "UNet2DConditionModel"
    required = ("scheduler", "vae", "text_encoder_2", "tokenizer_2")
    plan_text_tokens = 77  # CLIP
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
    lora_key_formats = (KeyFormat("diffusers", "unet.", False), KeyFormat("PEFT", "base_model.model.", False),
                        KeyFormat("kohya", "lora_unet_", True), KeyFormat("ComfyUI", "diffusion_model.", False),
                        KeyFormat("kohya, original names", "lora_unet_", True, original=True),
                        KeyFormat("ComfyUI, original names", "diffusion_model.", False, original=True))
    modelspec_arch = "stable-diffusion-xl-v1-base"
    original_layer_names = staticmethod(original_unet_layers)  # LDM / SGM UNet names

    @classmethod
    def lora_file_keys(cls, module: str) -> tuple[str, str]:
        """kohya names, which ComfyUI maps from diffusers UNet modules (and diffusers reads)."""
        key = "lora_unet_" + _LDM_NAMES.get(module, module).replace(".", "_")
        return f"{key}.lora_down.weight", f"{key}.lora_up.weight"

    @staticmethod
    def plan_inputs(config: dict, x: torch.Tensor, t: torch.Tensor, tokens: int) -> dict:
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        return {"sample": x, "timestep": t, "encoder_hidden_states": x.new_empty(1, tokens, config["cross_attention_dim"]),
                "added_cond_kwargs": {"text_embeds": x.new_empty(1, pooled), "time_ids": x.new_empty(1, 6)},
                "return_dict": False}

    def _schedule(self, sc: dict) -> NoiseSchedule:
        where = f"teacher.path {str(self.path)!r}: scheduler/scheduler_config.json"
        if self.cfg.teacher.shift is not None:
            raise ConfigError("teacher.shift applies to flow (sd3) teachers; remove it for an sdxl teacher")
        if sc.get("prediction_type", "epsilon") != "epsilon":
            raise ConfigError(f"{where} has prediction_type {sc.get('prediction_type')!r}; only epsilon-prediction "
                              "SDXL teachers are supported")
        if sc.get("rescale_betas_zero_snr") or sc.get("trained_betas"):
            raise ConfigError(f"{where} uses zero-SNR rescaling or trained betas, which are not supported")
        schedule = sc.get("beta_schedule", "scaled_linear")
        if schedule not in ("scaled_linear", "linear"):
            raise ConfigError(f"{where} has beta_schedule {schedule!r}; supported: 'scaled_linear', 'linear'")
        return VPSchedule(beta_start=float(sc.get("beta_start", 0.00085)), beta_end=float(sc.get("beta_end", 0.012)),
                          beta_schedule=schedule, num_train_timesteps=int(sc.get("num_train_timesteps", 1000)))

    def _encode_with(self, pipe, prompts: list[str]) -> Cond:
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, device=self.text_device,
                                                  do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "text_embeds": pooled}

    def teacher_levels(self, num_steps: int) -> list[float]:
        """Trailing (from pure noise, as the student), or the folder's own 'leading' spacing with its steps_offset."""
        if self.cfg.teacher.timestep_spacing == "leading":
            return self.schedule.sampling_levels(num_steps, "leading", int(self.scheduler_config.get("steps_offset", 0)))
        return super().teacher_levels(num_steps)

    def null_condition(self) -> Cond:
        """SDXL pipelines use zeros for an empty negative prompt when force_zeros_for_empty_prompt (the default)."""
        empty = self.encode_prompts([""])
        if self.index.get("force_zeros_for_empty_prompt", True):
            return {k: torch.zeros_like(v) for k, v in empty.items()}
        return empty

    def time_ids(self, n: int, device, dtype) -> torch.Tensor:
        """(original size, crop top-left, target size) as the pipeline builds them for a square image."""
        r = self.resolution
        return torch.tensor([[r, r, 0, 0, r, r]], device=device, dtype=dtype).expand(n, 6)

    def call_network(self, net: nn.Module, x: torch.Tensor, levels: torch.Tensor, cond: Cond) -> torch.Tensor:
        dtype = self._net_dtype(net)
        added = {"text_embeds": cond["text_embeds"].to(x.device, dtype),
                 "time_ids": self.time_ids(x.shape[0], x.device, dtype)}
        out = net(x.to(dtype), self.schedule.model_timestep(levels).to(x.device),
                  encoder_hidden_states=cond["encoder_hidden_states"].to(x.device, dtype),
                  added_cond_kwargs=added, return_dict=False)[0]
        return out.to(x.dtype)


TEACHER = SDXLTeacher
