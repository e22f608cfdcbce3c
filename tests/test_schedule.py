"""Specification of tinyldm.schedule: beta schedules and the forward process q.

Time convention under test: t in {0, ..., T}, tables of length T + 1 indexed by t,
t = 0 is clean data; diffusers' timestep k is our t - 1.
"""

import math

import pytest
import torch

from tinyldm.schedule import BetaSchedule, NoiseSchedule, ScheduleConfig

import diffusers  # the test-only numerical reference: a missing one fails the run instead of skipping it

T = 1000

# (our config, diffusers' beta_schedule name)
CASES = {
    "linear": (ScheduleConfig.ddpm(), "linear"),
    "scaled_linear": (ScheduleConfig.stable_diffusion(), "scaled_linear"),
    "cosine": (ScheduleConfig.cosine(), "squaredcos_cap_v2"),
}


def reference(cfg: ScheduleConfig, name: str):
    return diffusers.DDPMScheduler(num_train_timesteps=cfg.T, beta_start=cfg.beta_1,
                                   beta_end=cfg.beta_T, beta_schedule=name)


# ---- agreement with diffusers --------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_tables_match_diffusers(case):
    cfg, name = CASES[case]
    ours, ref = NoiseSchedule(cfg), reference(cfg, name)
    assert ours.beta.shape == ours.alpha.shape == ours.alpha_bar.shape == (T + 1,)
    assert ours.beta.dtype == ours.alpha_bar.dtype == torch.float32
    # index 0 is clean data
    assert ours.beta[0] == 0 and ours.alpha[0] == 1 and ours.alpha_bar[0] == 1
    torch.testing.assert_close(ours.beta[1:], ref.betas, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.alpha[1:], ref.alphas, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.alpha_bar[1:], ref.alphas_cumprod, atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_q_sample_matches_diffusers_add_noise(case):
    cfg, name = CASES[case]
    ours, ref = NoiseSchedule(cfg), reference(cfg, name)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([1, 2, 10, 250, 500, 999, T, T])
    x_0 = torch.randn(len(t), 4, 8, 8, generator=g)
    eps = torch.randn(x_0.shape, generator=g)
    x_t = ours.q_sample(x_0, t, eps)
    assert x_t.shape == x_0.shape and x_t.dtype == x_0.dtype
    # diffusers computes sqrt(1 - alpha_bar) in float32; we do it in float64, which
    # differs by a few 1e-6 at small t, where 1 - alpha_bar ~ 1e-4.
    expected = ref.add_noise(x_0, eps, ours.to_diffusers_timestep(t))
    torch.testing.assert_close(x_t, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_posterior_variance_matches_diffusers(case):
    cfg, name = CASES[case]
    ours, ref = NoiseSchedule(cfg), reference(cfg, name)
    assert ours.posterior_variance[0] == 0 and ours.posterior_variance[1] == 0
    # diffusers' "fixed_small" variance for its timestep k (clamped at 1e-20)
    ref_var = torch.stack([ref._get_variance(k) for k in range(T)])
    torch.testing.assert_close(ours.posterior_variance[2:], ref_var[1:], atol=1e-7, rtol=1e-4)


# ---- closed-form numbers for the DDPM default ---------------------------------------------

def test_linear_default_numbers():
    s = NoiseSchedule()
    assert s.config == ScheduleConfig.ddpm() == ScheduleConfig()
    assert s.T == T and s.kind is BetaSchedule.LINEAR
    assert s.beta[1].item() == pytest.approx(1e-4, rel=1e-6)
    assert s.beta[T].item() == pytest.approx(0.02, rel=1e-6)
    assert s.alpha_bar[T].item() < 1e-4
    assert s.alpha_bar[T].item() == pytest.approx(4.04e-5, rel=1e-2)
    # alpha_bar_T = prod_t (1 - beta_t), beta_t = beta_1 + (t - 1) (beta_T - beta_1) / (T - 1)
    betas = [1e-4 + (t - 1) * (0.02 - 1e-4) / (T - 1) for t in range(1, T + 1)]
    assert s.alpha_bar[T].item() == pytest.approx(math.prod(1 - b for b in betas), rel=1e-5)
    # and log alpha_bar_T = sum log(1 - beta_t) ~ -sum (beta_t + beta_t^2 / 2)
    assert math.log(s.alpha_bar[T].item()) == pytest.approx(
        -sum(b + b * b / 2 for b in betas), rel=1e-4)
    # beta_tilde_2 = (1 - alpha_bar_1) / (1 - alpha_bar_2) beta_2, in exact arithmetic
    # (not from the float32 alpha_bar table: 1 - alpha_bar_1 = 1e-4 loses ~3 digits there).
    b1, b2 = betas[0], betas[1]
    expected = b1 / (1 - (1 - b1) * (1 - b2)) * b2
    assert s.posterior_variance[2].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_monotone_and_snr(case):
    s = NoiseSchedule(CASES[case][0])
    t = torch.arange(T + 1)
    assert (s.alpha_bar[1:] < s.alpha_bar[:-1]).all()  # strictly decreasing
    snr = s.snr(t)
    assert snr[0] == math.inf and (snr[1:] < snr[:-1]).all()
    assert (s.log_snr(t)[1:] < s.log_snr(t)[:-1]).all()
    ab = s.alpha_bar.double()
    torch.testing.assert_close(snr[1:].double(), ab[1:] / (1 - ab[1:]), rtol=1e-3, atol=0)
    torch.testing.assert_close(s.log_snr(t)[1:].exp(), snr[1:], rtol=1e-4, atol=0)
    assert s.snr(5).shape == () and s.snr(torch.tensor([[1, 2]])).shape == (1, 2)


def test_sqrt_tables_are_consistent():
    s = NoiseSchedule()
    torch.testing.assert_close(s.sqrt_alpha_bar ** 2, s.alpha_bar)
    torch.testing.assert_close(s.sqrt_one_minus_alpha_bar ** 2, 1 - s.alpha_bar,
                               atol=1e-6, rtol=1e-5)


# ---- q_sample and q_step -------------------------------------------------------------

def test_q_sample_int_t_and_t0():
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(1)
    x_0, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    torch.testing.assert_close(s.q_sample(x_0, 0, eps), x_0, atol=0, rtol=0)  # t = 0: clean
    same = s.q_sample(x_0, 7, eps)
    torch.testing.assert_close(same, s.q_sample(x_0, torch.full((3,), 7), eps))
    ab = s.alpha_bar[7]
    torch.testing.assert_close(same, ab.sqrt() * x_0 + (1 - ab).sqrt() * eps)
    # dtype follows x_0
    y = s.q_sample(x_0.double(), torch.tensor([1, 2, 3], dtype=torch.int32), eps.double())
    assert y.dtype == torch.float64


def test_q_step_without_noise_is_product_of_sqrt_alpha():
    s = NoiseSchedule()
    x = torch.ones(1)
    for t in range(1, T + 1):
        x = s.q_step(x, t, torch.zeros(1))
        if t in (1, 10, 100, 1000):  # prod_{i<=t} sqrt(alpha_i) = sqrt(alpha_bar_t)
            assert x.item() == pytest.approx(s.sqrt_alpha_bar[t].item(), rel=1e-4)


def test_iterated_q_step_matches_closed_form_statistics():
    """Applying q(x_t | x_{t-1}) t* times gives q(x_t* | x_0) = N(sqrt(ab) x_0, (1 - ab) I)."""
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(1234)
    n = 20_000
    x0_values = torch.tensor([-2.0, 0.0, 0.5, 1.5])
    x = x0_values.expand(n, -1).clone()  # [n, 4]: n independent chains per x_0 value
    checks = {10, 100, 500, 1000}
    for t in range(1, T + 1):
        x = s.q_step(x, t, torch.randn(x.shape, generator=g))
        if t in checks:
            ab = s.alpha_bar[t].double().item()
            mean, var = x.double().mean(0), x.double().var(0)
            # 5 standard errors: se(mean) = sqrt(var / n), se(var) ~ var sqrt(2 / n)
            v = 1 - ab
            assert (mean - math.sqrt(ab) * x0_values.double()).abs().max() < 5 * math.sqrt(v / n)
            assert (var - v).abs().max() < 5 * v * math.sqrt(2 / n)


def test_q_step_batch_of_t():
    s = NoiseSchedule()
    x, eps = torch.randn(2, 3), torch.randn(2, 3)
    y = s.q_step(x, torch.tensor([1, T]), eps)
    torch.testing.assert_close(y[0], s.alpha[1].sqrt() * x[0] + s.beta[1].sqrt() * eps[0])
    torch.testing.assert_close(y[1], s.alpha[T].sqrt() * x[1] + s.beta[T].sqrt() * eps[1])


# ---- the posterior q(x_{t-1} | x_t, x_0) ---------------------------------------------------

def test_q_posterior_mean_is_ddpm_eq_7():
    s = NoiseSchedule()
    betas = [0.0] + [1e-4 + (t - 1) * (0.02 - 1e-4) / (T - 1) for t in range(1, T + 1)]  # exact, by t
    ab = [math.prod(1 - b for b in betas[1:t + 1]) for t in range(T + 1)]
    g = torch.Generator().manual_seed(3)
    x_0, x_t = torch.randn(2, 5, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64)
    for t in [1, 2, 10, 500, T]:
        # mu_tilde_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
        #            + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
        expected = (math.sqrt(ab[t - 1]) * betas[t] / (1 - ab[t]) * x_0
                    + math.sqrt(1 - betas[t]) * (1 - ab[t - 1]) / (1 - ab[t]) * x_t)
        torch.testing.assert_close(s.q_posterior_mean(x_0, x_t, t), expected, atol=1e-6, rtol=1e-6)
    # t = 1: the posterior is the point x_0 (alpha_bar_0 = 1)
    torch.testing.assert_close(s.q_posterior_mean(x_0, x_t, 1), x_0)
    # one t per batch item
    tt = torch.tensor([2, T])
    rows = torch.stack([s.q_posterior_mean(x_0[i:i + 1], x_t[i:i + 1], int(tt[i]))[0] for i in range(2)])
    torch.testing.assert_close(s.q_posterior_mean(x_0, x_t, tt), rows)
    with pytest.raises(ValueError, match=r"t must be in \[1, 1000\].*\[0\]"):
        s.q_posterior_mean(x_0, x_t, 0)  # there is no x_{-1}
    with pytest.raises(ValueError, match=r"x_0 must have the shape of x_t: expected \[2, 5\], got \[2, 4\]"):
        s.q_posterior_mean(x_0[:, :4], x_t, 5)


# ---- sample_t ------------------------------------------------------------------------

def test_sample_t_range_and_determinism():
    s = NoiseSchedule.from_kind("linear", T=10)
    t = s.sample_t(5000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.shape == (5000,)
    assert t.min() == 1 and t.max() == 10
    assert set(t.tolist()) == set(range(1, 11))
    again = s.sample_t(5000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)
    assert NoiseSchedule().sample_t(3).shape == (3,)
    with pytest.raises(ValueError, match="batch_size"):
        s.sample_t(-1)


# ---- config, presets, kinds, repr ----------------------------------------------------

def test_presets_and_string_kinds():
    assert ScheduleConfig.stable_diffusion() == ScheduleConfig(
        "scaled_linear", T=1000, beta_1=0.00085, beta_T=0.012)
    assert ScheduleConfig(kind="cosine").kind is BetaSchedule.COSINE
    assert ScheduleConfig.cosine().cosine_s == 0.008
    s = NoiseSchedule.from_kind("scaled_linear")
    assert s.config == ScheduleConfig.stable_diffusion()
    c = NoiseSchedule.from_kind(BetaSchedule.COSINE, T=50)
    assert c.T == 50 and c.alpha_bar.shape == (51,) and c.kind is BetaSchedule.COSINE
    assert c.beta[50].item() == pytest.approx(0.999)  # clipped
    r = repr(NoiseSchedule())
    assert "linear" in r and "T=1000" in r and len(r) < 120


def test_small_T_matches_diffusers():
    cfg = ScheduleConfig.ddpm(T=1)
    s = NoiseSchedule(cfg)
    assert s.beta.tolist() == pytest.approx([0.0, 1e-4])
    s = NoiseSchedule(ScheduleConfig.cosine(T=20))
    ref = reference(s.config, "squaredcos_cap_v2")
    torch.testing.assert_close(s.alpha_bar[1:], ref.alphas_cumprod)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="quadratic"),
     r"kind must be one of 'linear', 'scaled_linear', 'cosine'; got 'quadratic'"),
    (dict(T=0), r"T must be an int >= 1; got 0"),
    (dict(T=10.0), r"T must be an int >= 1; got 10.0"),
    (dict(beta_1=0.0), r"0 < beta_1 <= beta_T < 1; got beta_1=0.0"),
    (dict(beta_1=0.03, beta_T=0.02), r"beta_1=0.03, beta_T=0.02"),
    (dict(beta_T=1.0), r"beta_T=1.0"),
    (dict(cosine_s=-0.1), r"0 <= cosine_s < 1; got cosine_s=-0.1"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScheduleConfig(**kwargs)


def test_from_kind_bad_string():
    with pytest.raises(ValueError, match="kind must be one of"):
        NoiseSchedule.from_kind("squaredcos_cap_v2")


# ---- diffusers timesteps -------------------------------------------------------------

def test_diffusers_timestep_conversion():
    s = NoiseSchedule()
    assert s.to_diffusers_timestep(1) == 0 and s.to_diffusers_timestep(T) == T - 1
    assert s.from_diffusers_timestep(0) == 1 and s.from_diffusers_timestep(T - 1) == T
    assert isinstance(s.to_diffusers_timestep(5), int)
    t = torch.tensor([1, 17, T])
    assert torch.equal(s.from_diffusers_timestep(s.to_diffusers_timestep(t)), t)
    with pytest.raises(ValueError, match=r"t must be in \[1, 1000\].*\[0\]"):
        s.to_diffusers_timestep(0)
    with pytest.raises(ValueError, match=r"diffusers timestep k must be in \[0, 999\].*\[1000\]"):
        s.from_diffusers_timestep(T)


# ---- the helpers that every update uses (here and in tinyldm.sample) -----------------------

def test_check_t_returns_int64_and_names_the_argument():
    s = NoiseSchedule()
    t = s.check_t(5)
    assert t.dtype == torch.int64 and t.shape == () and t == 5
    t = s.check_t(torch.tensor([1, 2], dtype=torch.int32))
    assert t.dtype == torch.int64 and t.tolist() == [1, 2]
    assert s.check_t(T).item() == T and s.check_t(0).item() == 0  # [0, T] by default
    with pytest.raises(ValueError, match=r"t_prev must be in \[1, 999\] \(T = 1000\); got out-of-range values \[0\]"):
        s.check_t(torch.tensor([0, 3]), low=1, high=T - 1, name="t_prev")
    with pytest.raises(TypeError, match="t must be an int or an integer tensor; got float"):
        s.check_t(2.0)
    with pytest.raises(TypeError, match="t must be an integer tensor; got dtype torch.bool"):
        s.check_t(torch.tensor([True]))


def test_coef_is_table_at_t_shaped_to_broadcast_against_x():
    s = NoiseSchedule()
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float64)
    c = s.coef(s.alpha_bar, torch.tensor([1, 10, T]), x)
    assert c.shape == (3, 1, 1, 1) and c.dtype == torch.float64
    assert c.flatten().tolist() == s.alpha_bar[[1, 10, T]].double().tolist()
    c = s.coef(s.beta, s.check_t(7), x)  # one t for the whole batch
    assert c.shape == (1, 1, 1, 1) and c.item() == s.beta[7].item()
    assert s.coef(s.beta, 7, x).item() == c.item()  # an int is fine too


def test_check_inputs_returns_t_and_says_what_is_wrong():
    s = NoiseSchedule()
    x = torch.zeros(2, 3)
    assert s.check_inputs(x, 4, x, low=1).tolist() == 4
    with pytest.raises(ValueError, match=r"noise must have the shape of y: expected \[2, 3\], got \[2\]"):
        s.check_inputs(x, 4, torch.zeros(2), x_name="y", eps_name="noise")
    with pytest.raises(ValueError, match=r"t must be in \[1, 1000\]"):
        s.check_inputs(x, 0, x, low=1)
    with pytest.raises(TypeError, match="x_t must be a floating-point tensor; got list"):
        s.check_inputs([0.0], 1, x)


# ---- bad inputs ----------------------------------------------------------------------

def test_bad_t_values():
    s = NoiseSchedule()
    x, eps = torch.zeros(3, 2), torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"t must be in \[0, 1000\].*\[-1, 1001\]"):
        s.q_sample(x, torch.tensor([-1, 5, 1001]), eps)
    with pytest.raises(ValueError, match=r"t must be in \[0, 1000\].*\[1001\]"):
        s.q_sample(x, 1001, eps)
    with pytest.raises(ValueError, match=r"t must be in \[1, 1000\].*\[0\]"):
        s.q_step(x, 0, eps)  # no step leads into t = 0
    with pytest.raises(ValueError, match=r"t must be in \[0, 1000\]"):
        s.snr(-3)
    with pytest.raises(TypeError, match="integer"):
        s.q_sample(x, torch.tensor([0.5, 1.0, 2.0]), eps)


