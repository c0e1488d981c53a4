"""The method's math against hand computation (FastGen-style tiny CPU tests)."""
import dataclasses

import pytest
import torch

from distill_core.errors import ConfigError
from distill_core.method import (
    DPDMD, Rollout, anchor_x0, ddim_sample, dmd_gradient, dmd_loss, dmd_term, diversity_loss, dpdmd_student_loss,
    fake_score_loss, first_step_loss, first_step_target, sampler_step, student_rollout, teacher_anchor, velocity_target,
)
from distill_core.schedules import CLEAN, FlowSchedule, VPSchedule


def sdxl_abar() -> torch.Tensor:
    """SDXL's cumulative alphas by hand: scaled-linear betas from 0.00085 to 0.012 over 1000 steps."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def unshift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Inverse of SD3's shift t = s u / (1 + (s - 1) u), by hand."""
    return t / (shift - (shift - 1) * t)


def gaussian_flow_predictor(mu: float):
    """Exact velocity of data N(mu, I) under x_t = (1 - t) x0 + t eps."""
    def predict(x, levels):
        t = levels.view(-1, *([1] * (x.dim() - 1)))
        a, s = 1 - t, t
        x0 = mu + a / (a * a + s * s) * (x - a * mu)  # E[x0 | x_t] for unit variance
        return (x - x0) / s.clamp(min=1e-6)
    return predict


def test_anchor_level_and_velocity_target_by_hand():
    sched = FlowSchedule(shift=3.0)
    levels = sched.sampling_levels(30)
    assert levels[5] == pytest.approx(0.9353, abs=1e-4)
    assert levels[10] == pytest.approx(0.8513, abs=1e-4)
    # a constant-velocity "teacher": x moves by (t' - t) * v exactly, so x_{t_k} = z + (t_k - 1) v
    v = torch.full((2, 1, 2, 2), 0.5)
    z = torch.randn(2, 1, 2, 2)
    x_tk, t_k = teacher_anchor(lambda x, lv: v, sched, z, levels, 5)
    assert t_k == levels[5]
    torch.testing.assert_close(x_tk, z + (t_k - 1.0) * v)
    # Eq. 6 recovers that velocity: (z - x_tk) / (1 - t_k)
    torch.testing.assert_close(velocity_target(z, x_tk, t_k), v)


def test_anchor_refuses_k_outside_schedule():
    sched = FlowSchedule()
    with pytest.raises(ValueError, match="anchor step"):
        teacher_anchor(lambda x, lv: x, sched, torch.zeros(1, 1, 2, 2), sched.sampling_levels(4), 5)


def test_anchor_at_k_equal_n_is_the_teachers_full_sample():
    """k = N (t_k = 0, the paper's k = 30 ablation): a constant-velocity teacher lands at z - v; Eq. 6 gives v."""
    sched = FlowSchedule(shift=3.0)
    levels = sched.sampling_levels(6)
    v, z = torch.full((2, 1, 2, 2), 0.5), torch.randn(2, 1, 2, 2)
    x_tk, t_k = teacher_anchor(lambda x, lv: v, sched, z, levels, 6)
    assert t_k == 0.0
    torch.testing.assert_close(x_tk, z - v)
    torch.testing.assert_close(velocity_target(z, x_tk, t_k), v)

    # epsilon teachers: a clean anchor is its own x0 (Eq. 39 with abar = 1), the teacher is not asked again
    calls = []
    x_tk = torch.randn(2, 1, 2, 2)
    target = anchor_x0(lambda x, lv: calls.append(lv) or torch.randn_like(x), VPSchedule(), x_tk, CLEAN)
    assert calls == [] and torch.equal(target, x_tk)


@pytest.mark.parametrize("kind", ["flow", "vp"])
def test_sampler_step_by_hand(kind):
    """The one step every rollout is made of: x0 = x - t v, x' = x + (t' - t) v (flow); DDIM on abar (VP)."""
    x, pred = torch.randn(3, 2, 2, 2), torch.randn(3, 2, 2, 2)
    if kind == "flow":
        step = sampler_step(lambda x_, lv: pred, FlowSchedule(shift=3.0), x, 0.8, 0.3)
        x0, x_next = x - 0.8 * pred, x + (0.3 - 0.8) * pred
    else:
        abar = sdxl_abar()
        step = sampler_step(lambda x_, lv: pred, VPSchedule(), x, 749.0, 249.0)
        x0 = (x.double() - (1 - abar[749]).sqrt() * pred) / abar[749].sqrt()
        x_next = abar[249].sqrt() * x0 + (1 - abar[249]).sqrt() * pred
    assert step.pred is pred
    torch.testing.assert_close(step.x0, x0.float())
    torch.testing.assert_close(step.x_next, x_next.float())


