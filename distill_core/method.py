"""DP-DMD as pure functions of tensors (arXiv 2602.03139; equations cited per function).

A "predictor" is a callable ``(x, levels) -> raw network prediction`` with the
prompt conditioning (and CFG, for the teacher) already bound, so nothing here
knows which family of teacher it is working with. Levels and the raw prediction
are interpreted by a ``NoiseSchedule``. ``DPDMD`` holds one run's settings;
``dpdmd_student_loss`` (Eq. 8) and ``fake_update_loss`` are the two losses the
training loop descends.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .schedules import NoiseSchedule

Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _levels(level: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(level), dtype=torch.float32)


@dataclass
class Step:
    """One sampler step: the raw prediction, the x0 it implies (float32) and the state it leads to."""
    pred: torch.Tensor
    x0: torch.Tensor
    x_next: torch.Tensor


def sampler_step(predict: Predictor, schedule: NoiseSchedule, x: torch.Tensor, level: float,
                 next_level: float) -> Step:
    """The deterministic step every rollout is made of: DDIM from ``level`` to ``next_level`` (Euler for flow)."""
    lv = _levels(level, x)
    pred = predict(x, lv)
    x0, eps = schedule.split(x, lv, pred)
    return Step(pred, x0, schedule.ddim_step(x0, eps, _levels(next_level, x)).to(x.dtype))


@torch.no_grad()
def ddim_sample(predict: Predictor, schedule: NoiseSchedule, x: torch.Tensor, levels: list[float],
                on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Deterministic sampler through ``levels`` (Euler for flow models); returns the final state.

    With ``levels`` ending at the clean level this is a full sample; ending
    earlier it is the teacher's partial ODE solution (the anchor rollout).
    ``on_step(i, x0_hat)`` is called after step i (progress bars and previews).
    """
    for i, (t, t_next) in enumerate(zip(levels[:-1], levels[1:])):
        step = sampler_step(predict, schedule, x, t, t_next)
        x = step.x_next
        if on_step is not None:
            on_step(i, step.x0)
    return x


@torch.no_grad()
def teacher_anchor(predict_cfg: Predictor, schedule: NoiseSchedule, z: torch.Tensor,
                   teacher_levels: list[float], k: int) -> tuple[torch.Tensor, float]:
    """x_{t_k}: k deterministic CFG steps of the teacher's own schedule from the student's noise z.

    t_k is that schedule's (shifted) level after k steps, not k/N (Sec. 3.2); k = N
    (t_k clean) makes the anchor the teacher's full sample (the paper's k = 30 ablation).
    Must be an ODE: a stochastic rollout gives no per-noise target (authors, dpdmd#2).
    """
    if not 1 <= k <= len(teacher_levels) - 1:
        raise ValueError(f"anchor step k={k} must lie in 1..{len(teacher_levels) - 1}")
    return ddim_sample(predict_cfg, schedule, z, teacher_levels[: k + 1]), teacher_levels[k]


def velocity_target(z: torch.Tensor, x_tk: torch.Tensor, t_k: float, t_0: float = 1.0) -> torch.Tensor:
    """Eq. 6: the velocity carrying z (at t_0 = 1) straight to x_{t_k}: (z - x_{t_k}) / (1 - t_k)."""
    return (z.float() - x_tk.float()) / (t_0 - t_k)


@torch.no_grad()
def anchor_x0(predict_cfg: Predictor, schedule: NoiseSchedule, x_tk: torch.Tensor, t_k: float) -> torch.Tensor:
    """Eq. 39: the teacher's (CFG) x0 prediction at the anchor; a clean anchor (k = N) is its own x0."""
    if t_k == schedule.clean_level:
        return x_tk.float()
    lv = _levels(t_k, x_tk)
    return schedule.to_x0(x_tk, lv, predict_cfg(x_tk, lv))


