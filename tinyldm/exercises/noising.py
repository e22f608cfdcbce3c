"""Exercises of notebook 02: the beta schedule, alpha_bar, q(x_t | x_0), one step of q(x_t | x_{t-1}), the SNR."""

from __future__ import annotations

import torch

from ..schedule import NoiseSchedule, ScheduleConfig
from .core import Case, Exercise, Mistake, register

SCHEDULE = NoiseSchedule()  # DDPM's linear betas 1e-4 .. 0.02, T = 1000


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _col(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[t] shaped [b, 1, 1, 1] to broadcast over a batch, in the batch's dtype."""
    return table[t].to(like.dtype).view(-1, *[1] * (like.ndim - 1))


# -- 02.alpha_bar ----------------------------------------------------------------------------------------------------

def _alpha_bar_cases():
    tables = {"DDPM's linear schedule, T = 1000": NoiseSchedule().beta,
              "the cosine schedule, T = 1000": NoiseSchedule(ScheduleConfig.cosine()).beta,
              "a short linear schedule, T = 10": NoiseSchedule(ScheduleConfig.ddpm(T=10)).beta}
    return [Case((beta.double(),), where) for where, beta in tables.items()]


register(Exercise(
    name="02.alpha_bar",
    title="alpha_bar from the betas",
    stub='''def alpha_bar(beta):
    """alpha_bar_t = prod_{i <= t} alpha_i with alpha_i = 1 - beta_i, for every t.

    beta: float64 [T + 1], indexed by t; beta[0] = 0 (t = 0 is clean data).
    Returns float64 [T + 1], indexed by t; alpha_bar[0] = 1.
    """
    raise NotImplementedError''',
    reference=lambda beta: torch.cumprod(1 - beta, dim=0),
    cases=_alpha_bar_cases,
    mistakes=[
        Mistake(lambda beta: torch.cumsum(1 - beta, dim=0),
                "It matches a running sum of the alphas: alpha_bar is a product of them."),
        Mistake(lambda beta: torch.cumprod(beta, dim=0),
                "It matches the product of the betas: alpha_bar multiplies alpha_i = 1 - beta_i."),
        Mistake(lambda beta: 1 - torch.cumsum(beta, dim=0),
                "It matches 1 minus the sum of the betas, which is close only while the betas are small: multiply "
                "the alphas instead."),
        Mistake(lambda beta: torch.cat([torch.ones(1, dtype=beta.dtype), torch.cumprod(1 - beta, 0)[:-1]]),
                "It is shifted by one step: entry t must include alpha_t itself (index 0 is t = 0)."),
    ],
    hints=["Each alpha_bar_t is alpha_bar_{t-1} times alpha_t: a running product. torch has one for tensors.",
           "torch has a running product for tensors (torch.cumprod); what must its entry 0 be, and why is it?"],
    atol=1e-12, rtol=1e-10,
))


# -- 02.q_sample -----------------------------------------------------------------------------------------------------

def _q_cases():
    ab, T = SCHEDULE.alpha_bar, SCHEDULE.T
    x, e = torch.randn(6, 4, 8, 8, generator=_g(0)), torch.randn(6, 4, 8, 8, generator=_g(1))
    return [
        Case((x, torch.randint(1, T + 1, (6,), generator=_g(2)), e, ab), "six latents at random t"),
        Case((x, torch.full((6,), 1), e, ab), "t = 1, the first step of noise"),
        Case((x, torch.full((6,), T), e, ab), f"t = T = {T}, almost pure noise"),
        Case((x[:1], torch.tensor([500]), e[:1], ab), "a batch of one image at t = 500"),
        Case((x.double(), torch.tensor([3, 30, 300, 600, 900, 1000]), e.double(), ab), "float64 inputs"),
    ]


def _alpha_from_bar(ab: torch.Tensor) -> torch.Tensor:
    return torch.cat([ab[:1], ab[1:] / ab[:-1]])


register(Exercise(
    name="02.q_sample",
    title="q(x_t | x_0) in closed form",
    stub='''def q_sample(x_0, t, eps, alpha_bar):
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, one t per item.

    x_0, eps: [b, c, h, w] (any float dtype); t: int64 [b] in 1..T;
    alpha_bar: float32 [T + 1], indexed by t.
    Returns x_t: [b, c, h, w], in x_0's dtype.
    """
    raise NotImplementedError''',
    reference=lambda x_0, t, eps, alpha_bar: _col(alpha_bar, t, x_0).sqrt() * x_0 + (
        1 - _col(alpha_bar, t, x_0)).sqrt() * eps,
    cases=_q_cases,
    mistakes=[
        Mistake(lambda x_0, t, eps, ab: _col(_alpha_from_bar(ab), t, x_0).sqrt() * x_0
                + (1 - _col(_alpha_from_bar(ab), t, x_0)).sqrt() * eps,
                "It matches the formula with alpha_t in place of alpha_bar_t: did you use the product of all the "
                "steps up to t?"),
        Mistake(lambda x_0, t, eps, ab: _col(ab, t - 1, x_0).sqrt() * x_0 + (1 - _col(ab, t - 1, x_0)).sqrt() * eps,
                "Off by one step in t: the tables are indexed by t = 1..T directly (index 0 is clean data)."),
        Mistake(lambda x_0, t, eps, ab: _col(ab, t, x_0) * x_0 + (1 - _col(ab, t, x_0)) * eps,
                "It matches the formula without the square roots: the coefficients scale standard deviations."),
        Mistake(lambda x_0, t, eps, ab: (1 - _col(ab, t, x_0)).sqrt() * x_0 + _col(ab, t, x_0).sqrt() * eps,
                "The two coefficients are swapped: which one shrinks the data as t grows?"),
        Mistake(lambda x_0, t, eps, ab: _col(ab, t, x_0).sqrt() * x_0 + (1 - _col(ab, t, x_0).sqrt()) * eps,
                "The noise's coefficient is 1 - sqrt(alpha_bar_t): it must be sqrt(1 - alpha_bar_t), so that x_t keeps "
                "unit variance."),
    ],
    hints=["Look up alpha_bar at each item's t (alpha_bar[t] is [b]) and reshape it to [b, 1, 1, 1] so that it "
           "multiplies each image.",
           "Index the table with the whole tensor t at once, then .view(-1, 1, 1, 1); cast to x_0's dtype so that "
           "float64 inputs give a float64 result."],
))


# -- 02.q_step -------------------------------------------------------------------------------------------------------

def _step_cases():
    beta, T = SCHEDULE.beta, SCHEDULE.T
    x, e = torch.randn(5, 4, 8, 8, generator=_g(3)), torch.randn(5, 4, 8, 8, generator=_g(4))
    return [Case((x, torch.randint(1, T + 1, (5,), generator=_g(5)), e, beta), "five latents at random t"),
            Case((x, torch.full((5,), 1), e, beta), "t = 1"),
            Case((x, torch.full((5,), T), e, beta), f"t = T = {T}"),
            Case((x[:1], torch.tensor([7]), e[:1], beta), "a batch of one at t = 7")]


register(Exercise(
    name="02.q_step",
    title="one step of the forward process, q(x_t | x_{t-1})",
    stub='''def q_step(x_prev, t, eps, beta):
    """x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps: one step of noise.

    x_prev (x_{t-1}), eps: [b, c, h, w]; t: int64 [b] in 1..T;
    beta: float32 [T + 1], indexed by t (beta[0] = 0).
    Returns x_t: [b, c, h, w].
    """
    raise NotImplementedError''',
    reference=lambda x, t, eps, beta: (1 - _col(beta, t, x)).sqrt() * x + _col(beta, t, x).sqrt() * eps,
    cases=_step_cases,
    mistakes=[
        Mistake(lambda x, t, eps, beta: _col(torch.cumprod(1 - beta, 0), t, x).sqrt() * x
                + (1 - _col(torch.cumprod(1 - beta, 0), t, x)).sqrt() * eps,
                "It matches q(x_t | x_0): one step uses beta_t alone, not the product alpha_bar_t."),
        Mistake(lambda x, t, eps, beta: (1 - _col(beta, t, x)) * x + _col(beta, t, x) * eps,
                "It matches the step without square roots: beta_t is a variance, the step adds a standard deviation."),
        Mistake(lambda x, t, eps, beta: (1 - _col(beta, t - 1, x)).sqrt() * x + _col(beta, t - 1, x).sqrt() * eps,
                "Off by one in t: the step to x_t uses beta_t, and the table is indexed by t."),
        Mistake(lambda x, t, eps, beta: x + _col(beta, t, x).sqrt() * eps,
                "The signal must shrink as noise is added (by sqrt(1 - beta_t)), or the variance grows every step."),
    ],
    hints=["DDPM eq. 2: q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I). A sample of it is mean + std * eps.",
           "Shape beta[t] to [b, 1, 1, 1], as the closed form's coefficient."],
))


# -- 02.snr ----------------------------------------------------------------------------------------------------------

def _snr_cases():
    ab, T = SCHEDULE.alpha_bar, SCHEDULE.T
    return [Case((torch.randint(1, T + 1, (16,), generator=_g(6)), ab), "sixteen random t"),
            Case((torch.tensor([1]), ab), "t = 1, signal dominates"),
            Case((torch.tensor([T]), ab), f"t = T = {T}, noise dominates")]


register(Exercise(
    name="02.snr",
    title="the signal-to-noise ratio",
    stub='''def snr(t, alpha_bar):
    """snr_t = alpha_bar_t / (1 - alpha_bar_t): the variance of the signal in x_t over that of the noise.

    t: int64 [b] in 1..T; alpha_bar: float32 [T + 1], indexed by t.
    Returns float32 [b].
    """
    raise NotImplementedError''',
    reference=lambda t, ab: ab[t] / (1 - ab[t]),
    cases=_snr_cases,
    mistakes=[
        Mistake(lambda t, ab: (1 - ab[t]) / ab[t], "It is the noise over the signal: put the signal on top."),
        Mistake(lambda t, ab: ab[t].sqrt() / (1 - ab[t]).sqrt(),
                "It is the ratio of standard deviations: the SNR compares variances (its square)."),
        Mistake(lambda t, ab: torch.log(ab[t] / (1 - ab[t])), "It is the log-SNR: the exercise asks for the ratio."),
    ],
    hints=["In x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps with unit-variance x_0 and eps, the signal's "
           "variance is alpha_bar_t and the noise's 1 - alpha_bar_t."],
    rtol=1e-5,
))
