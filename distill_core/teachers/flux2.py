"""FLUX.2 [klein] base teachers (diffusers Flux2KleinPipeline): rectified flow, Qwen3 prompts, packed latents.

How the pipeline differs from SD3, and how each difference is expressed in the project's one convention
(diffusers 0.42.1, pipelines/flux2/pipeline_flux2_klein.py):

- Latents: the VAE's 32 latent channels are cut into 2 x 2 patches (128 channels at 1/16 of the image
  size) and normalised by the VAE's batch-norm statistics. The project's latent *is* that patched,
  normalised tensor (what the pipeline takes as ``latents=``); ``call_network`` packs it into a token
  sequence with the pipeline's own position ids and unpacks the answer, and ``vae_latents`` undoes the
  normalisation and patching before the VAE decodes (as the pipeline does after its loop).
- Time: the network is fed t / 1000 of the scheduler's timestep t = 1000 sigma, i.e. the level itself.
- Prediction: velocity eps - x0, the sign the project uses for flow teachers (scheduler.step adds
  (sigma' - sigma) v).
- Schedule: sigmas linspace(1, 1/n, n) (spacing 'linear') shifted by the scheduler's exponential
  dynamic shift with mu = compute_empirical_mu(image tokens, n): the static shift exp(mu). The teacher
  samples n steps exactly as the pipeline does; the training schedule (re-noising, the student's levels)
  is the one at teacher.num_steps. Exported students carry that shift as a static one.
- CFG: uncond + w (cond - uncond) with the empty prompt as uncond, run only when w > 1 (w = 1: the
  conditional prediction alone, as the project's w = 1 means). Step-distilled folders (is_distilled)
  have their guidance baked in and are refused.
- Prompts: the chat-templated prompt padded to 512 tokens, hidden states of layers 9, 18, 27 stacked:
  a fixed (512, 3 x hidden) tensor per prompt, cached in the run's prompt store like SD3's.
"""
from __future__ import annotations

import math
import torch
from torch import nn

from ..errors import ConfigError
from ..schedules import FlowSchedule, NoiseSchedule
from ..training.merge import KeyFormat, original_flux2_names
from .base import Cond
from .diffusers_base import DiffusersTeacher

TEXT_LAYERS = (9, 18, 27)
# diffusers -> Black Forest Labs names (the layout of the released single files, which ComfyUI detects; the
# inverse of diffusers' convert_flux2_transformer_checkpoint_to_diffusers)
BFL_NAMES = {"x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
             "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
             "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
             "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
             "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
             "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
             "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
             "single_stream_modulation.linear": "single_stream_modulation.lin"}
BFL_DOUBLE = {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
              "attn.to_out.0": "img_attn.proj", "ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2",
              "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm",
              "attn.to_add_out": "txt_attn.proj", "ff_context.linear_in": "txt_mlp.0",
              "ff_context.linear_out": "txt_mlp.2"}
BFL_QKV = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
           "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
BFL_SINGLE = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2", "attn.norm_q": "norm.query_norm",
              "attn.norm_k": "norm.key_norm"}  # the pipeline's default text_encoder_out_layers
LORA_UNPLACED = ("time_guidance_embed.", "double_stream_modulation_", "single_stream_modulation.", "norm_out.")
UNSUPPORTED_SCHEDULER = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "shift_terminal",
                         "invert_sigmas", "stochastic_sampling", "use_flow_sigmas")


def empirical_mu(image_tokens: int, num_steps: int) -> float:
    """The pipeline's own dynamic-shift mu for an image of ``image_tokens`` packed tokens and ``num_steps``."""
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

    return float(compute_empirical_mu(image_seq_len=image_tokens, num_steps=num_steps))


