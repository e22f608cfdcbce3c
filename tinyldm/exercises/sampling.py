"""Exercises of notebook 04: the x_0 that eps implies, one step of Algorithm 2 with either sigma_t, a DDIM step."""

from __future__ import annotations

import torch

from ..sample import ddim_step, ddpm_step, predict_x0
from .core import Case, Exercise, Mistake, register
from .noising import SCHEDULE, _alpha_from_bar, _col, _g

T = SCHEDULE.T


# -- 04.predict_x0 ---------------------------------------------------------------------------------------------------

def _x0_cases():
    ab = SCHEDULE.alpha_bar
    x, e = torch.randn(4, 4, 8, 8, generator=_g(10)), torch.randn(4, 4, 8, 8, generator=_g(11))
    return [Case((x, torch.randint(1, T + 1, (4,), generator=_g(12)), e, ab), "four latents at random t"),
            Case((x, torch.full((4,), 1), e, ab), "t = 1"),
            Case((x, torch.full((4,), 700), e, ab), "t = 700")]


register(Exercise(
    name="04.predict_x0",
    title="the x_0 that eps implies",
    stub='''def predict_x0(x_t, t, eps, alpha_bar):
    """Solve x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps for x_0.

    x_t, eps: [b, c, h, w]; t: int64 [b] in 1..T; alpha_bar: float32 [T + 1], indexed by t.
    Returns x_0_hat: [b, c, h, w].
    """
    raise NotImplementedError''',
    reference=lambda x_t, t, eps, ab: predict_x0(SCHEDULE, x_t, t, eps),
    cases=_x0_cases,
    mistakes=[
        Mistake(lambda x, t, e, ab: (x - (1 - _col(_alpha_from_bar(ab), t, x)).sqrt() * e)
                / _col(_alpha_from_bar(ab), t, x).sqrt(),
                "It matches the formula with alpha_t in place of alpha_bar_t: x_t was made from x_0 by all t steps."),
        Mistake(lambda x, t, e, ab: (x - (1 - _col(ab, t, x)).sqrt() * e) * _col(ab, t, x).sqrt(),
                "You multiply by sqrt(alpha_bar_t) at the end: solving for x_0 divides by it."),
        Mistake(lambda x, t, e, ab: (x + (1 - _col(ab, t, x)).sqrt() * e) / _col(ab, t, x).sqrt(),
                "The noise must be taken away from x_t, not added."),
    ],
    hints=["Move the noise term to the left side, then divide by the coefficient of x_0."],
))


# -- 04.ddpm_step ----------------------------------------------------------------------------------------------------

def _ddpm_reference(x_t, t, eps, z, beta, alpha_bar, variance):
    return ddpm_step(SCHEDULE, x_t, t, eps, z, variance="fixed_large" if variance == "large" else "fixed_small")


def _ddpm_cases():
    x, e, z = (torch.randn(3, 4, 8, 8, generator=_g(s)) for s in (13, 14, 15))
    b, ab = SCHEDULE.beta, SCHEDULE.alpha_bar
    return [Case((x, 500, e, z, b, ab, "small"), "t = 500, sigma_t^2 = beta_tilde_t"),
            Case((x, 500, e, z, b, ab, "large"), "t = 500, sigma_t^2 = beta_t"),
            Case((x, T, e, z, b, ab, "small"), f"t = T = {T}, the first step"),
            Case((x, 2, e, z, b, ab, "large"), "t = 2"),
            Case((x, 1, e, z, b, ab, "large"), "t = 1, the last step (line 3: z = 0)"),
            Case((x[:1], 37, e[:1], z[:1], b, ab, "small"), "a batch of one at t = 37")]


def _ddpm_mistake(alpha_of=None, sigma_of=None, noise_at_1=False, sigma_sq=False):
    """A wrong version of line 4: alpha_t from alpha_bar_t, another sigma_t, or z kept at t = 1."""
    def step(x_t, t, eps, z, beta, ab, variance):
        b_t, ab_t = beta[t], ab[t]
        a_t = 1 - b_t if alpha_of is None else alpha_of(beta, ab, t)
        small = (1 - ab[t - 1]) / (1 - ab_t) * b_t
        sigma2 = b_t if variance == "large" else small
        if sigma_of is not None:
            sigma2 = sigma_of(b_t, small, variance)
        sigma = sigma2 if sigma_sq else sigma2.sqrt()
        mean = (x_t - b_t / (1 - ab_t).sqrt() * eps) / a_t.sqrt()
        return mean + (sigma * z if (t > 1 or noise_at_1) else 0)
    return step


