"""LoRA state dicts as plain tensors: which keys are adapters, merged weights, factors (no peft needed).

Shared by training (checkpoints keep only the adapters) and export (merged students, LoRA files), so an
export or a ComfyUI node never imports peft.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..config import Config
from ..errors import ConfigError
from ..teachers.base import family_teacher

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


def merged_tensors(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
    """A LoRA network's state in the teacher's layout, one tensor at a time: W + B A (alpha = rank, scale 1) in
    float32, then cast to ``dtype``; a full-size export holds one merged copy in its own dtype, no float32 twin."""
    factors = adapter_factors(state)
    for key, value in state.items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        module = key.removesuffix(".weight")
        if key.endswith(".weight") and module in factors:
            a, b = factors[module]
            yield key, (value.float() + b @ a).to(dtype)
        else:
            yield key, value.to(dtype)


def merged_state_dict(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The teacher-layout state dict of a LoRA network's state (merged_tensors), or a full network's as it is."""
    if not is_lora_state(state):
        return state
    return dict(merged_tensors(state, dtype))


def adapter_factors(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module name -> (A, B) of a LoRA network's state (scale folded in: alpha = rank)."""
    suffix = f".lora_A.{ADAPTER}.weight"
    return {k[: -len(suffix)]: (state[k].float(), state[k[: -len(suffix)] + f".lora_B.{ADAPTER}.weight"].float())
            for k in state if k.endswith(suffix)}


# ---- LoRA files (the export format: each family teacher's lora_file_keys) -------------------------------------
def read_lora_file(path: str | Path, family: str, modules: list[str],
                   field: str = "student.init_lora") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module -> float32 (A, B) of a LoRA file for the adapted ``modules``, its alpha / rank scale folded into B.

    Every factor in the file must belong to one of ``modules``: a layer the adapters do not cover could not be
    trained from it, so such a file is refused rather than partly read.
    """
    from safetensors.torch import load_file

    field = f"{field} {str(path)!r}"
    try:
        tensors = load_file(str(Path(path).expanduser()))
    except Exception as e:  # a missing, foreign or damaged file: one line naming it
        raise ConfigError(f"{field} cannot be read as a LoRA safetensors file ({e})") from None
    out, used = {}, set()
    for module in modules:
        down, up = family_teacher(family).lora_file_keys(module)
        if down in tensors and up in tensors:
            a, b = tensors[down].float(), tensors[up].float()
            alpha = tensors.get(down.replace(".lora_down.weight", ".alpha"))
            scale = float(alpha) / a.shape[0] if alpha is not None and down.endswith(".lora_down.weight") else 1.0
            out[module] = (a, b * scale)
            used |= {down, up, down.replace(".lora_down.weight", ".alpha")}
    rest = sorted(k for k in tensors if k not in used)
    if not out or rest:
        what = f"{len(rest)} tensors for layers the student's adapters do not cover (e.g. {rest[0]!r})" if rest \
            else f"no {family} LoRA factors"
        raise ConfigError(f"{field} has {what}; give a LoRA of this {family} teacher's attention / feed-forward "
                          "layers (as `dpdmd export --format lora` writes them)")
    return out