@pytest.mark.parametrize("backprop, pick", [("all", None), ("one_step", 2)])
def test_rollouts_are_euler_by_hand(backprop, pick):
    """Student rollout and sampler with a linear velocity w x: x_{i+1} = x_i + (s_{i+1} - s_i) w x_i."""
    sched = FlowSchedule(shift=3.0)
    levels = sched.sampling_levels(4)
    w = 0.7
    z = torch.randn(2, 1, 2, 2)
    xs = [z.double()]
    for s, s_next in zip(levels[:-1], levels[1:]):
        xs.append(xs[-1] + (s_next - s) * w * xs[-1])
    predict = lambda x, lv: w * x  # noqa: E731
    roll = student_rollout(predict, sched, z, levels, detach_first=True, backprop=backprop, pick=pick)
    torch.testing.assert_close(roll.first_pred, w * z)
    torch.testing.assert_close(roll.first_x0, z - levels[0] * w * z)
    expected = xs[-1] if pick is None else xs[pick] - levels[pick] * w * xs[pick]  # one_step: that step's x0
    torch.testing.assert_close(roll.x0, expected.float())
    torch.testing.assert_close(ddim_sample(predict, sched, z, levels), xs[-1].float())


def test_student_rollout_steps_on_the_students_own_levels():
    """student.shift 1 under a shift-3 teacher: every step, the first included, lands on the student's levels."""
    sched = FlowSchedule(shift=3.0)
    levels = FlowSchedule(shift=1.0).sampling_levels(4)  # diffusers' sigmas: 1, 0.667, 0.334, 0.001, 0
    assert levels[1] == pytest.approx(0.667) and sched.sampling_levels(4)[1] == pytest.approx(0.8577, abs=1e-4)
    w, z = 0.7, torch.randn(2, 1, 2, 2)
    seen = []

    def predict(x, lv):
        seen.append((float(lv[0]), x.double()))
        return w * x

    roll = student_rollout(predict, sched, z, levels, detach_first=True)
    x1 = z.double() * (1 + (0.667 - 1.0) * w)  # Euler from 1 to the student's 0.667
    assert [t for t, _ in seen] == pytest.approx([1.0, 0.667, 0.334, 0.001])
    torch.testing.assert_close(seen[1][1], x1)
    factor = (1 - 0.333 * w) ** 3 * (1 - 0.001 * w)  # Euler steps of 0.333, 0.333, 0.333, 0.001
    torch.testing.assert_close(roll.x0.double(), z.double() * factor)


def test_euler_equals_ddim_for_flow_models():
    """x + (t' - t) v == (1 - t') x0_hat + t' eps_hat: the sampler is the teacher's Euler sampler."""
    sched = FlowSchedule(shift=3.0)
    x, v = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
    t, t2 = torch.full((3,), 0.8), torch.full((3,), 0.55)
    x0, eps = sched.split(x, t, v)
    torch.testing.assert_close(sched.ddim_step(x0, eps, t2), x + (0.55 - 0.8) * v)


def _student_param_predictor():
    w = torch.nn.Parameter(torch.tensor(0.3))
    return w, (lambda x, lv: w * x)


@pytest.mark.parametrize("detach", [True, False])
def test_detach_blocks_dmd_from_first_step(detach):
    sched = FlowSchedule()
    levels = sched.sampling_levels(4)
    w, predict = _student_param_predictor()
    z = torch.randn(4, 1, 4, 4)
    roll = student_rollout(predict, sched, z, levels, detach_first=detach)
    roll.first_pred.retain_grad()
    g = torch.randn_like(roll.x0)
    dmd_loss(roll.x0, g).backward()
    reached = roll.first_pred.grad is not None and bool(roll.first_pred.grad.abs().sum() > 0)
    assert reached is (not detach)
    assert w.grad is not None and w.grad.abs() > 0  # later steps still train the shared weights


