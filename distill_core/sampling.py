"""Sampling the teacher and students from fixed seeds.

Each seed has its own generator, so a seed gives the same noise whatever the
batch it is drawn in: teacher and students are compared on identical noise.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .method import ddim_sample
from .teachers.base import Cond, Teacher, cond_to, index_cond


def seed_noise(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Standard normal noise, one independent generator per seed."""
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds])


def grid_seeds(num_prompts: int, seeds: Sequence[int]) -> tuple[list[int], list[int]]:
    """Prompt index and seed for each sample of a prompts x seeds grid, prompt-major."""
    return ([p for p in range(num_prompts) for _ in seeds], [s for _ in range(num_prompts) for s in seeds])


@torch.no_grad()
def sample_latents(teacher: Teacher, net: nn.Module, cond: Cond, noise: torch.Tensor, levels: list[float],
                   guidance: float = 1.0, batch_size: int = 256, device: torch.device | str = "cpu",
                   progress=None, on_step=None) -> torch.Tensor:
    """Deterministic samples of ``net`` for conditioning ``cond`` (batch-aligned with ``noise``).

    ``progress(n)`` is called after each batch of n samples, ``on_step(i, x0_hat)`` after each step.
    """
    out = []
    null = teacher.null_condition()
    batch_size = min(batch_size, teacher.max_sample_batch or batch_size)
    for start in range(0, noise.shape[0], batch_size):
        idx = torch.arange(start, min(start + batch_size, noise.shape[0]))
        c = cond_to(index_cond(cond, idx), device)
        n = cond_to({k: v.repeat_interleave(len(idx), 0) for k, v in null.items()}, device)
        predict = (lambda x, lv, c=c, n=n: teacher.predict_cfg(net, x, lv, c, n, guidance))
        out.append(ddim_sample(predict, teacher.schedule, noise[idx].to(device), levels, on_step).float().cpu())
        if progress is not None:
            progress(len(idx))
    return torch.cat(out)


def sample_grid(teacher: Teacher, net: nn.Module, prompts: Sequence[str], seeds: Sequence[int],
                levels: list[float], guidance: float = 1.0, batch_size: int = 256,
                device: torch.device | str = "cpu", progress=None, on_step=None) -> torch.Tensor:
    """Latents for every (prompt, seed), prompt-major: shape (len(prompts) * len(seeds), C, H, W)."""
    cond, noise = grid_inputs(teacher, prompts, seeds)
    return sample_latents(teacher, net, cond, noise, levels, guidance, batch_size, device, progress, on_step)


def grid_inputs(teacher: Teacher, prompts: Sequence[str], seeds: Sequence[int]) -> tuple[Cond, torch.Tensor]:
    """Conditioning and noise for every (prompt, seed), prompt-major."""
    cond = teacher.encode_prompts(list(prompts))
    p_idx, s_list = grid_seeds(len(prompts), seeds)
    return index_cond(cond, torch.tensor(p_idx)), seed_noise(s_list, teacher.latent_shape())