class Flux2Teacher(DiffusersTeacher):
    """Flux2KleinPipeline folders of the base (undistilled) FLUX.2 [klein] 4B / 9B."""

    family = "flux2"
    pipeline_class = "Flux2KleinPipeline"
    net_folder = "transformer"
    net_class = "Flux2Transformer2DModel"
    vae_class = "AutoencoderKLFlux2"
    required = ("scheduler", "vae", "text_encoder", "tokenizer")
    max_sequence_length = 512  # the pipeline's default (and what the transformer was trained with)
    patch = 2  # latents are packed in 2 x 2 patches
    plan_text_tokens = 512  # Qwen3 at the pipeline's max_sequence_length
    # double blocks as SD3's (SwiGLU linear_in / linear_out), single blocks' fused qkv + MLP-in and out
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                    "ff.linear_in", "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out",
                    "attn.to_qkv_mlp_proj", "attn.to_out")
    # diffusers' _convert_non_diffusers_flux2_lora_to_diffusers / _convert_kohya_flux2_lora_to_diffusers: diffusers
    # names, or Black Forest Labs' (double_blocks / single_blocks, fused q/k/v) behind ComfyUI's or kohya's prefix
    lora_key_formats = (KeyFormat("diffusers", "transformer.", False), KeyFormat("PEFT", "base_model.model.", False),
                        KeyFormat("ComfyUI / ai-toolkit", "diffusion_model.", False),
                        KeyFormat("kohya, original names", "lora_unet_", True, original=True),
                        KeyFormat("ComfyUI, original names", "diffusion_model.", False, original=True))
    modelspec_arch = "flux-2-klein"
    original_layer_names = staticmethod(original_flux2_names)  # Black Forest Labs names, q/k/v fused

    @staticmethod
    def plan_inputs(config: dict, x: torch.Tensor, t: torch.Tensor, tokens: int) -> dict:
        """Packed tokens with the pipeline's position ids (x is (1, C, H, W) at the packed size)."""
        def ids(*sizes: int) -> torch.Tensor:
            return torch.cartesian_prod(*[torch.arange(k) for k in sizes])

        side = x.shape[-1]
        return {"hidden_states": x.new_empty(1, side * side, config["in_channels"]), "timestep": t,
                "encoder_hidden_states": x.new_empty(1, tokens, config["joint_attention_dim"]),
                "img_ids": ids(1, side, side, 1), "txt_ids": ids(1, 1, 1, tokens), "return_dict": False}

    @classmethod
    def check_index(cls, index: dict, where: str) -> None:
        if index.get("is_distilled"):
            raise ConfigError(f"{where} is a step-distilled FLUX.2 [klein] (its model_index.json has is_distilled "
                              "= true): its CFG is baked in, so there is no guided teacher to distil; use the klein "
                              "base folder (FLUX.2-klein-base-4B or -9B)")

    # ---- geometry ----------------------------------------------------------------------------
    @property
    def image_tokens(self) -> int:
        side = self.resolution // (self.vae_scale_factor * self.patch)
        return side * side

    def _check_resolution(self) -> None:
        multiple = self.vae_scale_factor * self.patch
        if self.resolution % multiple:
            raise ConfigError(f"teacher.resolution = {self.resolution} must be a multiple of {multiple} for this "
                              f"flux2 teacher (VAE factor {self.vae_scale_factor}, 2 x 2 latent patches)")

    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // (self.vae_scale_factor * self.patch)
        return (int(self.network.config.in_channels), side, side)

    # ---- schedule ----------------------------------------------------------------------------
    def _schedule(self, sc: dict) -> NoiseSchedule:
        where = f"teacher.path {str(self.path)!r}: scheduler/scheduler_config.json"
        odd = [k for k in UNSUPPORTED_SCHEDULER if sc.get(k)]
        if odd:
            raise ConfigError(f"{where} sets {', '.join(odd)}, which the flux2 teacher does not reproduce; use the "
                              "klein base folder's own scheduler")
        if sc.get("use_dynamic_shifting") and sc.get("time_shift_type", "exponential") != "exponential":
            raise ConfigError(f"{where} has time_shift_type {sc.get('time_shift_type')!r}; only 'exponential' "
                              "(FLUX.2's) is supported")
        return FlowSchedule(self._shift(int(self.cfg.teacher.num_steps), sc),
                            int(sc.get("num_train_timesteps", 1000)), spacing="linear")

    def _shift(self, num_steps: int, sc: dict | None = None) -> float:
        """The static shift the pipeline applies when it samples ``num_steps`` steps at this resolution."""
        sc = self.scheduler_config if sc is None else sc
        if self.cfg.teacher.shift is not None:
            return float(self.cfg.teacher.shift)
        if sc.get("use_dynamic_shifting"):
            return math.exp(empirical_mu(self.image_tokens, num_steps))
        return float(sc.get("shift", 1.0))

    def teacher_levels(self, num_steps: int) -> list[float]:
        """The pipeline's own sigmas for ``num_steps`` (its dynamic shift depends on the step count)."""
        return self.schedule.with_shift(self._shift(num_steps)).sampling_levels(num_steps)

    # ---- prompts and the network -------------------------------------------------------------
    def _encode_with(self, pipe, prompts: list[str]) -> Cond:
        embeds, _ = pipe.encode_prompt(prompt=prompts, device=self.text_device,
                                       max_sequence_length=self.max_sequence_length,
                                       text_encoder_out_layers=TEXT_LAYERS)
        return {"encoder_hidden_states": embeds}

    def call_network(self, net: nn.Module, x: torch.Tensor, levels: torch.Tensor, cond: Cond) -> torch.Tensor:
        from diffusers import Flux2KleinPipeline as P

        dtype = self._net_dtype(net)
        text = cond["encoder_hidden_states"].to(x.device, dtype)
        timestep = self.schedule.model_timestep(levels).to(x.device) / self.schedule.num_train_timesteps
        out = net(hidden_states=P._pack_latents(x).to(dtype), encoder_hidden_states=text, timestep=timestep,
                  img_ids=P._prepare_latent_ids(x).to(x.device), txt_ids=P._prepare_text_ids(text).to(x.device),
                  guidance=None, return_dict=False)[0]
        b, c, h, w = x.shape
        return out.transpose(1, 2).reshape(b, c, h, w).to(x.dtype)

    # ---- images ------------------------------------------------------------------------------
    def vae_latents(self, latents: torch.Tensor, vae=None) -> torch.Tensor:
        """The VAE's own latents (B, 32, H/8, W/8) of the project's patched, normalised ones (as the pipeline's
        ``output_type='latent'``)."""
        from diffusers import Flux2KleinPipeline as P

        vae = vae or self._vae_model()
        bn = vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(latents.device, latents.dtype)
        return P._unpatchify_latents(latents * std + mean)

    def _vae_input(self, vae, latents: torch.Tensor) -> torch.Tensor:
        return self.vae_latents(latents, vae)

    def lora_file_modules(self) -> list[str]:
        """Every linear layer but the timestep embedding and the modulations (and the final adaLN, whose halves
        BFL and diffusers order differently): ComfyUI maps no diffusers LoRA key to them ('lora key not loaded')."""
        return [name for name in super().lora_file_modules() if not name.startswith(LORA_UNPLACED)]

    def comfy_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return bfl_state_dict(state)

    def describe(self) -> dict:
        """Facts, with the family's own schedule values next to the project's static shift."""
        facts = super().describe()
        if self.cfg.teacher.shift is None and self.scheduler_config.get("use_dynamic_shifting"):
            n = int(self.cfg.teacher.num_steps)
            facts["family_schedule"] = (f"dynamic shift mu = {empirical_mu(self.image_tokens, n):.4f} at "
                                        f"{self.image_tokens} image tokens and {n} steps (ComfyUI's Flux2 'shift' is "
                                        f"this mu) = static shift exp(mu) = {self.schedule.shift:.4f}")
        return facts