def test_diversity_loss_reaches_first_step():
    sched = FlowSchedule()
    w, predict = _student_param_predictor()
    z = torch.randn(4, 1, 4, 4)
    roll = student_rollout(predict, sched, z, sched.sampling_levels(4), detach_first=True)
    roll.first_pred.retain_grad()
    diversity_loss(roll.first_pred, torch.zeros_like(z)).backward()
    assert roll.first_pred.grad.abs().sum() > 0


def test_one_step_backprop_trains_only_the_picked_step():
    sched = FlowSchedule()
    levels = sched.sampling_levels(4)
    calls = []
    w = torch.nn.Parameter(torch.tensor(0.5))

    def predict(x, lv):
        calls.append(torch.is_grad_enabled())
        return w * x

    roll = student_rollout(predict, sched, torch.randn(2, 1, 2, 2), levels, detach_first=True,
                           backprop="one_step", pick=2)
    assert calls == [True, False, True]  # first step (diversity), step 1 without grad, step 2 with grad
    assert roll.x0.requires_grad


def test_dmd_gradient_formula_and_nan():
    x0 = torch.tensor([[[[1.0, 3.0]]]])
    real = torch.tensor([[[[0.0, 1.0]]]])
    fake = torch.tensor([[[[2.0, 1.0]]]])
    g = dmd_gradient(x0, real, fake)
    # (fake - real) / mean|x0 - real| = [2, 0] / 1.5
    torch.testing.assert_close(g, torch.tensor([[[[4 / 3, 0.0]]]]))
    g_xt = dmd_gradient(x0, real, fake, reference=torch.tensor([[[[2.0, 1.0]]]]))  # authors: |x_t - real|
    torch.testing.assert_close(g_xt, torch.tensor([[[[2.0, 0.0]]]]))
    assert torch.isfinite(dmd_gradient(real, real, fake)).all()  # 0/0 becomes 0, not NaN


def test_dmd_loss_gradient_is_g_over_numel():
    x0 = torch.randn(2, 1, 3, 3, requires_grad=True)
    g = torch.randn(2, 1, 3, 3)
    dmd_loss(x0, g).backward()
    torch.testing.assert_close(x0.grad, g / g.numel())


def test_dmd_moves_samples_toward_teacher_and_away_from_fake():
    """Gaussian case with known scores: real N(+2, I), fake N(-2, I); DMD steps pull x0 toward +2."""
    sched = FlowSchedule()
    real, fake = gaussian_flow_predictor(2.0), gaussian_flow_predictor(-2.0)
    gen = torch.Generator().manual_seed(0)
    x0 = (torch.randn(256, 1, 2, 2, generator=gen) - 2.0).requires_grad_(True)
    start = x0.detach().mean().item()
    opt = torch.optim.SGD([x0], lr=50.0)
    for _ in range(20):
        terms = dmd_term(x0, sched, real, fake, gen, low=0.02, high=0.98, per_sample=True, normalizer="x0")
        opt.zero_grad()
        terms.loss.backward()
        opt.step()
    assert x0.detach().mean().item() > start + 1.0


@pytest.mark.parametrize("kind", ["flow", "vp"])
def test_fake_score_target_by_hand(kind):
    """The fake score regresses the velocity eps - x0 (flow) or the noise eps (VP) of the x_t it is shown.

    eps is read back from the x_t and level the predictor sees, with the path written out by hand.
    """
    x0 = torch.randn(16, 1, 2, 2)
    pred = torch.randn(16, 1, 2, 2)
    seen = {}

    def predictor(xt, lv):
        seen.update(xt=xt.double(), lv=lv.double().view(-1, 1, 1, 1))
        return pred

    sched = FlowSchedule(shift=3.0) if kind == "flow" else VPSchedule()
    loss = fake_score_loss(predictor, sched, x0, torch.Generator().manual_seed(1))
    xt, t = seen["xt"], seen["lv"]
    if kind == "flow":  # x_t = (1 - t) x0 + t eps
        eps = (xt - (1 - t) * x0) / t
        target = eps - x0
    else:  # x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
        abar = sdxl_abar()[t.long()]
        target = (xt - abar.sqrt() * x0) / (1 - abar).sqrt()
    assert loss.item() == pytest.approx(float(((pred - target) ** 2).mean()), rel=1e-4)


