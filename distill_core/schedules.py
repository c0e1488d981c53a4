"""Noise schedules: where a noise level puts a sample, and how to step between levels.

Two families, one small interface, pure functions of tensors (the style of
diffusers' schedulers):

- ``FlowSchedule`` (SD3 / SD3.5 and the built-in teacher): a level is the flow
  time t = sigma in [0, 1], x_t = (1 - t) x0 + t eps, the network predicts the
  velocity eps - x0 and sees t * 1000.
- ``VPSchedule`` (SDXL): a level is a discrete DDPM timestep, x_t = sqrt(abar) x0
  + sqrt(1 - abar) eps, the network predicts eps and sees the timestep.

Every deterministic sampler in the project is the DDIM step
x' = alpha(t') x0_hat + sigma(t') eps_hat, which for flow models *is* the Euler
step x' = x + (t' - t) v and for VP models is k-diffusion's Euler step, i.e. what
the teachers' own diffusers schedulers do. A rollout ends at ``CLEAN``, whose
alpha is 1 and sigma 0, so its last step returns the x0 prediction.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

CLEAN = -1.0  # the level of clean data in a VP schedule (flow uses t = 0)


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample (or scalar) tensor over the trailing dims of ``like``."""
    v = v.to(device=like.device, dtype=torch.float32)
    if v.dim() == 0:
        v = v.expand(like.shape[0])
    return v.view(-1, *([1] * (like.dim() - 1)))


