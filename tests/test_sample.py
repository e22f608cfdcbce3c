"""Specification of tinyldm.sample: DDPM (Algorithm 2), DDIM, DPM-Solver++(2M) and the sampling loop.

Time convention under test (schedule.py's): t in {1, ..., T} for model evaluations, t = 0 is
clean data (alpha_bar_0 = 1); diffusers' timestep k is our t - 1, converted only through
schedule.to_diffusers_timestep / from_diffusers_timestep.
"""

import math

import pytest
import torch

from tinyldm.sample import (DDIM, DDPM, DPMSolverPP2M, Sampler, Spacing, Variance, algorithm2, ddim_step, ddpm_step,
                            dpm_solver_pp_2m_step, predict_x0, sample, timesteps)
from tinyldm.schedule import NoiseSchedule

import diffusers  # the test-only numerical reference: a missing one fails the run instead of skipping it

T = 1000
LINEAR = NoiseSchedule.from_kind("linear")  # DDPM's: beta 1e-4..0.02, T = 1000
COSINE = NoiseSchedule.from_kind("cosine")
SCHEDULES = {"linear": (LINEAR, "linear"), "cosine": (COSINE, "squaredcos_cap_v2")}  # (ours, diffusers name)
REF_ARGS = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02)


def float64_reference(ref):
    """diffusers' scheduler with its tables in float64. diffusers computes 1 - alpha_bar_t in
    float32, which near t = 1 (1 - alpha_bar ~ 1e-4) has relative errors ~1e-3; our tables come
    from float64. In float64 both implementations agree to ~1e-7, so the tests can be tight."""
    ref.betas = ref.betas.double()
    ref.alphas = 1.0 - ref.betas
    ref.alphas_cumprod = torch.cumprod(ref.alphas, dim=0)
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(ref, "final_alpha_cumprod"):  # DDIM with set_alpha_to_one=True
        ref.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return ref


def assert_close_to_scale(actual, expected, rel):
    """|actual - expected| <= rel * max|expected| everywhere: an error relative to the tensor's scale
    (near t = T with the cosine schedule, 1/sqrt(alpha_T) ~ 32 amplifies rounding in the tables)."""
    torch.testing.assert_close(actual, expected, atol=rel * expected.abs().max().item(), rtol=0)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def diffusers_t(schedule, k: int) -> int:
    """Our t for diffusers' k, with diffusers' 'k < 0 means clean data' mapped to t = 0."""
    return schedule.from_diffusers_timestep(k) if k >= 0 else 0


# ---- timestep spacing ----------------------------------------------------------------------

@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("ref_cls, dpm_grid", [(diffusers.DDPMScheduler, False), (diffusers.DDIMScheduler, False),
                                                (diffusers.DPMSolverMultistepScheduler, True)])
def test_timesteps_match_diffusers_set_timesteps(spacing, ref_cls, dpm_grid):
    for n in [1, 2, 7, 10, 20, 50, 250, 999, 1000]:
        ref = ref_cls(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=0)
        ref.set_timesteps(n)
        expected = [LINEAR.from_diffusers_timestep(k) for k in ref.timesteps.tolist()]
        if len(set(expected)) < n:  # diffusers repeats timesteps here (e.g. DPM 'leading' with n = T)
            with pytest.raises(ValueError, match="repeated timesteps"):
                timesteps(LINEAR, n, spacing, dpm_grid=dpm_grid)
            continue
        ts = timesteps(LINEAR, n, spacing, dpm_grid=dpm_grid)
        assert ts == expected, (spacing, n)
        assert all(type(t) is int for t in ts) and all(1 <= t <= T for t in ts)


def test_timesteps_properties():
    # trailing starts at t = T (where x_T ~ N(0, I) is right) and is spaced T / n apart
    assert timesteps(LINEAR, 10) == list(range(1000, 0, -100))
    assert timesteps(LINEAR, 10, "leading") == list(range(901, 0, -100))
    assert timesteps(LINEAR, T, "trailing") == list(range(T, 0, -1))
    assert timesteps(LINEAR, 4, Spacing.LINSPACE) == [1000, 667, 334, 1]
    assert timesteps(T, 20, "linspace", dpm_grid=True) == timesteps(LINEAR, 20, "linspace", dpm_grid=True)
    # diffusers' trailing spacing has a spurious 62nd timestep k = -1 for n = 61; ours has n
    ref = diffusers.DDIMScheduler(timestep_spacing="trailing")
    ref.set_timesteps(61)
    assert ref.timesteps[-1] == -1 and len(ref.timesteps) == 62
    ts = timesteps(LINEAR, 61, "trailing")
    assert ts == [LINEAR.from_diffusers_timestep(k) for k in ref.timesteps[:-1].tolist()]


# ---- one DDPM step (Algorithm 2, line 4) ----------------------------------------------------