register(Exercise(
    name="04.ddpm_step",
    title="one step of Algorithm 2",
    stub='''def ddpm_step(x_t, t, eps, z, beta, alpha_bar, variance):
    """x_{t-1} from x_t: line 4 of DDPM's Algorithm 2 (with line 3: z = 0 when t = 1).

        x_{t-1} = 1 / sqrt(alpha_t) (x_t - (1 - alpha_t) / sqrt(1 - alpha_bar_t) eps) + sigma_t z

    x_t, eps, z: [b, c, h, w]; t: an int in 1..T (one t for the batch); beta, alpha_bar: float32 [T + 1],
    indexed by t. variance: "large" (sigma_t^2 = beta_t) or "small" (sigma_t^2 = beta_tilde_t =
    (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t). Returns x_{t-1}: [b, c, h, w].
    """
    raise NotImplementedError''',
    reference=_ddpm_reference,
    cases=_ddpm_cases,
    mistakes=[
        Mistake(_ddpm_mistake(noise_at_1=True),
                "Right but at t = 1: line 3 of Algorithm 2 adds no noise in the last step (z = 0 there)."),
        Mistake(_ddpm_mistake(alpha_of=lambda beta, ab, t: ab[t]),
                "It matches 1 / sqrt(alpha_bar_t) in front: the step divides by sqrt(alpha_t) of one step."),
        Mistake(_ddpm_mistake(sigma_sq=True),
                "The noise is scaled by sigma_t^2: multiply z by the standard deviation sigma_t."),
        Mistake(_ddpm_mistake(sigma_of=lambda b, small, v: b),
                "It matches sigma_t^2 = beta_t for both choices: for 'small' it is beta_tilde_t."),
        Mistake(_ddpm_mistake(sigma_of=lambda b, small, v: small),
                "It matches sigma_t^2 = beta_tilde_t for both choices: for 'large' it is beta_t."),
        Mistake(_ddpm_mistake(sigma_of=lambda b, small, v: small if v == "large" else b),
                "The two variances are swapped: which one is beta_t?"),
    ],
    hints=["1 - alpha_t is beta_t. Compute the mean first, then add sigma_t z unless t = 1.",
           "beta_tilde_t needs alpha_bar_{t-1}: alpha_bar[t - 1] (alpha_bar[0] = 1)."],
))


# -- 04.ddim_step ----------------------------------------------------------------------------------------------------

def _ddim_cases():
    x, e = torch.randn(3, 4, 8, 8, generator=_g(16)), torch.randn(3, 4, 8, 8, generator=_g(17))
    ab = SCHEDULE.alpha_bar
    return [Case((x, 1000, 950, e, ab), "t = 1000 to 950"), Case((x, 500, 450, e, ab), "t = 500 to 450"),
            Case((x, 60, 10, e, ab), "t = 60 to 10"), Case((x, 20, 0, e, ab), "t = 20 to 0, the last step"),
            Case((x[:1], 300, 100, e[:1], ab), "a batch of one, t = 300 to 100")]


register(Exercise(
    name="04.ddim_step",
    title="a deterministic DDIM step",
    stub='''def ddim_step(x_t, t, t_prev, eps, alpha_bar):
    """x_{t_prev} from x_t with DDIM and eta = 0 (Song et al. 2021, eq. 12):

        x_{t_prev} = sqrt(alpha_bar_{t_prev}) x_0_hat + sqrt(1 - alpha_bar_{t_prev}) eps

    with x_0_hat the x_0 that eps implies at t. x_t, eps: [b, c, h, w]; t > t_prev >= 0, ints;
    alpha_bar: float32 [T + 1], indexed by t (alpha_bar[0] = 1). Returns x_{t_prev}: [b, c, h, w].
    """
    raise NotImplementedError''',
    reference=lambda x_t, t, t_prev, eps, ab: ddim_step(SCHEDULE, x_t, t, t_prev, eps, eta=0.0),
    cases=_ddim_cases,
    mistakes=[
        Mistake(lambda x, t, tp, e, ab: ddim_step(SCHEDULE, x, t, t - 1, e, eta=0.0),
                "It matches a step to t - 1: DDIM jumps from t to t_prev."),
        Mistake(lambda x, t, tp, e, ab: ab[tp].sqrt() * (x - (1 - ab[t]).sqrt() * e) / ab[t].sqrt(),
                "The direction term is missing: the noise part of x_{t_prev} is sqrt(1 - alpha_bar_{t_prev}) eps."),
        Mistake(lambda x, t, tp, e, ab: ab[tp].sqrt() * (x - (1 - ab[t]).sqrt() * e) / ab[t].sqrt()
                + (1 - ab[t]).sqrt() * e,
                "The direction term uses alpha_bar_t: at the new time it is sqrt(1 - alpha_bar_{t_prev}) eps."),
    ],
    hints=["First x_0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t); then put it back at the noise "
           "level of t_prev with the same eps."],
))