def _recorded_levels(calls: int, batch: int, fn) -> torch.Tensor:
    """The levels a recording fake predictor saw over ``calls`` calls of ``fn(predict_fake, generator)``."""
    seen = []
    gen = torch.Generator().manual_seed(3)

    def fake(x, lv):
        seen.append(lv.double())
        return torch.zeros_like(x)

    for _ in range(calls):
        fn(fake, gen)
    return torch.stack(seen).view(calls, batch)


def _assert_uniform(u: torch.Tensor, low: float, high: float, tol: float = 0.0) -> None:
    """u ~ U[low, high]: its range, mean, spread and CDF (to within sampling error)."""
    n = u.numel()
    assert float(u.min()) >= low - tol and float(u.max()) <= high + tol
    assert float(u.mean()) == pytest.approx((low + high) / 2, abs=4 * (high - low) / 12 ** 0.5 / n ** 0.5 + tol)
    assert float(u.std()) == pytest.approx((high - low) / 12 ** 0.5, rel=0.05)
    cdf = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert float((cdf - (u.flatten().sort().values - low) / (high - low)).abs().max()) < 2 / n ** 0.5 + tol


@pytest.mark.parametrize("kind, shifted", [("flow", True), ("flow", False), ("vp", True)])
@pytest.mark.parametrize("per_sample", [True, False])
def test_dmd_renoise_levels_follow_the_configured_distribution(kind, shifted, per_sample):
    """Noise fraction U[low, high] (shifted through SD3's shift 3, or not), one per sample or one per batch."""
    sched = FlowSchedule(shift=3.0) if kind == "flow" else VPSchedule()
    low, high = 0.2, 0.7
    calls, batch = (1, 2000) if per_sample else (600, 4)
    x0 = torch.randn(batch, 1, 1, 1)

    def term(fake, gen):
        dmd_term(x0, sched, lambda x, lv: torch.zeros_like(x), fake, gen, low=low, high=high,
                 per_sample=per_sample, normalizer="x0", shifted=shifted)

    levels = _recorded_levels(calls, batch, term)
    if not per_sample:
        assert bool((levels == levels[:, :1]).all())  # one level per batch
        levels = levels[:, 0]
    if kind == "vp":  # timesteps round(u * 999)
        _assert_uniform(levels / 999, low, high, tol=1 / 999)
    else:
        _assert_uniform(unshift(levels, 3.0) if shifted else levels, low, high, tol=1e-6)


@pytest.mark.parametrize("shifted", [True, False])
def test_fake_score_levels_are_uniform_shifted_or_not(shifted):
    sched = FlowSchedule(shift=3.0)
    x0 = torch.randn(2000, 1, 1, 1)
    levels = _recorded_levels(1, 2000, lambda fake, gen: fake_score_loss(fake, sched, x0, gen, shifted))
    _assert_uniform(unshift(levels, 3.0) if shifted else levels, 0.0, 1.0, tol=1e-6)


def method_settings(schedule, anchor_target="velocity", **changes) -> DPDMD:
    """The paper's settings for a 4-step student of an 8-step teacher (k = 3)."""
    m = DPDMD(schedule, schedule.sampling_levels(4), schedule.sampling_levels(8), diversity_weight=0.05,
              anchor_step=3, anchor_target=anchor_target, detach_first=True, backprop="all", renoise_low=0.02,
              renoise_high=0.98, renoise_per_sample=True, renoise_shifted=True, normalizer="x0", fake_t_shifted=True)
    return dataclasses.replace(m, **changes)


def test_first_step_loss_by_hand():
    """Eq. 7: ||v_G - (z - x_tk) / (1 - t_k)||^2; Eq. 39-41: ||x0_G - (x_tk - sqrt(1 - abar) eps_T) / sqrt(abar)||^2."""
    z, x_tk = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    roll = Rollout(x0=torch.zeros(2, 1, 2, 2), first_pred=torch.randn(2, 1, 2, 2), first_x0=torch.randn(2, 1, 2, 2))
    flow = method_settings(FlowSchedule(), "velocity")
    loss = first_step_loss(flow, roll, z, x_tk, 0.75, predict_real_cfg=None)
    assert loss.item() == pytest.approx(float(((roll.first_pred - (z - x_tk) / 0.25) ** 2).mean()), rel=1e-5)

    eps_t = torch.randn(2, 1, 2, 2)
    vp = method_settings(VPSchedule(), "x0")
    abar = sdxl_abar()[874]
    x0_star = (x_tk.double() - (1 - abar).sqrt() * eps_t) / abar.sqrt()
    loss = first_step_loss(vp, roll, z, x_tk, 874.0, lambda x, lv: eps_t)
    assert loss.item() == pytest.approx(float(((roll.first_x0 - x0_star) ** 2).mean()), rel=1e-5)


