"""SD3 / SD3.5 teachers: rectified flow, velocity prediction, CLIP-L/G + T5 prompts."""
from __future__ import annotations

import torch
from torch import nn

from ..schedules import NoiseSchedule
from ..training.merge import KeyFormat, original_mmdit_names
from .base import Cond
from .diffusers_base import DiffusersTeacher


class SD3Teacher(DiffusersTeacher):
    """StableDiffusion3Pipeline folders (SD3-Medium, SD3.5-Medium / Large): rectified flow, velocity prediction."""

    family = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    net_folder = "transformer"
    net_class = "SD3Transformer2DModel"
    required = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    max_sequence_length = 256  # SD3 pipelines' T5 default
    plan_text_tokens = 77 + 256  # CLIP, then T5 at the pipeline's default length
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
    lora_key_formats = (KeyFormat("diffusers", "transformer.", False), KeyFormat("PEFT", "base_model.model.", False),
                        KeyFormat("kohya / OneTrainer", "lora_transformer_", True),
                        KeyFormat("ComfyUI", "diffusion_model.", False),
                        KeyFormat("kohya, original names", "lora_unet_", True, original=True),
                        KeyFormat("ComfyUI, original names", "diffusion_model.", False, original=True))
    modelspec_arch = "stable-diffusion-v3-medium"
    original_layer_names = staticmethod(original_mmdit_names)  # MMDiT names, q/k/v fused

    @classmethod
    def modelspec_architecture(cls, network_config: dict) -> str:
        """SD3 variants are told apart by their config: 38 layers is SD3.5-Large, dual attention SD3.5-Medium."""
        if network_config.get("num_layers") == 38:
            return "stable-diffusion-v3.5-large"
        if network_config.get("dual_attention_layers") or network_config.get("qk_norm"):
            return "stable-diffusion-v3.5-medium"
        return cls.modelspec_arch

    @staticmethod
    def plan_inputs(config: dict, x: torch.Tensor, t: torch.Tensor, tokens: int) -> dict:
        return {"hidden_states": x, "timestep": t,
                "encoder_hidden_states": x.new_empty(1, tokens, config["joint_attention_dim"]),
                "pooled_projections": x.new_empty(1, config["pooled_projection_dim"]), "return_dict": False}

    def _schedule(self, sc: dict) -> NoiseSchedule:
        return self._flow_schedule(sc)

    def _encode_with(self, pipe, prompts: list[str]) -> Cond:
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=self.text_device,
                                                  do_classifier_free_guidance=False,
                                                  max_sequence_length=self.max_sequence_length)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def call_network(self, net: nn.Module, x: torch.Tensor, levels: torch.Tensor, cond: Cond) -> torch.Tensor:
        dtype = self._net_dtype(net)
        out = net(hidden_states=x.to(dtype), timestep=self.schedule.model_timestep(levels).to(x.device),
                  encoder_hidden_states=cond["encoder_hidden_states"].to(x.device, dtype),
                  pooled_projections=cond["pooled_projections"].to(x.device, dtype), return_dict=False)[0]
        return out.to(x.dtype)


TEACHER = SD3Teacher
