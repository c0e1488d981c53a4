"""The teacher interface.

A teacher owns a frozen network, its noise schedule and its prompt encoders.
Conditioning is a flat dict of batch-first tensors (``Cond``), so CFG, batching
and caching are written once here for every family. The student and the fake
score are trainable copies of the teacher's network (same architecture, same
weights at start) made by ``make_trainable_copy``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from ..schedules import NoiseSchedule

Cond = dict[str, torch.Tensor]


def pad_cat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate along the batch dim, right-padding the other dims with zeros to the largest.

    Variable-length text embeddings (Z-Image's) travel padded next to a mask whose padding is 0 (False), so
    rows of different lengths join without a second code path; equal shapes are a plain ``torch.cat``.
    """
    if len({t.shape[1:] for t in tensors}) == 1:
        return torch.cat(list(tensors))
    size = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    out = []
    for t in tensors:
        pad = []
        for d in reversed(range(1, t.dim())):
            pad += [0, size[d - 1] - t.shape[d]]
        out.append(torch.nn.functional.pad(t, pad))
    return torch.cat(out)


def cat_cond(a: Cond, b: Cond) -> Cond:
    """Concatenate two conditionings along the batch dim (for one CFG forward)."""
    return {k: pad_cat([a[k], b[k]]) for k in a}


def index_cond(c: Cond, idx: torch.Tensor) -> Cond:
    return {k: v[idx.to(v.device)] for k, v in c.items()}


def repeat_cond(c: Cond, n: int) -> Cond:
    """Repeat a conditioning of batch 1 (or B) ``n`` times along the batch dim."""
    return {k: v.repeat_interleave(n, dim=0) for k, v in c.items()}


def cond_to(c: Cond, device: torch.device | str, dtype: torch.dtype | None = None) -> Cond:
    return {k: v.to(device=device, dtype=dtype if (dtype and v.is_floating_point()) else v.dtype)
            for k, v in c.items()}


class PromptBank:
    """Encoded training prompts, looked up by index; encoders can be released after.

    The default keeps every encoding in host memory; a teacher with huge prompt
    lists may return a subclass that pages them from disk.
    """

    def __init__(self, prompts: Sequence[str], cond: Cond, null: Cond) -> None:
        self.prompts = list(prompts)
        self._cond = cond
        self._null = null  # batch 1

    def __len__(self) -> int:
        return len(self.prompts)

    def get(self, indices: torch.Tensor) -> Cond:
        return index_cond(self._cond, indices.cpu())

    def null(self, n: int) -> Cond:
        return repeat_cond(self._null, n)


