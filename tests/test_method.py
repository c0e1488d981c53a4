"""The method's math against hand computation (FastGen-style tiny CPU tests)."""
import pytest
import torch

from distill_core.method import (
    ddim_sample, dmd_gradient, dmd_loss, dmd_term, diversity_loss, fake_score_loss, student_rollout,
    teacher_anchor, velocity_target,
)
from distill_core.schedules import FlowSchedule, VPSchedule


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
        teacher_anchor(lambda x, lv: x, sched, torch.zeros(1, 1, 2, 2), sched.sampling_levels(4), 4)


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


def test_fake_score_target_is_the_models_own_parameterisation():
    """Flow: a predictor that returns eps - x0 exactly has zero loss; epsilon models: eps."""
    x0 = torch.randn(8, 1, 2, 2)
    for sched in (FlowSchedule(), VPSchedule()):
        gen = torch.Generator().manual_seed(1)

        def oracle(x, lv, sched=sched):
            # invert x_t = alpha x0 + sigma eps for eps, given the true x0
            alpha, sigma = sched.alpha_sigma(lv)
            e = (x - alpha.view(-1, 1, 1, 1) * x0) / sigma.view(-1, 1, 1, 1)
            return sched.training_target(x0, e)

        loss = fake_score_loss(oracle, sched, x0, gen)
        assert loss.item() < 1e-8
        assert fake_score_loss(lambda x, lv: torch.zeros_like(x), sched, x0, torch.Generator()).item() > 0.1


def test_ddim_sample_reaches_gaussian_mean_region():
    sched = FlowSchedule()
    predict = gaussian_flow_predictor(3.0)
    x = ddim_sample(predict, sched, torch.randn(2000, 1, 1, 1, generator=torch.Generator().manual_seed(0)),
                    sched.sampling_levels(30))
    assert abs(x.mean().item() - 3.0) < 0.1
    assert abs(x.std().item() - 1.0) < 0.1
