"""The NoiseSchedule contract the method is written against, for every schedule (flow shift 1 and 3, FLUX.2's
linear spacing, VP)."""
import pytest
import torch

from distill_core.schedules import FlowSchedule, VPSchedule, schedule_from_description

SCHEDULES = {"flow-shift1": FlowSchedule(shift=1.0), "flow-shift3": FlowSchedule(shift=3.0), "vp": VPSchedule(),
             "flow-linear": FlowSchedule(shift=7.56, spacing="linear")}  # FLUX.2's sigmas before the shift


@pytest.fixture(params=list(SCHEDULES))
def sched(request):
    return SCHEDULES[request.param]


def random_levels(sched, n: int) -> torch.Tensor:
    return sched.sample_levels(n, 0.05, 0.95, torch.Generator().manual_seed(0))


def test_split_inverts_add_noise(sched):
    """The network's exact training target, shown at x_t, gives back the x0 and eps x_t was made of."""
    x0, eps = torch.randn(6, 2, 3, 3), torch.randn(6, 2, 3, 3)
    levels = random_levels(sched, 6)
    xt = sched.add_noise(x0, eps, levels)
    x0_hat, eps_hat = sched.split(xt, levels, sched.training_target(x0, eps))
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eps_hat, eps, atol=1e-4, rtol=1e-4)


def test_ddim_step_to_the_clean_level_returns_x0(sched):
    x0, eps = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    clean = torch.full((4,), sched.clean_level)
    assert torch.equal(sched.ddim_step(x0, eps, clean), x0)
    alpha, sigma = sched.alpha_sigma(clean)
    assert bool((alpha == 1).all()) and bool((sigma == 0).all())


@pytest.mark.parametrize("steps", [2, 4, 30])
def test_sampling_levels_decrease_to_clean_and_comfy_sigmas_to_zero(sched, steps):
    levels = sched.sampling_levels(steps)
    assert len(levels) == steps + 1 and levels[-1] == sched.clean_level
    assert all(a > b for a, b in zip(levels, levels[1:]))
    _, sigma = sched.alpha_sigma(torch.tensor(levels[0]))
    assert float(sigma) > 0.99  # the first step starts (almost) at pure noise
    sigmas = sched.comfy_sigmas(levels)
    assert len(sigmas) == len(levels) and sigmas[-1] == 0.0
    assert all(a > b for a, b in zip(sigmas, sigmas[1:]))


def test_describe_round_trips(sched):
    again = schedule_from_description(sched.describe())
    assert type(again) is type(sched) and again.describe() == sched.describe()
    levels = random_levels(sched, 5)
    for a, b in zip(again.alpha_sigma(levels), sched.alpha_sigma(levels)):
        assert torch.equal(a, b)
    assert again.sampling_levels(7) == sched.sampling_levels(7)


# ---- each schedule against the diffusers scheduler it stands for -----------------------------------------------------
@pytest.mark.parametrize("steps", [4, 8, 50])
@pytest.mark.parametrize("spacing, offset", [("trailing", 0), ("leading", 1)])
def test_vp_spacings_are_diffusers(steps, spacing, offset):
    """VP levels are the timesteps of diffusers' SDXL schedulers (leading with steps_offset 1 is SDXL's own)."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    ours = VPSchedule().sampling_levels(steps, spacing, offset)
    for cls in (EulerDiscreteScheduler, DDIMScheduler):
        theirs = cls(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing=spacing,
                     steps_offset=offset)
        theirs.set_timesteps(steps)
        assert ours[:-1] == [float(t) for t in theirs.timesteps], cls.__name__
