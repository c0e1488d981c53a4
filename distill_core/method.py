"""DP-DMD as pure functions of tensors (arXiv 2602.03139; equations cited per function).

A "predictor" is a callable ``(x, levels) -> raw network prediction`` with the
prompt conditioning (and CFG, for the teacher) already bound, so nothing here
knows which family of teacher it is working with. Levels and the raw prediction
are interpreted by a ``NoiseSchedule``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .schedules import NoiseSchedule

Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _levels(level: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(level), dtype=torch.float32)


@torch.no_grad()
def ddim_sample(predict: Predictor, schedule: NoiseSchedule, x: torch.Tensor, levels: list[float],
                on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Deterministic sampler through ``levels`` (Euler for flow models); returns the final state.

    With ``levels`` ending at the clean level this is a full sample; ending
    earlier it is the teacher's partial ODE solution (the anchor rollout).
    ``on_step(i, x0_hat)`` is called after step i (progress bars and previews).
    """
    for i, (t, t_next) in enumerate(zip(levels[:-1], levels[1:])):
        lv = _levels(t, x)
        x0, eps = schedule.split(x, lv, predict(x, lv))
        x = schedule.ddim_step(x0, eps, _levels(t_next, x)).to(x.dtype)
        if on_step is not None:
            on_step(i, x0)
    return x


@torch.no_grad()
def teacher_anchor(predict_cfg: Predictor, schedule: NoiseSchedule, z: torch.Tensor,
                   teacher_levels: list[float], k: int) -> tuple[torch.Tensor, float]:
    """x_{t_k}: k deterministic CFG steps of the teacher's own schedule from the student's noise z.

    t_k is that schedule's (shifted) level after k steps, not k/N (Sec. 3.2).
    Must be an ODE: a stochastic rollout gives no per-noise target (authors, dpdmd#2).
    """
    if not 1 <= k < len(teacher_levels) - 1:
        raise ValueError(f"anchor step k={k} must lie in 1..{len(teacher_levels) - 2}")
    return ddim_sample(predict_cfg, schedule, z, teacher_levels[: k + 1]), teacher_levels[k]


def velocity_target(z: torch.Tensor, x_tk: torch.Tensor, t_k: float, t_0: float = 1.0) -> torch.Tensor:
    """Eq. 6: the velocity carrying z (at t_0 = 1) straight to x_{t_k}: (z - x_{t_k}) / (1 - t_k)."""
    return (z.float() - x_tk.float()) / (t_0 - t_k)


def diversity_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 7 / Eq. 41: mean squared error of the student's first step against the teacher target."""
    return F.mse_loss(pred.float(), target.detach().float())


@dataclass
class Rollout:
    """A student rollout: its final sample and what the first step predicted."""
    x0: torch.Tensor  # the final sample (carries gradient as configured)
    first_pred: torch.Tensor  # raw prediction at the first level (carries gradient)
    first_x0: torch.Tensor  # x0 implied by the first prediction (float32)


