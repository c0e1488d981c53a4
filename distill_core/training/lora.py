"""LoRA for the student and the fake score (peft); the state dicts around it are in ``adapters``.

With ``student.lora_rank > 0`` both trainable networks keep the teacher's
weights frozen (in bf16 when the run uses bf16 autocast with a bf16 teacher)
and train low-rank adapters in float32 on every attention and feed-forward
linear layer. B starts at zero, so both networks start exactly at the teacher,
as in full fine-tuning. Checkpoints hold only the adapters (the frozen part is
re-read from the teacher folder, bit-identical); exports merge them, so every
exported student has the teacher's layout.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError
from .adapters import ADAPTER

# attention and feed-forward projections (matched as module-name suffixes, Linear layers only)
TARGETS: dict[str, tuple[str, ...]] = {
    "sd3": ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
            "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"),
    "sdxl": ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"),
    "builtin": ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"),
}


def target_modules(net: nn.Module, family: str) -> list[str]:
    suffixes = TARGETS[family]
    return [name for name, m in net.named_modules()
            if isinstance(m, nn.Linear) and any(name == s or name.endswith("." + s) for s in suffixes)]


def add_lora(net: nn.Module, rank: int, family: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """Freeze ``net`` (cast to ``dtype``) and inject trainable float32 rank-``rank`` adapters in place.

    The random A matrices are drawn from ``seed`` (not the global RNG), so a
    run and its resumed twin start from the same adapters.
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = target_modules(net, family)
    if not targets:
        raise CheckpointError(f"no LoRA target layers found in the {family} network")
    nn.Module.to(net.requires_grad_(False), dtype)  # nn.Module's: diffusers' .to warns on dtype casts
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=True, lora_dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, net, adapter_name=ADAPTER)
    for name, p in net.named_parameters():
        if ".lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)
    return net