class NoiseSchedule(ABC):
    """The interface the method code is written against."""

    prediction_type: str  # "flow" (velocity) or "epsilon"
    clean_level: float  # the level of clean data, where every sampler ends (alpha 1, sigma 0)

    @abstractmethod
    def alpha_sigma(self, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Signal and noise coefficients at ``levels``."""

    @abstractmethod
    def model_timestep(self, levels: torch.Tensor) -> torch.Tensor:
        """The timestep value the network is conditioned on."""

    @abstractmethod
    def split(self, x: torch.Tensor, levels: torch.Tensor, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) from a raw network prediction at ``levels``."""

    @abstractmethod
    def training_target(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """What the network is trained to predict for a sample made from x0 and eps."""

    @abstractmethod
    def sampling_levels(self, num_steps: int) -> list[float]:
        """The levels of a ``num_steps`` sampler, ending with the clean level."""

    @abstractmethod
    def sample_levels(self, n: int, low: float, high: float, generator: torch.Generator,
                      shifted: bool = True) -> torch.Tensor:
        """``n`` random levels whose noise fraction u ~ U[low, high] (for re-noising).

        shifted: map u through the schedule's shift, as its sampler does (flow teachers with a
        shift); False takes u itself (DMD2). A schedule without a shift ignores it.
        """

    @abstractmethod
    def noise_fraction(self, level: float, shifted: bool = True) -> float:
        """The noise fraction u whose ``sample_levels`` level is ``level`` (its inverse)."""

    @abstractmethod
    def comfy_sigmas(self, levels: list[float]) -> list[float]:
        """ComfyUI's sigma for each level (flow: t itself; VP: sqrt((1 - abar) / abar))."""

    @abstractmethod
    def describe(self) -> dict:
        """A JSON-able description, stored with checkpoints and exported students."""

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(levels)
        return _expand(alpha, x0) * x0 + _expand(sigma, x0) * eps

    def ddim_step(self, x0: torch.Tensor, eps: torch.Tensor, next_levels: torch.Tensor) -> torch.Tensor:
        """Deterministic step to ``next_levels`` (Euler for flow models)."""
        return self.add_noise(x0, eps, next_levels).to(x0.dtype)

    def to_x0(self, x: torch.Tensor, levels: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        return self.split(x, levels, pred)[0]


def flow_shift(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift of flow times: shift * s / (1 + (shift - 1) * s)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


class FlowSchedule(NoiseSchedule):
    """Rectified flow with a static shift, as diffusers' FlowMatchEulerDiscreteScheduler.

    spacing: how a sampler of n steps places its levels before the shift. 'timesteps' is the scheduler's
    own ``set_timesteps(n)`` (SD3 pipelines); 'linear' is sigmas = linspace(1, 1/n, n), which the FLUX.2
    and Z-Image pipelines pass to the scheduler themselves.
    """

    prediction_type = "flow"
    clean_level = 0.0
    SPACINGS = ("timesteps", "linear")

    def __init__(self, shift: float = 1.0, num_train_timesteps: int = 1000, spacing: str = "timesteps") -> None:
        if spacing not in self.SPACINGS:
            raise ValueError(f"flow spacing {spacing!r} is not supported; use one of {', '.join(self.SPACINGS)}")
        self.shift = float(shift)
        self.num_train_timesteps = int(num_train_timesteps)
        self.spacing = spacing

    def with_shift(self, shift: float) -> "FlowSchedule":
        """The same schedule under another shift (a student sampling on its own levels)."""
        return FlowSchedule(shift, self.num_train_timesteps, self.spacing)

    def alpha_sigma(self, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(levels, dtype=torch.float32)
        return 1.0 - t, t

    def model_timestep(self, levels: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(levels, dtype=torch.float32) * self.num_train_timesteps

    def split(self, x, levels, pred):
        t = _expand(torch.as_tensor(levels), x)
        x32, v = x.float(), pred.float()
        return x32 - t * v, x32 + (1 - t) * v

    def training_target(self, x0, eps):
        return eps - x0

    def sampling_levels(self, num_steps: int) -> list[float]:
        """Exactly diffusers' FlowMatchEulerDiscreteScheduler sigmas: of set_timesteps(num_steps) ('timesteps'),
        or of set_timesteps(sigmas=linspace(1, 1/n, n)) under a static shift ('linear')."""
        if self.spacing == "linear":
            ts = torch.linspace(1, 1 / num_steps, num_steps, dtype=torch.float64)
            return [float(s) for s in flow_shift(ts, self.shift)] + [0.0]
        n = self.num_train_timesteps
        table = flow_shift(torch.linspace(1, n, n, dtype=torch.float64).flip(0) / n, self.shift)
        t_max, t_min = float(table[0]) * n, float(table[-1]) * n
        ts = torch.linspace(t_max, t_min, num_steps, dtype=torch.float64) / n
        return [float(s) for s in flow_shift(ts, self.shift)] + [0.0]

    def sample_levels(self, n, low, high, generator, shifted=True):
        u = low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)
        return (flow_shift(u, self.shift) if shifted else u).float()

    def noise_fraction(self, level, shifted=True):
        return level / (self.shift - (self.shift - 1) * level) if shifted else level

    def comfy_sigmas(self, levels):
        return [float(v) for v in levels]

    def describe(self) -> dict:
        spacing = {} if self.spacing == "timesteps" else {"spacing": self.spacing}  # (files before spacing: timesteps)
        return {"type": "flow", "shift": self.shift, "num_train_timesteps": self.num_train_timesteps, **spacing}


class VPSchedule(NoiseSchedule):
    """A discrete variance-preserving DDPM schedule with epsilon prediction (SDXL)."""

    prediction_type = "epsilon"
    clean_level = CLEAN

    def __init__(self, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "scaled_linear", num_train_timesteps: int = 1000) -> None:
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        self.beta_schedule = beta_schedule
        self.num_train_timesteps = int(num_train_timesteps)
        n = self.num_train_timesteps
        if beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float64) ** 2
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
        else:
            raise ValueError(f"beta_schedule {beta_schedule!r} is not supported; use 'scaled_linear' or 'linear'")
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    def _abar(self, levels: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(levels, dtype=torch.float64)
        clean = t < 0
        idx = t.clamp(0, self.num_train_timesteps - 1).round().long()
        return torch.where(clean, torch.ones_like(t), self.alphas_cumprod[idx])

    def alpha_sigma(self, levels):
        abar = self._abar(levels)
        return abar.sqrt().float(), (1 - abar).sqrt().float()

    def model_timestep(self, levels):
        return torch.as_tensor(levels, dtype=torch.float32).clamp(min=0).round()

    def split(self, x, levels, pred):
        alpha, sigma = self.alpha_sigma(levels)
        a, s = _expand(alpha, x), _expand(sigma, x)
        x32, eps = x.float(), pred.float()
        return (x32 - s * eps) / a, eps

    def training_target(self, x0, eps):
        return eps

    def sampling_levels(self, num_steps: int, spacing: str = "trailing", steps_offset: int = 0) -> list[float]:
        """diffusers' timestep spacings: 'trailing' (default) starts at pure noise (999, 749, 499, 249
        for 4); 'leading' is what SDXL's own scheduler config asks for (steps_offset 1: 751, 501, 251, 1).
        """
        n = self.num_train_timesteps
        if spacing == "trailing":
            steps = [round(n - i * n / num_steps) - 1 for i in range(num_steps)]
        elif spacing == "leading":
            steps = [(num_steps - 1 - i) * (n // num_steps) + steps_offset for i in range(num_steps)]
        else:
            raise ValueError(f"timestep spacing {spacing!r} is not supported; use 'trailing' or 'leading'")
        return [float(s) for s in steps] + [CLEAN]

    def sample_levels(self, n, low, high, generator, shifted=True):
        u = low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)
        return (u * (self.num_train_timesteps - 1)).round().float()

    def noise_fraction(self, level, shifted=True):
        return max(level, 0.0) / (self.num_train_timesteps - 1)

    def comfy_sigmas(self, levels):
        out = []
        for level in levels:
            abar = float(self._abar(torch.tensor(level)))
            out.append(0.0 if level < 0 else math.sqrt((1 - abar) / abar))
        return out

    def describe(self) -> dict:
        return {"type": "vp", "beta_start": self.beta_start, "beta_end": self.beta_end,
                "beta_schedule": self.beta_schedule, "num_train_timesteps": self.num_train_timesteps}


def schedule_from_description(desc: dict) -> NoiseSchedule:
    """Rebuild a schedule from ``NoiseSchedule.describe()`` (checkpoints, exported students)."""
    kind = desc.get("type")
    args = {k: v for k, v in desc.items() if k != "type"}
    if kind == "flow":
        return FlowSchedule(**args)
    if kind == "vp":
        return VPSchedule(**args)
    raise ValueError(f"unknown schedule type {kind!r}; expected 'flow' or 'vp'")
