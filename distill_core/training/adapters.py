"""LoRA state dicts as plain tensors: which keys are adapters, merged weights, factors (no peft needed).

Shared by training (checkpoints keep only the adapters) and export (merged students, LoRA files), so an
export or a ComfyUI node never imports peft.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import Config

ADAPTER = "default"  # peft's adapter name in every key

def base_dtype(cfg: Config) -> torch.dtype:
    """The frozen base's dtype: bf16 only where autocast makes bf16 weights and fp32 adapters meet safely."""
    bf16 = cfg.teacher.dtype == "bfloat16" and cfg.run.mixed_precision == "bf16"
    return torch.bfloat16 if bf16 else torch.float32


def is_lora_state(state: dict) -> bool:
    return any(".lora_A." in k for k in state)


def is_lora(net: nn.Module) -> bool:
    return any(".lora_A." in name for name, _ in net.named_parameters())


def trainable_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of a network: everything, or only the adapters of a LoRA network."""
    if not is_lora_state(state):
        return state
    return {k: v for k, v in state.items() if ".lora_" in k}


def merged_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The teacher-layout float32 state dict of a LoRA network's state: W + B A (alpha = rank, scale 1)."""
    if not is_lora_state(state):
        return state
    out = {k.replace(".base_layer.", "."): v.float() for k, v in state.items() if ".lora_" not in k}
    suffix = f".lora_A.{ADAPTER}.weight"
    for key in state:
        if key.endswith(suffix):
            module = key[: -len(suffix)]
            a, b = state[key].float(), state[f"{module}.lora_B.{ADAPTER}.weight"].float()
            out[f"{module}.weight"] = out[f"{module}.weight"] + b @ a
    return out


def adapter_factors(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module name -> (A, B) of a LoRA network's state (scale folded in: alpha = rank)."""
    suffix = f".lora_A.{ADAPTER}.weight"
    return {k[: -len(suffix)]: (state[k].float(), state[k[: -len(suffix)] + f".lora_B.{ADAPTER}.weight"].float())
            for k in state if k.endswith(suffix)}