@pytest.mark.parametrize("kind", list(SCHEDULES))
@pytest.mark.parametrize("variance", list(Variance))
def test_ddpm_step_matches_diffusers(kind, variance):
    schedule, name = SCHEDULES[kind]
    ref = float64_reference(diffusers.DDPMScheduler(beta_schedule=name, clip_sample=False,
                                                    variance_type=variance.value, **REF_ARGS))
    x_t, eps = randn(2, 3, 8, 8, seed=0, dtype=torch.float64), randn(2, 3, 8, 8, seed=1, dtype=torch.float64)
    sampler = DDPM(schedule, variance=variance)
    for t in [1, 2, 3, 10, 100, 500, 999, T]:
        # The noise z: diffusers' step computes the mean, then draws z once with
        # randn(x.shape, generator, dtype=x.dtype), and only when its k > 0 (our t > 1); our step
        # draws the same single z at the same point (line 3). Two generators with the same seed
        # therefore give the same z, and the whole x_{t-1} (mean + sigma_t z) can be compared.
        g_ours, g_ref = torch.Generator().manual_seed(t), torch.Generator().manual_seed(t)
        ours = sampler.step(x_t, t, eps, generator=g_ours)
        expected = ref.step(eps, schedule.to_diffusers_timestep(t), x_t, generator=g_ref).prev_sample
        # cosine, t = T: beta_T = 0.999 (clipped); diffusers stores betas in float32, 0.99900001,
        # which makes its alpha_T = 1 - beta_T off by 1.3e-5 relative (ours: float64, then float32)
        assert_close_to_scale(ours, expected, 3e-5 if schedule.alpha[t] < 0.01 else 1e-6)
        # both generators were advanced alike (one draw at t > 1, none at t = 1)
        assert torch.equal(torch.randn(3, generator=g_ours), torch.randn(3, generator=g_ref))
        # the pure function with that z is the same step; its mean (z = None) differs for t > 1
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t), dtype=x_t.dtype)
        assert torch.equal(ddpm_step(schedule, x_t, t, eps, z, variance), ours)
        mean = ddpm_step(schedule, x_t, t, eps, None, variance)
        assert torch.equal(mean, ours) == (t == 1)


def test_ddpm_step_line_4_and_both_variances_closed_form():
    s, t = LINEAR, 10
    x_t, eps, z = randn(4, 2, seed=0), randn(4, 2, seed=1), randn(4, 2, seed=2)
    a, ab, b = s.alpha[t].item(), s.alpha_bar[t].item(), s.beta[t].item()
    mean = 1 / math.sqrt(a) * (x_t - (1 - a) / math.sqrt(1 - ab) * eps)
    beta_tilde = (1 - s.alpha_bar[t - 1].item()) / (1 - ab) * b
    torch.testing.assert_close(ddpm_step(s, x_t, t, eps, z, "fixed_large"), mean + math.sqrt(b) * z)
    torch.testing.assert_close(ddpm_step(s, x_t, t, eps, z, "fixed_small"), mean + math.sqrt(beta_tilde) * z)
    # line 3: z = 0 at t = 1, for either variance (beta_1 > 0 but no noise is added)
    for v in Variance:
        assert torch.equal(ddpm_step(s, x_t, 1, eps, z, v), ddpm_step(s, x_t, 1, eps, None, v))
    # one t per batch item: each row is the step at its own t
    tt = torch.tensor([1, 2, 500, T])
    rows = torch.stack([ddpm_step(s, x_t[i:i + 1], int(tt[i]), eps[i:i + 1], z[i:i + 1])[0] for i in range(4)])
    torch.testing.assert_close(ddpm_step(s, x_t, tt, eps, z), rows)


# ---- one DDIM step (equation 12) ------------------------------------------------------------