class Teacher(ABC):
    """A frozen multi-step text-to-image model the student is distilled from.

    The class also holds what the rest of the project reads about its family's network (LoRA layers, LoRA file
    layouts, the ModelSpec id), so that a family is its row in families.py and its module here, nothing else."""

    family: str  # a name in distill_core.families.FAMILIES
    max_sample_batch: int | None = None  # largest batch for sampling grids / evaluation (None: no limit)
    lora_targets: tuple[str, ...] = ()  # the Linear layers LoRA adapts, as module-name suffixes
    lora_key_formats: tuple = ()  # training.merge.KeyFormat: the LoRA file layouts teacher.loras reads
    modelspec_arch: str = ""  # ModelSpec's architecture id of an exported student (SwarmUI / kohya read it)

    @classmethod
    def modelspec_architecture(cls, network_config: dict) -> str:
        """ModelSpec's id for a network of this family with ``network_config`` (the family's name if it has none)."""
        return cls.modelspec_arch or cls.family

    @staticmethod
    def original_layer_names(net: nn.Module) -> dict[str, list]:
        """Original checkpoint layer name -> the diffusers layers (training.merge.Part) it holds, for LoRA files in
        those names (a ``KeyFormat`` with ``original``); a family whose trainers write diffusers names has none."""
        return {}

    @classmethod
    def lora_file_keys(cls, module: str) -> tuple[str, str]:
        """The (down / A, up / B) keys of one layer in the LoRA file diffusers and ComfyUI both load."""
        return f"transformer.{module}.lora_A.weight", f"transformer.{module}.lora_B.weight"

    def __init__(self, network: nn.Module, schedule: NoiseSchedule) -> None:
        self.network = network.requires_grad_(False).eval()
        self.schedule = schedule

    # ---- what each family implements -------------------------------------------------
    @abstractmethod
    def call_network(self, net: nn.Module, x: torch.Tensor, levels: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Raw prediction of ``net`` (teacher, student or fake: same architecture)."""

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        """Conditioning for each prompt; raises PromptError for prompts it cannot use."""

    @abstractmethod
    def null_condition(self) -> Cond:
        """The unconditional input (batch 1) used for classifier-free guidance."""

    @abstractmethod
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the space the models work in."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] for previews and metrics."""

    @abstractmethod
    def network_config(self) -> dict:
        """The network's constructor config, stored with exported students."""

    @abstractmethod
    def describe(self) -> dict:
        """Facts about the teacher for run folders and exported metadata."""

    # ---- shared ------------------------------------------------------------------------
    def lora_file_modules(self) -> list[str]:
        """The layers a LoRA file of a full fine-tune may carry: every linear and convolution layer, unless a
        family's loaders cannot place some of them."""
        return [name for name, m in self.network.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]

    def comfy_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The student's weights in the key layout ComfyUI's loader detects (default: the teacher's own)."""
        return state

    def make_trainable_copy(self) -> nn.Module:
        """A float32, trainable network initialised from the teacher's weights."""
        import copy

        net = copy.deepcopy(self.network).float().requires_grad_(True)
        return net.eval()  # eval: no dropout / label drop; gradients still flow

    def prompt_bank(self, prompts: Sequence[str], device: torch.device | str | None = None) -> PromptBank:
        """The encoded training prompts; ``device``: where text encoders run (default: the network's)."""
        return PromptBank(prompts, self.encode_prompts(prompts), self.null_condition())

    def predict(self, net: nn.Module, x: torch.Tensor, levels: torch.Tensor, cond: Cond) -> torch.Tensor:
        levels = torch.as_tensor(levels, dtype=torch.float32)
        if levels.dim() == 0:
            levels = levels.expand(x.shape[0])
        return self.call_network(net, x, levels, cond)

    def predict_cfg(self, net: nn.Module, x: torch.Tensor, levels: torch.Tensor, cond: Cond,
                    null: Cond, scale: float) -> torch.Tensor:
        """Classifier-free guidance u + s (c - u) in one batched forward (s = 1: cond only)."""
        if scale == 1.0:
            return self.predict(net, x, levels, cond)
        levels = torch.as_tensor(levels, dtype=torch.float32)
        if levels.dim() == 0:
            levels = levels.expand(x.shape[0])
        both = self.call_network(net, torch.cat([x, x]), torch.cat([levels, levels]), cat_cond(cond, null))
        c, u = both.chunk(2)
        return self.guide(c, u, scale, levels)

    def guide(self, c: torch.Tensor, u: torch.Tensor, scale: float, levels: torch.Tensor) -> torch.Tensor:
        """How the two predictions combine: u + s (c - u); a family whose pipeline adds to it overrides this."""
        return u + scale * (c - u)

    def student_schedule(self, shift: float | None = None) -> NoiseSchedule:
        """The schedule the student samples on: the teacher's, or (flow) the same under the student's own shift."""
        return self.schedule if shift is None else self.schedule.with_shift(shift)

    def student_levels(self, num_steps: int, shift: float | None = None) -> list[float]:
        return self.student_schedule(shift).sampling_levels(num_steps)

    def teacher_levels(self, num_steps: int) -> list[float]:
        return self.schedule.sampling_levels(num_steps)


def family_teacher(family: str) -> type[Teacher]:
    """The teacher class of any family: ``TEACHER`` of its module, distill_core/teachers/<family>.py."""
    from importlib import import_module

    return import_module(f"{__package__}.{family}").TEACHER