def test_bad_shapes():
    s = NoiseSchedule()
    x, eps = torch.zeros(4, 3, 8, 8), torch.zeros(4, 3, 8, 8)
    with pytest.raises(ValueError, match=r"t.shape = \[3\], x_0.shape = \[4, 3, 8, 8\]"):
        s.q_sample(x, torch.tensor([1, 2, 3]), eps)
    with pytest.raises(ValueError, match=r"t.shape = \[4, 1\]"):
        s.q_sample(x, torch.ones(4, 1, dtype=torch.long), eps)
    with pytest.raises(ValueError, match=r"expected \[4, 3, 8, 8\], got \[4, 3, 8\]"):
        s.q_sample(x, 5, torch.zeros(4, 3, 8))
    with pytest.raises(ValueError, match=r"x_prev.shape = \[4, 3, 8, 8\]"):
        s.q_step(x, torch.tensor([1, 2]), eps)
    with pytest.raises(TypeError, match="floating-point"):
        s.q_sample(torch.zeros(4, dtype=torch.long), 1, torch.zeros(4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tables_follow_x_to_the_device():
    s = NoiseSchedule()
    x = torch.randn(4, 3, 8, 8, device="cuda")
    eps = torch.randn_like(x)
    t_cpu = torch.tensor([1, 10, 500, T])
    expected = s.q_sample(x.cpu(), t_cpu, eps.cpu())
    for t in (t_cpu, t_cpu.cuda()):  # t may live on the CPU or on x's device
        y = s.q_sample(x, t, eps)
        assert y.device == x.device
        torch.testing.assert_close(y.cpu(), expected)
    assert s.q_step(x.half(), 5, eps.half()).dtype == torch.float16
    t = s.sample_t(8, device="cuda")
    assert t.device.type == "cuda" and s.snr(t).device == t.device
    assert s.alpha_bar.device.type == "cpu"  # the tables themselves stay put