@pytest.mark.parametrize("kind", list(SCHEDULES))
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_diffusers(kind, eta):
    schedule, name = SCHEDULES[kind]
    x_t, eps = randn(2, 3, 8, 8, seed=0, dtype=torch.float64), randn(2, 3, 8, 8, seed=1, dtype=torch.float64)
    for n in [10, 50]:
        ref = float64_reference(diffusers.DDIMScheduler(beta_schedule=name, clip_sample=False, set_alpha_to_one=True,
                                                        steps_offset=0, **REF_ARGS))
        ref.set_timesteps(n)
        for k in ref.timesteps.tolist():  # the last k is 0: the final step, to alpha_bar = 1 (t = 0)
            t, t_prev = schedule.from_diffusers_timestep(k), diffusers_t(schedule, k - T // n)  # diffusers' prev rule
            # diffusers takes the noise as an argument too (variance_noise): give both the same z
            z = randn(2, 3, 8, 8, seed=k + 2, dtype=torch.float64)
            expected = ref.step(eps, k, x_t, eta=eta, variance_noise=z).prev_sample
            ours = ddim_step(schedule, x_t, t, t_prev, eps, eta, z if eta > 0 else None)
            assert_close_to_scale(ours, expected, 1e-6)
            if eta > 0:  # the deterministic part (z = 0) and the standard deviation separately
                zero = torch.zeros_like(z)
                mean = ddim_step(schedule, x_t, t, t_prev, eps, eta, zero)
                assert_close_to_scale(mean, ref.step(eps, k, x_t, eta=eta, variance_noise=zero).prev_sample, 1e-6)
                sigma = eta * ref._get_variance(k, k - T // n).sqrt()
                assert_close_to_scale(ours - mean, sigma * z, 1e-5)
        if k == 0:  # the final step returns predicted x_0
            torch.testing.assert_close(ours, predict_x0(schedule, x_t, t, eps))


def test_ddim_sampler_trajectory_matches_diffusers():
    # With 'leading' spacing, diffusers' DDIM rule prev = k - T // n is exactly the next timestep,
    # which is what our sampler uses (for any spacing); the noise comes from the generator.
    ref = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                                  timestep_spacing="leading", **REF_ARGS)
    ref.set_timesteps(20)
    c = randn(2, 4, 4, seed=5)
    for eta in [0.0, 0.7]:
        sampler = DDIM(LINEAR, steps=20, eta=eta, spacing="leading")
        assert sampler.timesteps == [LINEAR.from_diffusers_timestep(k) for k in ref.timesteps.tolist()]
        x = y = randn(2, 4, 4, seed=0)
        g_ours, g_ref = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        for t, k in zip(sampler.timesteps, ref.timesteps.tolist()):
            x = sampler.step(x, t, 0.5 * x + c, generator=g_ours)
            y = ref.step(0.5 * y + c, k, y, eta=eta, generator=g_ref).prev_sample
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


def test_ddim_with_eta_1_over_all_steps_is_ddpm_with_fixed_small_variance():
    ddim, ddpm = DDIM(LINEAR, steps=T, eta=1.0), DDPM(LINEAR, Variance.FIXED_SMALL)
    assert ddim.timesteps == ddpm.timesteps == list(range(T, 0, -1))
    x_t, eps, z = randn(3, 5, seed=0), randn(3, 5, seed=1), randn(3, 5, seed=2)
    for t in [T, 500, 2, 1]:
        torch.testing.assert_close(ddim_step(LINEAR, x_t, t, t - 1, eps, 1.0, z),
                                   ddpm_step(LINEAR, x_t, t, eps, z, Variance.FIXED_SMALL), atol=1e-5, rtol=1e-5)


# ---- DPM-Solver++(2M) -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(SCHEDULES))
@pytest.mark.parametrize("spacing", ["trailing", "linspace", "leading"])
@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_pp_2m_trajectory_matches_diffusers(kind, spacing, steps):
    schedule, name = SCHEDULES[kind]
    ref = diffusers.DPMSolverMultistepScheduler(beta_schedule=name, algorithm_type="dpmsolver++", solver_order=2,
                                                timestep_spacing=spacing, steps_offset=0, **REF_ARGS)
    ref.set_timesteps(steps)
    sampler = DPMSolverPP2M(schedule, steps=steps, spacing=spacing)
    assert sampler.timesteps == [schedule.from_diffusers_timestep(k) for k in ref.timesteps.tolist()]
    assert sampler.num_model_evals == steps

    c = randn(2, 3, 8, 8, seed=7)

    def fake_eps(x, t):
        # a fixed, t-dependent eps model: the exact eps for N(0, I) data, s_t x, plus a fixed tensor
        # times a_t (a_t = sqrt(alpha_bar_t), s_t = sqrt(1 - alpha_bar_t)). Its x_0_hat = a_t x - 0.1 s_t c
        # stays bounded, as a trained model's does; a perturbation that does not vanish as t -> T
        # would make x_0_hat ~ 1 / a_T ~ 1e4 for the cosine schedule, where float32 rounding of
        # diffusers' tables (betas stored in float32) then shows up at the 1e-3 level.
        a_t, s_t = (v[t].reshape(-1, 1, 1, 1) for v in (schedule.sqrt_alpha_bar, schedule.sqrt_one_minus_alpha_bar))
        return s_t * x + 0.1 * a_t * c

    x = y = randn(2, 3, 8, 8, seed=0)
    for t, k in zip(sampler.timesteps, ref.timesteps.tolist()):
        x = sampler.step(x, t, fake_eps(x, torch.full((2,), t)))
        y = ref.step(fake_eps(y, torch.full((2,), schedule.from_diffusers_timestep(k))), k, y).prev_sample
    # diffusers computes in float32 whatever the input. With the cosine schedule, sqrt(1 - alpha_bar_T)
    # rounds to 1 in float32 and a_T = 4.9e-5, so x_0_hat = (x_T - s_T eps) / a_T carries ~1e-3 of
    # float32 rounding in any implementation (ours and diffusers' round differently); the linear
    # schedule (a_T = 6.4e-3) is well conditioned.
    assert_close_to_scale(x, y, 1e-5 if kind == "linear" else 1e-3)


def test_dpm_solver_pp_first_and_last_steps_are_first_order_ddim():
    sampler = DPMSolverPP2M(LINEAR, steps=5)  # 1000, 800, 600, 400, 200 -> 0
    x_t, eps = randn(2, 6, seed=0), randn(2, 6, seed=1)
    # the first step has no memory: DPM-Solver-1 = DDIM with eta = 0
    torch.testing.assert_close(sampler.step(x_t, 1000, eps), ddim_step(LINEAR, x_t, 1000, 800, eps),
                               atol=1e-5, rtol=1e-5)
    for t in [800, 600, 400]:  # second order: differs from DDIM
        eps_t = eps + t / 1000
        assert not torch.allclose(sampler.step(x_t, t, eps_t), ddim_step(LINEAR, x_t, t, sampler.next_t(t), eps_t))
    # the last step goes to t = 0, where the update is first order and returns the predicted x_0
    torch.testing.assert_close(sampler.step(x_t, 200, eps), predict_x0(LINEAR, x_t, 200, eps))
    # the pure function: with x0_last = x0_hat the second-order term vanishes
    x0 = predict_x0(LINEAR, x_t, 600, eps)
    torch.testing.assert_close(dpm_solver_pp_2m_step(LINEAR, x_t, 600, 400, x0, (800, x0)),
                               dpm_solver_pp_2m_step(LINEAR, x_t, 600, 400, x0))


def test_multistep_state_rules():
    sampler = DPMSolverPP2M(LINEAR, steps=4)
    x, eps = randn(1, 3, seed=0), randn(1, 3, seed=1)
    with pytest.raises(ValueError, match=r"follow sampler.timesteps in order: t = 500 needs the step at t = 750"):
        sampler.step(x, 500, eps)  # skipped t = 1000 and 750
    sampler.step(x, 1000, eps)
    with pytest.raises(ValueError, match="needs the step at t = 750 just before it; got the last step at t = 1000"):
        sampler.step(x, 500, eps)
    a = sampler.step(x, 750, eps)
    sampler.reset()
    with pytest.raises(ValueError, match="got no step"):
        sampler.step(x, 750, eps)
    sampler.step(x, 1000, eps)  # a step at the first timestep also starts again by itself
    sampler.step(x, 1000, eps)
    assert torch.equal(sampler.step(x, 750, eps), a)


# ---- Algorithm 2 with an oracle denoiser on Gaussian data ----------------------------------
# For x_0 ~ N(mu, s^2 I), x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps is Gaussian with
# variance v_t = alpha_bar_t s^2 + 1 - alpha_bar_t, and the best eps-prediction (the one a perfectly
# trained network learns) is E[eps | x_t] = Cov(eps, x_t) / v_t (x_t - E x_t):
#     eps*(x_t, t) = (x_t - sqrt(alpha_bar_t) mu) sqrt(1 - alpha_bar_t) / (alpha_bar_t s^2 + 1 - alpha_bar_t).
# A correct sampler driven by eps* must turn N(0, I) into (nearly) N(mu, s^2). mu != 0 and s != 1,
# so that noise and data differ in both moments.
MU, S = 1.0, 0.5
CHAINS = 4000  # one-dimensional chains: the standard errors are S / 63 (mean) and S / 89 (std)


def oracle_eps(schedule, mu=MU, s=S):
    ab = schedule.alpha_bar.double()

    def eps_model(x_t, t):
        a = ab[t].to(x_t.dtype).reshape(-1, *[1] * (x_t.ndim - 1))
        return (x_t - a.sqrt() * mu) * (1 - a).sqrt() / (a * s**2 + 1 - a)
    return eps_model


@pytest.mark.parametrize("sampler, tol_mean, tol_std", [
    # Algorithm 2 with T = 1000 is all but exact: only the statistical error (~4 standard errors)
    (DDPM(LINEAR, Variance.FIXED_SMALL), 0.03, 0.025),
    (DDPM(LINEAR, Variance.FIXED_LARGE), 0.03, 0.025),
    # deterministic ODE solvers, with a discretisation bias: their std comes out ~5% low at these
    # step counts (DDIM is first order; both end with a jump from t = T / n to t = 0)
    (DDIM(LINEAR, steps=50), 0.03, 0.05),
    (DPMSolverPP2M(LINEAR, steps=20), 0.03, 0.05),
], ids=repr)
def test_samplers_with_the_exact_denoiser_recover_the_gaussian(sampler, tol_mean, tol_std):
    g = torch.Generator().manual_seed(0)
    x_0 = sample(oracle_eps(LINEAR), sampler, (CHAINS, 1), generator=g, progress=False)
    assert x_0.shape == (CHAINS, 1) and torch.isfinite(x_0).all()
    assert abs(x_0.mean().item() - MU) < tol_mean
    assert abs(x_0.std().item() - S) < tol_std


def test_ode_samplers_follow_the_probability_flow_and_converge():
    # The probability-flow ODE maps quantiles of N(a_T mu, v_T) at t = T to those of N(mu, s^2):
    # x_0 = mu + s (x_T - a_T mu) / sqrt(v_T), a_T = sqrt(alpha_bar_T). A deterministic sampler
    # approximates this map chain by chain; its error shrinks like 1/steps for DDIM (first order),
    # and DPM-Solver++(2M) with 20 evaluations beats DDIM with 50.
    eps_model, ab_T = oracle_eps(LINEAR), LINEAR.alpha_bar[T].double()
    x_T = randn(500, 1, seed=0, dtype=torch.float64)
    exact = MU + S * (x_T - ab_T.sqrt() * MU) / (ab_T * S**2 + 1 - ab_T).sqrt()

    def error(sampler):
        x = x_T
        for t in sampler.timesteps:
            x = sampler.step(x, t, eps_model(x, torch.full((len(x),), t)))
        return (x - exact).abs().max().item()

    ddim_50, ddim_200 = error(DDIM(LINEAR, 50)), error(DDIM(LINEAR, 200))
    dpm_20, dpm_50 = error(DPMSolverPP2M(LINEAR, 20)), error(DPMSolverPP2M(LINEAR, 50))
    assert ddim_50 < 0.15 and 3 < ddim_50 / ddim_200 < 5  # first order: 4x the steps, ~1/4 the error
    assert dpm_20 < ddim_50 and dpm_50 < 0.01


# ---- Algorithm 2 in one function --------------------------------------------------------

def wiggly_eps(schedule):
    """A non-trivial eps model: nonlinear in x_t, different at every t, not zero at t = 1."""
    def eps_model(x_t, t):
        s_t = schedule.sqrt_one_minus_alpha_bar[t].reshape(-1, *[1] * (x_t.ndim - 1))
        return s_t * x_t + 0.3 * torch.sin(3 * x_t + t.reshape(-1, *[1] * (x_t.ndim - 1)) / 100)
    return eps_model


@pytest.mark.parametrize("schedule", [LINEAR, NoiseSchedule.from_kind("cosine", T=50)], ids=repr)
@pytest.mark.parametrize("variance", list(Variance))
def test_algorithm2_is_sample_with_ddpm_bit_for_bit(schedule, variance):
    # algorithm2 writes Algorithm 2 in one piece; DDPM + sample() cut the same computation into
    # init_noise, step and the loop. Same generator seed: the same numbers, exactly.
    eps_model, shape = wiggly_eps(schedule), (3, 2, 4, 4)
    x_0 = algorithm2(eps_model, schedule, shape, generator=torch.Generator().manual_seed(7), variance=variance)
    expected = sample(eps_model, DDPM(schedule, variance), shape, generator=torch.Generator().manual_seed(7),
                      progress=False)
    assert x_0.shape == shape and torch.isfinite(x_0).all()
    assert torch.equal(x_0, expected)
    # the noise matters: another seed gives another sample
    other = algorithm2(eps_model, schedule, shape, generator=torch.Generator().manual_seed(8), variance=variance)
    assert not torch.equal(x_0, other)


# ---- clipping the predicted x_0 (clip_x0; diffusers' clip_sample) -------------------------
# A pixel-space model's data lie in [-1, 1]; DDPM's code and diffusers clamp x_0_hat there inside
# every step. Inputs below are large (x_t ~ N(0, 2^2)), so that x_0_hat leaves [-1, 1] at every t
# and the clamp is active.

def wide_inputs():
    return 2 * randn(2, 3, 8, 8, seed=0, dtype=torch.float64), randn(2, 3, 8, 8, seed=1, dtype=torch.float64)


@pytest.mark.parametrize("kind", list(SCHEDULES))
@pytest.mark.parametrize("variance", list(Variance))
@pytest.mark.parametrize("c", [1.0, 0.5])
def test_ddpm_step_with_clip_x0_matches_diffusers_clip_sample(kind, variance, c):
    schedule, name = SCHEDULES[kind]
    ref = float64_reference(diffusers.DDPMScheduler(beta_schedule=name, clip_sample=True, clip_sample_range=c,
                                                    variance_type=variance.value, **REF_ARGS))
    x_t, eps = wide_inputs()
    sampler = DDPM(schedule, variance=variance, clip_x0=c)
    for t in [1, 2, 3, 10, 100, 500, 999, T]:
        assert predict_x0(schedule, x_t, t, eps).abs().max() > c  # the clamp does something here
        g_ours, g_ref = torch.Generator().manual_seed(t), torch.Generator().manual_seed(t)  # one z, as without clip
        ours = sampler.step(x_t, t, eps, generator=g_ours)
        expected = ref.step(eps, schedule.to_diffusers_timestep(t), x_t, generator=g_ref).prev_sample
        assert_close_to_scale(ours, expected, 3e-5 if schedule.alpha[t] < 0.01 else 1e-6)
        # the mean is mu_tilde_t(x_t, clamped x_0_hat) (DDPM eq. 7); at t = 1 it is the clamped x_0_hat
        x0_hat = predict_x0(schedule, x_t, t, eps).clamp(-c, c)
        mean = ddpm_step(schedule, x_t, t, eps, None, variance, clip_x0=c)
        torch.testing.assert_close(mean, schedule.q_posterior_mean(x0_hat, x_t, t))
        if t == 1:
            torch.testing.assert_close(ours, x0_hat)


@pytest.mark.parametrize("kind", list(SCHEDULES))
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_step_with_clip_x0_matches_diffusers_clip_sample(kind, eta):
    schedule, name = SCHEDULES[kind]
    x_t, eps = wide_inputs()
    n = 10
    ref = float64_reference(diffusers.DDIMScheduler(beta_schedule=name, clip_sample=True, clip_sample_range=1.0,
                                                    set_alpha_to_one=True, steps_offset=0, **REF_ARGS))
    ref.set_timesteps(n)
    for k in ref.timesteps.tolist():
        t, t_prev = schedule.from_diffusers_timestep(k), diffusers_t(schedule, k - T // n)
        z = randn(2, 3, 8, 8, seed=k + 2, dtype=torch.float64)
        # diffusers keeps the model's eps in the direction term (use_clipped_model_output=False, its default)
        expected = ref.step(eps, k, x_t, eta=eta, variance_noise=z).prev_sample
        ours = ddim_step(schedule, x_t, t, t_prev, eps, eta, z if eta > 0 else None, clip_x0=1.0)
        assert_close_to_scale(ours, expected, 1e-6)
        assert not torch.allclose(ours, ddim_step(schedule, x_t, t, t_prev, eps, eta, z if eta > 0 else None))
    torch.testing.assert_close(ours, predict_x0(schedule, x_t, t, eps).clamp(-1, 1))  # the last step: to t = 0


@pytest.mark.parametrize("kind", list(SCHEDULES))
def test_dpm_solver_pp_2m_with_clip_x0_matches_diffusers_thresholding(kind):
    # diffusers' DPMSolverMultistepScheduler has no clip_sample; its dynamic thresholding clamps x_0_hat to
    # [-s, s] and divides by s, with s = a quantile of |x_0_hat| clamped to [1, sample_max_value]: with
    # sample_max_value = 1, s = 1 and it is plain clipping to [-1, 1].
    schedule, name = SCHEDULES[kind]
    ref = diffusers.DPMSolverMultistepScheduler(beta_schedule=name, algorithm_type="dpmsolver++", solver_order=2,
                                                thresholding=True, sample_max_value=1.0, timestep_spacing="trailing",
                                                steps_offset=0, **REF_ARGS)
    ref.set_timesteps(10)
    sampler = DPMSolverPP2M(schedule, steps=10, clip_x0=1.0)
    assert sampler.timesteps == [schedule.from_diffusers_timestep(k) for k in ref.timesteps.tolist()]
    eps_model = wiggly_eps(schedule)
    x = y = 2 * randn(2, 3, 8, 8, seed=0)
    for t, k in zip(sampler.timesteps, ref.timesteps.tolist()):
        x = sampler.step(x, t, eps_model(x, torch.full((2,), t)))
        y = ref.step(eps_model(y, torch.full((2,), schedule.from_diffusers_timestep(k))), k, y).prev_sample
    assert x.abs().max() <= 1  # the last step returns the clamped x_0_hat
    assert_close_to_scale(x, y, 1e-5 if kind == "linear" else 1e-3)


def dummy_sample_deter():
    """diffusers' scheduler tests' deterministic sample (SchedulerCommonTest.dummy_sample_deter): [4, 3, 8, 8]."""
    num_elems = 4 * 3 * 8 * 8
    return (torch.arange(num_elems).reshape(3, 8, 8, 4) / num_elems).permute(3, 0, 1, 2)


def dummy_model(x, k):
    """diffusers' scheduler tests' dummy model, model(sample, k) = sample * k / (k + 1), k = diffusers' timestep."""
    return x * k / (k + 1)


def test_diffusers_own_full_loop_numbers_with_clip_x0():
    # Reference numbers written in diffusers' tests (test_scheduler_ddpm.py / test_scheduler_ddim.py,
    # test_full_loop_no_noise), for DDPM's schedule with clip_sample=True, from dummy_sample_deter
    # (the loop starts there, not at x_T ~ N(0, I), so it is written by hand with sampler.step).
    #
    # DDPM, fixed_small: diffusers draws one z per step, for k > 0 (our t > 1), after the mean, with
    # randn(sample.shape, generator) from torch.manual_seed(0); DDPM.step draws the same z at the same
    # point, and a fresh Generator seeded 0 gives the same stream as torch.manual_seed(0).
    x, g = dummy_sample_deter(), torch.Generator().manual_seed(0)
    sampler = DDPM(LINEAR, Variance.FIXED_SMALL, clip_x0=1.0)
    for t in sampler.timesteps:
        x = sampler.step(x, t, dummy_model(x, LINEAR.to_diffusers_timestep(t)), generator=g)
    assert abs(x.abs().sum().item() - 258.9606) < 1e-2
    assert abs(x.abs().mean().item() - 0.3372) < 1e-3
    # DDIM, 10 steps, leading spacing (diffusers' default: k = 900, ..., 0), eta = 0, set_alpha_to_one
    x = dummy_sample_deter()
    sampler = DDIM(LINEAR, steps=10, eta=0.0, spacing="leading", clip_x0=1.0)
    for t in sampler.timesteps:
        x = sampler.step(x, t, dummy_model(x, LINEAR.to_diffusers_timestep(t)))
    assert abs(x.abs().sum().item() - 172.0067) < 1e-2
    assert abs(x.abs().mean().item() - 0.223967) < 1e-3


def test_without_clip_x0_nothing_is_clamped():
    x_t, eps = wide_inputs()
    assert all(s.clip_x0 is None for s in [DDPM(LINEAR), DDIM(LINEAR), DPMSolverPP2M(LINEAR)])  # off by default
    for t, t_prev in [(1000, 900), (10, 0)]:
        # a bound that never binds leaves DDIM unchanged, bit for bit
        assert torch.equal(ddim_step(LINEAR, x_t, t, t_prev, eps, clip_x0=1e6), ddim_step(LINEAR, x_t, t, t_prev, eps))
        # DDPM then writes its mean as mu_tilde_t(x_t, x_0_hat): the same number as Algorithm 2's line 4
        assert_close_to_scale(ddpm_step(LINEAR, x_t, t, eps, None, clip_x0=1e6), ddpm_step(LINEAR, x_t, t, eps, None),
                              1e-6)
    # the sampler's x_0_hat (what the trajectory shows and DPM-Solver uses) is clamped only with clip_x0
    _, traj = sample(wiggly_eps(LINEAR), DDIM(LINEAR, 5, clip_x0=0.5), (2, 1, 3, 3),
                     generator=torch.Generator().manual_seed(0), progress=False, trajectory_every=1)
    assert all(x0_hat.abs().max() <= 0.5 for _, _, x0_hat in traj)
    _, traj = sample(wiggly_eps(LINEAR), DDIM(LINEAR, 5), (2, 1, 3, 3),
                     generator=torch.Generator().manual_seed(0), progress=False, trajectory_every=1)
    assert traj[0][2].abs().max() > 0.5
    assert repr(DDIM(LINEAR, 5)) == "DDIM(steps=5, eta=0.0, spacing='trailing')"
    assert repr(DDPM(LINEAR, clip_x0=1)) == "DDPM(variance='fixed_small', steps=1000, clip_x0=1.0)"


# ---- predict_x0, the loop, reproducibility -----------------------------------------------

@pytest.mark.parametrize("kind", list(SCHEDULES))
def test_predict_x0_inverts_q_sample(kind):
    schedule, _ = SCHEDULES[kind]
    x_0, eps = randn(6, 2, 4, 4, seed=0, dtype=torch.float64), randn(6, 2, 4, 4, seed=1, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 500, 999, T])
    torch.testing.assert_close(predict_x0(schedule, schedule.q_sample(x_0, t, eps), t, eps), x_0,
                               atol=1e-9, rtol=1e-9)
    x32, e32 = x_0.float(), eps.float()
    torch.testing.assert_close(predict_x0(schedule, schedule.q_sample(x32, 300, e32), 300, e32), x32)


def test_the_loop_written_by_hand_equals_sample():
    eps_model, b = oracle_eps(LINEAR), 3
    for sampler in [DDIM(LINEAR, steps=10, eta=0.5), DPMSolverPP2M(LINEAR, steps=10)]:
        g = torch.Generator().manual_seed(42)
        x = sampler.init_noise((b, 2, 4, 4), generator=g)  # x_T ~ N(0, I)
        for t in sampler.timesteps:
            eps = eps_model(x, torch.full((b,), t))
            x = sampler.step(x, t, eps, generator=g)
        expected = sample(eps_model, sampler, (b, 2, 4, 4), generator=torch.Generator().manual_seed(42),
                          progress=False)
        assert torch.equal(x, expected)


def test_sample_is_reproducible_with_a_generator():
    eps_model = oracle_eps(LINEAR)
    for sampler in [DDPM(NoiseSchedule.from_kind("linear", T=50)), DDIM(LINEAR, 10, eta=1.0),
                    DPMSolverPP2M(LINEAR, 10)]:
        def run(seed):
            g = torch.Generator().manual_seed(seed)
            return sample(eps_model, sampler, (2, 1, 4, 4), generator=g, progress=False)
        a, b, c = run(0), run(0), run(1)
        assert torch.equal(a, b) and not torch.equal(a, c)
    # the global RNG is not touched when a generator is given
    state = torch.get_rng_state()
    sample(eps_model, DDIM(LINEAR, 5, eta=1.0), (2, 3), generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(torch.get_rng_state(), state)


def test_sample_trajectory():
    sampler = DDIM(LINEAR, steps=10)
    eps_model = oracle_eps(LINEAR)
    x_0, traj = sample(eps_model, sampler, (2, 1, 3, 3), generator=torch.Generator().manual_seed(0),
                       progress=False, trajectory_every=4)
    assert [t for t, _, _ in traj] == [1000, 600, 200, 0]
    for t, x_t, x0_hat in traj:
        assert x_t.shape == x0_hat.shape == (2, 1, 3, 3) and x_t.device.type == "cpu"
        if t:
            torch.testing.assert_close(x0_hat, predict_x0(LINEAR, x_t, t, eps_model(x_t, torch.full((2,), t))))
    assert torch.equal(traj[-1][1], x_0) and torch.equal(traj[-1][2], x_0)
    # x_T is the initial noise
    assert torch.equal(traj[0][1], sampler.init_noise((2, 1, 3, 3), generator=torch.Generator().manual_seed(0)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_generator_gives_the_same_samples_on_cuda():
    eps_model = oracle_eps(LINEAR)
    sampler = DDIM(LINEAR, steps=10, eta=1.0)
    run = lambda device: sample(eps_model, sampler, (2, 8), generator=torch.Generator().manual_seed(0),  # noqa: E731
                                progress=False, device=device)
    cuda = run("cuda")
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), run("cpu"), atol=1e-5, rtol=1e-5)


def test_sampler_interface():
    for sampler, n in [(DDPM(LINEAR), T), (DDIM(LINEAR, steps=50), 50), (DPMSolverPP2M(LINEAR, steps=20), 20)]:
        assert isinstance(sampler, Sampler)
        assert sampler.num_model_evals == len(sampler.timesteps) == n
        assert sampler.timesteps == sorted(sampler.timesteps, reverse=True) and sampler.timesteps[0] == T
        assert all(type(t) is int for t in sampler.timesteps)
        assert sampler.next_t(sampler.timesteps[-1]) == 0
    x = DDIM(LINEAR).init_noise((2, 4, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert x.shape == (2, 4, 8, 8) and x.dtype == torch.float64
    assert torch.equal(DDPM(LINEAR).step(x, torch.tensor(1), x), DDPM(LINEAR).step(x, 1, x))  # 0-dim t tensor


# ---- bad inputs ------------------------------------------------------------------------------

def test_bad_inputs_raise_with_what_was_expected_and_what_came():
    x, eps = randn(2, 3, 4, 4), randn(2, 3, 4, 4)
    for steps in [0, T + 1, 2.5, True]:
        with pytest.raises(ValueError, match=rf"steps must be an int in \[1, 1000\] \(T = 1000\); got {steps!r}"):
            DDIM(LINEAR, steps=steps)
    with pytest.raises(ValueError, match=r"steps must be an int in \[1, 1000\].*got 0"):
        DPMSolverPP2M(LINEAR, steps=0)
    with pytest.raises(ValueError, match=r"steps must be an int in \[1, 1000\].*got 1001"):
        timesteps(LINEAR, 1001)
    with pytest.raises(ValueError, match="spacing must be one of 'leading', 'trailing', 'linspace'; got 'uniform'"):
        DDIM(LINEAR, spacing="uniform")
    with pytest.raises(ValueError, match="variance must be one of 'fixed_small', 'fixed_large'; got 'learned'"):
        DDPM(LINEAR, variance="learned")
    for eta in [-0.1, 1.5]:
        with pytest.raises(ValueError, match=rf"eta must be a number in \[0, 1\].*got {eta}"):
            DDIM(LINEAR, eta=eta)
        with pytest.raises(ValueError, match=rf"eta must be a number in \[0, 1\].*got {eta}"):
            ddim_step(LINEAR, x, 10, 5, eps, eta, eps)
    with pytest.raises(ValueError, match="eta > 0 needs noise"):
        ddim_step(LINEAR, x, 10, 5, eps, 0.5)
    # eps of the wrong shape, in every sampler and the pure functions
    bad = randn(2, 4, 4, 4)
    shapes = r"expected \[2, 3, 4, 4\], got \[2, 4, 4, 4\]"
    for sampler in [DDPM(LINEAR), DDIM(LINEAR, steps=10), DPMSolverPP2M(LINEAR, steps=10)]:
        with pytest.raises(ValueError, match="eps must have the shape of x_t: " + shapes):
            sampler.step(x, T, bad)
    for fn in [lambda: predict_x0(LINEAR, x, 5, bad), lambda: ddpm_step(LINEAR, x, 5, bad, None),
               lambda: ddim_step(LINEAR, x, 5, 1, bad)]:
        with pytest.raises(ValueError, match=r"eps must have the shape of x_t: expected \[2, 3, 4, 4\]"):
            fn()
    with pytest.raises(ValueError, match="z must be None or a tensor of the shape of x_t: " + shapes):
        ddpm_step(LINEAR, x, 5, eps, bad)
    with pytest.raises(ValueError, match=r"x0_hat must be a tensor of the shape of x_t"):
        dpm_solver_pp_2m_step(LINEAR, x, 5, 1, bad)
    # a t that is not one of the sampler's timesteps
    shown = r"\[1000, 900, 800, 700, '...', 300, 200, 100\]"
    with pytest.raises(ValueError, match=r"t must be one of sampler.timesteps " + shown + "; got t = 950"):
        DDIM(LINEAR, steps=10).step(x, 950, eps)
    with pytest.raises(ValueError, match=r"t must be one of sampler.timesteps .*; got t = 999"):
        DPMSolverPP2M(LINEAR, steps=10).step(x, 999, eps)
    with pytest.raises(ValueError, match=r"t must be one of sampler.timesteps .*; got t = 0"):
        DDPM(LINEAR).step(x, 0, eps)
    with pytest.raises(TypeError, match="t must be an int"):
        DDIM(LINEAR, steps=10).step(x, 1000.0, eps)
    # out-of-range or misordered times in the pure functions
    with pytest.raises(ValueError, match=r"t must be in \[1, 1000\]"):
        ddpm_step(LINEAR, x, 0, eps, None)
    with pytest.raises(ValueError, match="t_prev must be smaller than t"):
        ddim_step(LINEAR, x, 10, 10, eps)
    with pytest.raises(ValueError, match="t_prev < t"):
        dpm_solver_pp_2m_step(LINEAR, x, 10, 20, x)
    with pytest.raises(ValueError, match="t_last > t = 10"):
        dpm_solver_pp_2m_step(LINEAR, x, 10, 5, x, (10, x))
    with pytest.raises(ValueError, match="trajectory_every must be None or an int >= 1; got 0"):
        sample(oracle_eps(LINEAR), DDIM(LINEAR, 5), (1, 1), trajectory_every=0, progress=False)
    for c in [0, -1.0, True, "1", math.inf]:
        for fn in [lambda: DDPM(LINEAR, clip_x0=c), lambda: DDIM(LINEAR, clip_x0=c),
                   lambda: DPMSolverPP2M(LINEAR, clip_x0=c), lambda: ddpm_step(LINEAR, x, 5, eps, None, clip_x0=c),
                   lambda: ddim_step(LINEAR, x, 5, 1, eps, clip_x0=c)]:
            with pytest.raises(ValueError, match=rf"clip_x0 must be None \(no clipping\) or a number > 0.*got {c!r}"):
                fn()
    with pytest.raises(ValueError, match="variance must be one of 'fixed_small', 'fixed_large'; got 'learned'"):
        algorithm2(oracle_eps(LINEAR), LINEAR, (1, 1), variance="learned")