def first_step_target(schedule: NoiseSchedule, requested: str = "auto") -> str:
    """method.anchor_target resolved for a schedule: 'auto' is 'velocity' (Eq. 6-7) for flow, else 'x0' (Eq. 39-41)."""
    flow = schedule.prediction_type == "flow"
    if requested == "auto":
        return "velocity" if flow else "x0"
    if requested == "velocity" and not flow:
        raise ConfigError("method.anchor_target = 'velocity' needs a flow teacher; use 'x0' (Appendix C) "
                          f"for the {schedule.prediction_type} teacher")
    return requested


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
    if backprop == "one_step":
        pick = pick if pick is not None else n - 1
        if not 1 <= pick <= n - 1:
            raise ValueError(f"one_step backprop trains a step in 1..{n - 1}, got {pick}")
        if not detach_first:
            raise ValueError("one_step backprop implies the detach; use method 'dpdmd'")
    first = sampler_step(predict, schedule, z, levels[0], levels[1])
    x = first.x_next.detach() if detach_first else first.x_next  # the method, not an optimisation (Fig. 5)
    if backprop == "one_step":
        with torch.no_grad():  # DMD2's backward simulation: only step ``pick`` keeps its graph
            for i in range(1, pick):
                x = sampler_step(predict, schedule, x, levels[i], levels[i + 1]).x_next
        return Rollout(sampler_step(predict, schedule, x, levels[pick], levels[pick + 1]).x0, first.pred, first.x0)
    for i in range(1, n):
        x = sampler_step(predict, schedule, x, levels[i], levels[i + 1]).x_next
    return Rollout(x, first.pred, first.x0)


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
             normalizer: str, shifted: bool = True) -> DMDTerms:
    """Re-noise the student's sample, compare teacher (CFG) and fake-score x0 predictions (no grad).

    The re-noise level's noise fraction is U[low, high], per sample or one per batch, through the
    schedule's shift or not (``NoiseSchedule.sample_levels``).
    """
    b = x0.shape[0]
    with torch.no_grad():
        levels = schedule.sample_levels(b if per_sample else 1, low, high, generator, shifted).expand(b).contiguous()
        eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        xt = schedule.add_noise(x0.detach(), eps, levels).to(x0.dtype)
        x0_real = schedule.to_x0(xt, levels, predict_real_cfg(xt, levels))
        x0_fake = schedule.to_x0(xt, levels, predict_fake(xt, levels))
        grad = dmd_gradient(x0.detach(), x0_real, x0_fake, xt if normalizer == "xt" else None)
    return DMDTerms(dmd_loss(x0, grad), float(grad.abs().mean()))


def fake_score_loss(predict_fake: Predictor, schedule: NoiseSchedule, x0: torch.Tensor,
                    generator: torch.Generator, shifted: bool = True) -> torch.Tensor:
    """The fake score's denoising loss on detached student samples (its own parameterisation).

    Its noise fraction is U[0, 1], through the schedule's shift (the authors' script) or not (DMD2).
    """
    x0 = x0.detach()
    b = x0.shape[0]
    levels = schedule.sample_levels(b, 0.0, 1.0, generator, shifted)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    xt = schedule.add_noise(x0, eps, levels).to(x0.dtype)
    return F.mse_loss(predict_fake(xt, levels).float(), schedule.training_target(x0.float(), eps.float()))


@dataclass(frozen=True)
class TeacherSplit:
    """The teacher's two predictions for Decoupled-DMD: with the prompt and with the null prompt, and the CFG
    scale w that CFG-DMD's real score combines them with."""
    cond: Predictor
    uncond: Predictor
    guidance: float