def bfl_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights in BFL names: ComfyUI 0.33 detects FLUX.2 by them and cannot convert diffusers' (it
    expects an x_embedder bias, which FLUX.2 lacks). q, k, v are fused; the final adaLN's halves swap."""
    out: dict[str, torch.Tensor] = {}
    rest = dict(state)
    for name in sorted({k.split(".")[1] for k in state if k.startswith("transformer_blocks.")}, key=int):
        src, dst = f"transformer_blocks.{name}.", f"double_blocks.{name}."
        for fused, parts in BFL_QKV.items():
            out[f"{dst}{fused}.weight"] = torch.cat([rest.pop(f"{src}{p}.weight") for p in parts])
        for k in [k for k in rest if k.startswith(src)]:
            module, param = k[len(src):].rsplit(".", 1)
            out[f"{dst}{BFL_DOUBLE[module]}.{_bfl_param(param, module)}"] = rest.pop(k)
    for k in [k for k in rest if k.startswith("single_transformer_blocks.")]:
        _, name, tail = k.split(".", 2)
        module, param = tail.rsplit(".", 1)
        out[f"single_blocks.{name}.{BFL_SINGLE[module]}.{_bfl_param(param, module)}"] = rest.pop(k)
    scale, shift = rest.pop("norm_out.linear.weight").chunk(2)  # diffusers (scale, shift), BFL (shift, scale)
    out["final_layer.adaLN_modulation.1.weight"] = torch.cat([shift, scale])
    for k, v in rest.items():
        module, param = k.rsplit(".", 1)
        out[f"{BFL_NAMES[module]}.{param}"] = v
    return out


def _bfl_param(param: str, module: str) -> str:
    """BFL's RMS norms call their weight 'scale'."""
    return "scale" if "norm" in module and param == "weight" else param


TEACHER = Flux2Teacher