def student_rollout(predict: Predictor, schedule: NoiseSchedule, z: torch.Tensor, levels: list[float], *,
                    detach_first: bool, backprop: str = "all", pick: int | None = None) -> Rollout:
    """Roll the student through its N levels from noise z (Sec. 3.3, Algorithm 1).

    detach_first: stop the gradient after step one, so that the DMD loss on the
      final sample cannot reach the first step (DP-DMD); False gives plain DMD
      and the no-detach ablation.
    backprop: "all" keeps the graph through every later step (authors' code);
      "one_step" runs the later steps without grad except step ``pick``
      (1..N-1, DMD2-style backward simulation), whose x0 prediction is returned.
    """
    n = len(levels) - 1
    lv0 = _levels(levels[0], z)
    first_pred = predict(z, lv0)
    x0, eps = schedule.split(z, lv0, first_pred)
    first_x0 = x0
    if backprop == "one_step":
        pick = pick if pick is not None else n - 1
        if not 1 <= pick <= n - 1:
            raise ValueError(f"one_step backprop trains a step in 1..{n - 1}, got {pick}")
        with torch.no_grad():
            x = schedule.ddim_step(x0.detach(), eps.detach(), _levels(levels[1], z)).to(z.dtype)
            for i in range(1, pick):
                lv = _levels(levels[i], x)
                x0_i, eps_i = schedule.split(x, lv, predict(x, lv))
                x = schedule.ddim_step(x0_i, eps_i, _levels(levels[i + 1], x)).to(z.dtype)
        lv = _levels(levels[pick], x)
        x0_pick, _ = schedule.split(x, lv, predict(x, lv))
        if not detach_first:
            raise ValueError("one_step backprop implies the detach; use method 'dpdmd'")
        return Rollout(x0_pick, first_pred, first_x0)
    x = schedule.ddim_step(x0, eps, _levels(levels[1], z)).to(z.dtype)
    if detach_first:
        x = x.detach()  # the method, not an optimisation (paper Fig. 5)
    for i in range(1, n):
        lv = _levels(levels[i], x)
        x0_i, eps_i = schedule.split(x, lv, predict(x, lv))
        x = schedule.ddim_step(x0_i, eps_i, _levels(levels[i + 1], x)).to(z.dtype)
    return Rollout(x, first_pred, first_x0)


def dmd_gradient(x0: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor,
                 reference: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 4-5: g = (fake - real) / mean_{C,H,W} |ref - real|, NaNs zeroed.

    ``reference`` is the clean sample x0 (DMD2, default) or the re-noised x_t
    (the authors' script). Descending 0.5 ||x0 - sg(x0 - g)||^2 moves x0 toward
    the teacher's prediction and away from the fake score's.
    """
    ref = (x0 if reference is None else reference).float()
    dims = tuple(range(1, x0.dim()))
    norm = (ref - x0_real.float()).abs().mean(dim=dims, keepdim=True)
    return torch.nan_to_num((x0_fake.float() - x0_real.float()) / norm)


def dmd_loss(x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Eq. 8's DMD term as a regression to a stop-gradient target: its gradient w.r.t. x0 is grad / numel."""
    return 0.5 * F.mse_loss(x0.float(), (x0.float() - grad).detach())


@dataclass
class DMDTerms:
    loss: torch.Tensor
    grad_norm: float  # mean |g|, a health signal


def dmd_term(x0: torch.Tensor, schedule: NoiseSchedule, predict_real_cfg: Predictor, predict_fake: Predictor,
             generator: torch.Generator, *, low: float, high: float, per_sample: bool,
             normalizer: str) -> DMDTerms:
    """Re-noise the student's sample, compare teacher (CFG) and fake-score x0 predictions (no grad)."""
    b = x0.shape[0]
    with torch.no_grad():
        levels = schedule.sample_levels(b if per_sample else 1, low, high, generator).expand(b).contiguous()
        eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        xt = schedule.add_noise(x0.detach(), eps, levels).to(x0.dtype)
        x0_real = schedule.to_x0(xt, levels, predict_real_cfg(xt, levels))
        x0_fake = schedule.to_x0(xt, levels, predict_fake(xt, levels))
        grad = dmd_gradient(x0.detach(), x0_real, x0_fake, xt if normalizer == "xt" else None)
    return DMDTerms(dmd_loss(x0, grad), float(grad.abs().mean()))


def fake_score_loss(predict_fake: Predictor, schedule: NoiseSchedule, x0: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
    """The fake score's denoising loss on detached student samples (its own parameterisation, uniform t)."""
    x0 = x0.detach()
    b = x0.shape[0]
    levels = schedule.sample_levels(b, 0.0, 1.0, generator)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    xt = schedule.add_noise(x0, eps, levels).to(x0.dtype)
    return F.mse_loss(predict_fake(xt, levels).float(), schedule.training_target(x0.float(), eps.float()))