def decoupled_dmd_term(x0: torch.Tensor, schedule: NoiseSchedule, teacher: TeacherSplit, predict_fake: Predictor,
                       generator: torch.Generator, *, start_level: float, low: float, high: float, per_sample: bool,
                       normalizer: str, shifted: bool = True) -> DMDTerms:
    """Decoupled-DMD (arXiv 2511.22677): CFG-DMD's gradient split into its two terms (Eq. 6),
    CA = (w - 1) (x0_real^cond - x0_real^uncond) and DM = x0_real^cond - x0_fake^cond,
    each at its own re-noise level with its own noise (the decoupled-hybrid schedule, Eq. 8): tau_CA's noise
    fraction U[low, min(high, u(start_level))), cleaner than the level the trained steps start from; tau_DM's
    U[low, high]. Each term is divided by its own mean |ref - x0_real^cond| (as dmd_gradient) and the two
    regressions are added, so x0 moves by CA / n_CA + DM / n_DM.
    """
    b = x0.shape[0]
    with torch.no_grad():
        ca_high = min(high, schedule.noise_fraction(start_level, shifted))

        def renoised(lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
            levels = schedule.sample_levels(b if per_sample else 1, lo, hi, generator, shifted).expand(b).contiguous()
            eps = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
            return schedule.add_noise(x0.detach(), eps, levels).to(x0.dtype), levels

        xt, lv = renoised(low, ca_high)
        cond, uncond = (schedule.to_x0(xt, lv, p(xt, lv)) for p in (teacher.cond, teacher.uncond))
        # CA as a gradient g (x0 moves by -g): "fake" = cond - CA, so dmd_gradient gives -CA / n_CA
        g_ca = dmd_gradient(x0.detach(), cond, cond - (teacher.guidance - 1) * (cond - uncond),
                            xt if normalizer == "xt" else None)
        xt, lv = renoised(low, high)
        g_dm = dmd_gradient(x0.detach(), schedule.to_x0(xt, lv, teacher.cond(xt, lv)),
                            schedule.to_x0(xt, lv, predict_fake(xt, lv)), xt if normalizer == "xt" else None)
    return DMDTerms(dmd_loss(x0, g_ca) + dmd_loss(x0, g_dm), float((g_ca + g_dm).abs().mean()))


# ---- the two losses of a training step ------------------------------------------------------------
@dataclass(frozen=True)
class DPDMD:
    """One run's method: its schedule and levels, and the settings of the config's [method] section."""
    schedule: NoiseSchedule
    student_levels: list[float]
    teacher_levels: list[float]
    diversity_weight: float  # lambda of Eq. 8 (0: plain DMD, no anchor rollout)
    anchor_step: int  # k
    anchor_target: str  # velocity (Eq. 6-7) | x0 (Eq. 39-41), see first_step_target
    detach_first: bool
    backprop: str  # all | one_step
    renoise_low: float
    renoise_high: float
    renoise_per_sample: bool
    renoise_shifted: bool
    normalizer: str  # x0 | xt
    fake_t_shifted: bool
    objective: str = "dmd"  # dmd (CFG-DMD, Eq. 4-5) | decoupled_dmd (decoupled_dmd_term) for the steps DMD trains


@dataclass
class StudentLoss:
    loss: torch.Tensor  # Eq. 8, what the student descends
    dmd: torch.Tensor
    div: torch.Tensor
    dmd_grad: float  # mean |g|


def first_step_loss(m: DPDMD, roll: Rollout, z: torch.Tensor, x_tk: torch.Tensor, t_k: float,
                    predict_real_cfg: Predictor) -> torch.Tensor:
    """L_div: Eq. 7 (the first velocity against Eq. 6's) or Eq. 41 (the first x0 against Eq. 39's)."""
    if m.anchor_target == "velocity":
        return diversity_loss(roll.first_pred, velocity_target(z, x_tk, t_k, m.student_levels[0]))
    return diversity_loss(roll.first_x0, anchor_x0(predict_real_cfg, m.schedule, x_tk, t_k))


def one_step_pick(m: DPDMD, generator: torch.Generator) -> int | None:
    """The step that carries the DMD gradient under one_step backprop (uniform in 1..N-1); None otherwise."""
    if m.backprop != "one_step":
        return None
    return int(torch.randint(1, len(m.student_levels) - 1, (1,), generator=generator))


def trained_start(m: DPDMD, pick: int | None) -> float:
    """The level the steps the DMD loss trains start from: step ``pick``'s (one_step), step 2's after the detach,
    else the noise the rollout starts at (Decoupled-DMD's tau_CA stays cleaner than it)."""
    return m.student_levels[pick if pick is not None else int(m.detach_first)]


def dpdmd_student_loss(m: DPDMD, predict: Predictor, predict_real_cfg: Predictor, predict_fake: Predictor,
                       z: torch.Tensor, generator: torch.Generator, pick: int | None = None,
                       teacher: TeacherSplit | None = None) -> StudentLoss:
    """Eq. 8: L = L_DMD (steps after the detach) + lambda * L_div (first step), from the student's noise z.

    ``generator`` draws the DMD re-noising; ``pick`` is one_step_pick's draw; ``teacher``: the split teacher
    Decoupled-DMD's objective needs (m.objective 'decoupled_dmd'), in place of L_DMD's CFG-DMD term.
    """
    lam = m.diversity_weight
    if lam > 0:
        x_tk, t_k = teacher_anchor(predict_real_cfg, m.schedule, z, m.teacher_levels, m.anchor_step)
    roll = student_rollout(predict, m.schedule, z, m.student_levels, detach_first=m.detach_first,
                           backprop=m.backprop, pick=pick)
    renoise = dict(low=m.renoise_low, high=m.renoise_high, per_sample=m.renoise_per_sample, normalizer=m.normalizer,
                   shifted=m.renoise_shifted)
    if m.objective == "decoupled_dmd":
        if teacher is None:
            raise ValueError("the decoupled_dmd objective needs the teacher's conditional and unconditional predictors")
        dmd = decoupled_dmd_term(roll.x0, m.schedule, teacher, predict_fake, generator,
                                 start_level=trained_start(m, pick), **renoise)
    else:
        dmd = dmd_term(roll.x0, m.schedule, predict_real_cfg, predict_fake, generator, **renoise)
    div = first_step_loss(m, roll, z, x_tk, t_k, predict_real_cfg) if lam > 0 else torch.zeros((), device=z.device)
    return StudentLoss(dmd.loss + lam * div, dmd.loss, div, dmd.grad_norm)


def fake_update_loss(m: DPDMD, predict: Predictor, predict_fake: Predictor, z: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """The fake score's loss on a fresh student sample from z (made as at inference, no gradient to the student)."""
    x0 = ddim_sample(predict, m.schedule, z, m.student_levels)
    return fake_score_loss(predict_fake, m.schedule, x0, generator, m.fake_t_shifted)