def test_first_step_target_follows_the_schedule():
    assert first_step_target(FlowSchedule(shift=3.0)) == "velocity" and first_step_target(VPSchedule()) == "x0"
    assert first_step_target(FlowSchedule(), "x0") == "x0"
    with pytest.raises(ConfigError, match="method.anchor_target"):
        first_step_target(VPSchedule(), "velocity")


@pytest.mark.parametrize("lam", [0.3, 0.0])
def test_dpdmd_student_loss_is_eq_8_by_hand(lam):
    """L = L_DMD + lambda L_div with constant-velocity teacher (v_r) and fake score (v_f), a linear student w x.

    Anchor: x_tk = z + (t_k - 1) v_r, so v* = v_r and L_div = mean((w z - v_r)^2). DMD: at the recorded
    (x_t, t), x0_real = x_t - t v_r, x0_fake = x_t - t v_f, g = (x0_fake - x0_real) / mean|x0 - x0_real|,
    L_DMD = 0.5 mean(g^2). lambda = 0 (plain DMD) runs no anchor rollout.
    """
    sched = FlowSchedule(shift=3.0)
    m = method_settings(sched, diversity_weight=lam)
    w, z = 0.6, torch.randn(4, 1, 2, 2)
    v_r, v_f = torch.full_like(z, 0.4), torch.full_like(z, -0.2)
    teacher_calls, seen = [], {}

    def real(x, lv):
        teacher_calls.append(float(lv[0]))
        return v_r

    def fake(x, lv):
        seen.update(xt=x.double(), t=lv.double().view(-1, 1, 1, 1))
        return v_f

    out = dpdmd_student_loss(m, lambda x, lv: w * x, real, fake, z, torch.Generator().manual_seed(0))
    x0 = ddim_sample(lambda x, lv: w * x, sched, z, m.student_levels).double()
    xt, t = seen["xt"], seen["t"]
    x0_real, x0_fake = xt - t * v_r, xt - t * v_f
    g = (x0_fake - x0_real) / (x0 - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    dmd = 0.5 * float((g ** 2).mean())
    div = float(((w * z - v_r) ** 2).mean()) if lam else 0.0
    assert out.dmd.item() == pytest.approx(dmd, rel=1e-4)
    assert out.div.item() == pytest.approx(div, rel=1e-4)
    assert out.loss.item() == pytest.approx(dmd + lam * div, rel=1e-4)
    assert len(teacher_calls) == (1 + m.anchor_step if lam else 1)  # the anchor's k steps, then DMD's one call


def test_ddim_sample_reaches_gaussian_mean_region():
    sched = FlowSchedule()
    predict = gaussian_flow_predictor(3.0)
    x = ddim_sample(predict, sched, torch.randn(2000, 1, 1, 1, generator=torch.Generator().manual_seed(0)),
                    sched.sampling_levels(30))
    assert abs(x.mean().item() - 3.0) < 0.1
    assert abs(x.std().item() - 1.0) < 0.1


def _decoupled_setup(w: float, v_c: float, v_u: float, v_f: float, start: float = 0.6, batch: int = 512):
    """Constant-velocity teacher (cond v_c, uncond v_u) and fake score v_f; records every call's (x_t, t)."""
    from distill_core.method import TeacherSplit, decoupled_dmd_term

    sched = FlowSchedule(shift=3.0)
    calls = {"cond": [], "uncond": [], "fake": []}

    def recorder(name, v):
        def predict(x, lv):
            calls[name].append((x.double(), lv.double().view(-1, 1, 1, 1)))
            return torch.full_like(x, v)
        return predict

    x0 = torch.randn(batch, 1, 2, 2, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    teacher = TeacherSplit(recorder("cond", v_c), recorder("uncond", v_u), w)
    out = decoupled_dmd_term(x0, sched, teacher, recorder("fake", v_f), torch.Generator().manual_seed(0),
                             start_level=start, low=0.02, high=0.98, per_sample=True, normalizer="x0")
    return sched, x0, calls, out


def _norm(x0: torch.Tensor, x0_real: torch.Tensor) -> torch.Tensor:
    return (x0.detach().double() - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)


def test_decoupled_ca_term_by_hand():
    """v_f = v_c (DM = 0): g = -(w - 1) (x0_c - x0_u) / mean|x0 - x0_c| at tau_CA, x0_c - x0_u = t (v_u - v_c);
    tau_CA's noise fraction lies in [0.02, u(start)), cleaner than the start level, with its own noise."""
    w, start = 3.0, 0.6
    sched, x0, calls, out = _decoupled_setup(w, v_c=0.4, v_u=-0.1, v_f=0.4, start=start)
    (xt, t), = calls["uncond"]
    assert torch.equal(calls["cond"][0][0], xt)  # the CA's cond and uncond predictions share x_t and tau_CA
    u = unshift(t.flatten(), 3.0)
    assert float(u.min()) >= 0.02 - 1e-6 and float(t.max()) < start and float(u.max()) > 0.9 * unshift(
        torch.tensor(start), 3.0)
    g = (-(w - 1) * t * (-0.1 - 0.4) / _norm(x0, xt - t * 0.4)).expand(x0.shape)
    assert out.loss.item() == pytest.approx(0.5 * float((g ** 2).mean()), rel=1e-4)
    out.loss.backward()
    torch.testing.assert_close(x0.grad.double(), g / x0.numel(), rtol=1e-4, atol=1e-9)
    eps_ca = (xt - (1 - t) * x0.detach().double()) / t
    xt_dm, t_dm = calls["cond"][1]
    eps_dm = (xt_dm - (1 - t_dm) * x0.detach().double()) / t_dm
    assert not torch.allclose(eps_ca, eps_dm)  # each term its own noise
    assert float(t_dm.max()) > start  # tau_DM over the full range


def test_decoupled_dm_term_by_hand():
    """w = 1 (CA = 0): g = (x0_fake - x0_c) / mean|x0 - x0_c| at tau_DM = t (v_c - v_f) / norm, tau_DM in
    U[0.02, 0.98] shifted (full range, above the start level too)."""
    sched, x0, calls, out = _decoupled_setup(1.0, v_c=0.4, v_u=-0.1, v_f=-0.3)
    xt, t = calls["cond"][1]
    assert len(calls["fake"]) == 1 and torch.equal(calls["fake"][0][0], xt)
    _assert_uniform(unshift(t.flatten(), 3.0), 0.02, 0.98, tol=1e-6)
    g = (t * (0.4 - -0.3) / _norm(x0, xt - t * 0.4)).expand(x0.shape)
    assert out.loss.item() == pytest.approx(0.5 * float((g ** 2).mean()), rel=1e-4)
    out.loss.backward()
    torch.testing.assert_close(x0.grad.double(), g / x0.numel(), rtol=1e-4, atol=1e-9)


def test_decoupled_terms_add_each_normalised_on_its_own():
    sched, x0, calls, out = _decoupled_setup(3.0, v_c=0.4, v_u=-0.1, v_f=-0.3, batch=8)
    (xt_ca, t_ca), (xt_dm, t_dm) = calls["cond"]
    g_ca = -(3.0 - 1) * t_ca * (-0.1 - 0.4) / _norm(x0, xt_ca - t_ca * 0.4)
    g_dm = t_dm * (0.4 - -0.3) / _norm(x0, xt_dm - t_dm * 0.4)
    out.loss.backward()
    torch.testing.assert_close(x0.grad.double(), ((g_ca + g_dm) / x0.numel()).expand(x0.shape), rtol=1e-4, atol=1e-9)


def test_decoupled_ca_stays_cleaner_than_the_trained_steps_start():
    """DP-DMD refined by Decoupled-DMD: tau_CA below step 2's level (the detach), or step ``pick``'s (one_step)."""
    from distill_core.method import trained_start

    m = method_settings(FlowSchedule(shift=3.0), objective="decoupled_dmd")
    assert trained_start(m, None) == m.student_levels[1] and trained_start(m, 2) == m.student_levels[2]
    assert trained_start(dataclasses.replace(m, detach_first=False), None) == m.student_levels[0]
