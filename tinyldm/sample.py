"""Samplers: turn noise x_T ~ N(0, I) into data x_0 with a denoiser eps_theta(x_t, t).

The math of each sampler is one pure function, written next to the paper's equation:

* ``ddpm_step``   DDPM's Algorithm 2, line 4 (Ho et al. 2020), with both choices of sigma_t^2;
* ``ddim_step``   DDIM's equation 12 (Song et al. 2021), any eta in [0, 1];
* ``dpm_solver_pp_2m_step``  DPM-Solver++(2M) (Lu et al. 2022), the multistep 2nd-order solver;
* ``predict_x0``  the x_0 that eps implies ("the predicted x_0 along the way").

``algorithm2`` is DDPM's Algorithm 2 written out whole, line by line, to be read against the paper;
``sample(eps_model, DDPM(schedule), ...)`` computes the same numbers from the pieces below.

The sampler objects (``DDPM``, ``DDIM``, ``DPMSolverPP2M``) only choose the timesteps, draw the
noise and keep the multistep memory. The loop stays with the user; ``sample`` writes it once:

    sampler = DDIM(schedule, steps=50, eta=0.0)        # or DDPM(schedule), DPMSolverPP2M(schedule, steps=20)
    x = sampler.init_noise((b, c, h, w), generator=g)  # x_T ~ N(0, I)
    for t in sampler.timesteps:                         # descending ints in [1, T]
        eps = eps_model(x, torch.full((b,), t))
        x = sampler.step(x, t, eps, generator=g)        # x at the next (smaller) t; after the last, x_0

Time convention: schedule.py's. t = 1..T, tables indexed by t, t = 0 is clean data (alpha_bar_0 = 1).
The denoiser is any callable ``eps_model(x_t, t) -> eps`` with x_t [b, ...] and t int64 [b];
nothing here knows about networks (classifier-free guidance is a wrapper around that callable).
Random numbers come only from the ``generator`` passed in, so a seed fixes the samples.

``clip_x0 = c`` (off by default) clamps the predicted x_0 to [-c, c] inside every update, as DDPM's
code and diffusers' ``clip_sample=True`` do: right for pixel-space models (data in [-1, 1], c = 1),
wrong for latents, which are not bounded. Without it, nothing is clamped.
"""

from __future__ import annotations

import operator
from enum import Enum
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import check_values
from .schedule import NoiseSchedule, ScheduleConfig

__all__ = [
    "Variance", "Spacing", "timesteps",
    "predict_x0", "ddpm_step", "ddim_step", "dpm_solver_pp_2m_step",
    "Sampler", "DDPM", "DDIM", "DPMSolverPP2M", "sample", "algorithm2",
]

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Variance(str, Enum):
    """sigma_t^2 of the reverse step p(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I).

    DDPM (section 3.2) fixes it to one of two values, the two extremes (upper and lower bounds on
    the reverse-process entropy for data of unit variance per coordinate); in the paper both give
    similar samples:

    * ``FIXED_LARGE``: sigma_t^2 = beta_t, optimal when x_0 ~ N(0, I) (the data are noise-like).
    * ``FIXED_SMALL``: sigma_t^2 = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t,
      the variance of the posterior q(x_{t-1} | x_t, x_0); optimal when x_0 is a single point.
      Latent diffusion and diffusers use it by default. beta_tilde_1 = 0.

    Values are diffusers' ``variance_type`` names.
    """

    FIXED_SMALL = "fixed_small"
    FIXED_LARGE = "fixed_large"


class Spacing(str, Enum):
    """How n timesteps are picked out of 1..T (diffusers' ``timestep_spacing``; Lin et al. 2023,
    table 2). For T = 1000, n = 10 (DDIM layout): TRAILING 1000, 900, ..., 100; LEADING 901, 801,
    ..., 1; LINSPACE 1000, 889, ..., 1. TRAILING is the one that starts at t = T, where
    x_T ~ N(0, I) is the right starting point, and the default here."""

    LEADING = "leading"
    TRAILING = "trailing"
    LINSPACE = "linspace"


def _enum(cls, value, name: str):
    try:
        return cls(value)
    except ValueError:
        valid = ", ".join(repr(v.value) for v in cls)
        raise ValueError(f"{name} must be one of {valid}; got {value!r}") from None


def _check_steps(steps, T: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an int in [1, {T}] (T = {T}); got {steps!r}")
    return steps


def timesteps(schedule: NoiseSchedule | int, n: int, spacing: Spacing | str = Spacing.TRAILING,
              *, dpm_grid: bool = False) -> list[int]:
    """The n timesteps at which a sampler evaluates the model: descending ints in [1, T].

    ``schedule``: the NoiseSchedule (or just its T). ``spacing``: see ``Spacing``. The values are
    exactly diffusers' ``set_timesteps(n)`` with ``timestep_spacing=spacing`` and
    ``steps_offset=0``, converted with ``schedule.from_diffusers_timestep``. diffusers lays out
    LINSPACE and LEADING in two ways, both offered here:

    * ``dpm_grid=False``: DDPMScheduler / DDIMScheduler, n points on diffusers' 0..T-1 grid;
    * ``dpm_grid=True``: DPMSolverMultistepScheduler, n + 1 points of which the last (the
      clean end) is dropped. TRAILING is the same in both.

    One difference from diffusers: its TRAILING spacing has, for some n (e.g. T = 1000, n = 61),
    a spurious (n + 1)-th timestep -1 (float rounding at the end of ``np.arange``); it is dropped.
    """
    if not isinstance(schedule, NoiseSchedule):  # T alone: any schedule with this T maps time alike
        schedule = NoiseSchedule(ScheduleConfig(T=schedule))
    T = schedule.T
    n = _check_steps(n, T)
    spacing = _enum(Spacing, spacing, "spacing")
    m = n + 1 if dpm_grid else n  # grid points; the first n (from the top) are model evaluations
    # k: diffusers' timesteps in 0..T-1, computed exactly as diffusers does (numpy float rounding)
    if spacing is Spacing.LINSPACE:
        k = np.linspace(0, T - 1, m).round()[::-1][:n]
    elif spacing is Spacing.LEADING:
        k = (np.arange(0, m) * (T // m)).round()[::-1][:n]
    else:  # TRAILING
        k = np.round(np.arange(T, 0, -T / n))[:n] - 1
    ts = schedule.from_diffusers_timestep(torch.from_numpy(k.astype(np.int64))).tolist()
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"spacing {spacing.value!r} with steps = {n} (T = {T}) gives repeated "
                         f"timesteps {ts}; use fewer steps or 'trailing'")
    return ts


# ---- the math: one pure function per update --------------------------------------------------
# Coefficients are looked up with schedule.coef (table[t] on x's device/dtype, shaped [b, 1, ...])
# and inputs checked with schedule.check_inputs, so shapes, devices and messages are the same as
# in q_sample.

def _check_like(v, x_t: torch.Tensor, name: str, optional: bool = False) -> None:
    """v must be a tensor of x_t's shape (or None when ``optional``)."""
    if optional and v is None:
        return
    if not isinstance(v, torch.Tensor) or v.shape != x_t.shape:
        got = list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"{name} must be {'None or ' if optional else ''}a tensor of the shape of x_t: "
                         f"expected {list(x_t.shape)}, got {got}")


def _check_eta(eta) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1] (0: deterministic DDIM, 1: DDPM's posterior "
                         f"variance); got {eta!r}")
    return float(eta)


def _check_clip(clip_x0) -> float | None:
    if clip_x0 is None:
        return None
    if isinstance(clip_x0, bool) or not isinstance(clip_x0, (int, float)) or not 0 < clip_x0 < float("inf"):
        raise ValueError(f"clip_x0 must be None (no clipping) or a number > 0 (x_0_hat is clamped to "
                         f"[-clip_x0, clip_x0]; 1.0 for data in [-1, 1]); got {clip_x0!r}")
    return float(clip_x0)


def _clip(x0_hat: torch.Tensor, clip_x0: float | None) -> torch.Tensor:
    """x0_hat clamped to [-clip_x0, clip_x0] (diffusers' clip_sample); unchanged for clip_x0 = None."""
    return x0_hat if clip_x0 is None else x0_hat.clamp(-clip_x0, clip_x0)


def _check_t_prev(schedule: NoiseSchedule, t_prev, t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    t_prev = schedule.check_t(t_prev, low=0, name="t_prev")
    if t_prev.ndim > 1 or (t_prev.ndim == 1 and t_prev.shape[0] != x_t.shape[0]):
        raise ValueError(f"t_prev must be an int or an int64 tensor [b] with b = x_t.shape[0]; "
                         f"got t_prev.shape = {list(t_prev.shape)}, x_t.shape = {list(x_t.shape)}")
    if check_values(t_prev) and not bool((t_prev < t).all()):
        raise ValueError(f"t_prev must be smaller than t (the sampler goes from t down to t_prev); "
                         f"got t = {t.tolist()}, t_prev = {t_prev.tolist()}")
    return t_prev


def predict_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """The x_0 that eps implies, solving q_sample for x_0 (DDPM eq. 4 / 15):
    x_0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).

    x_t, eps: [b, ...]; t: int or int64 [b] in [0, T]. Exact inverse of q_sample for the same eps.
    """
    t = schedule.check_inputs(x_t, t, eps, low=0, x_name="x_t")
    return ((x_t - schedule.coef(schedule.sqrt_one_minus_alpha_bar, t, x_t) * eps)
            / schedule.coef(schedule.sqrt_alpha_bar, t, x_t))


def ddpm_step(schedule: NoiseSchedule, x_t: torch.Tensor, t, eps: torch.Tensor, z: torch.Tensor | None,
              variance: Variance | str = Variance.FIXED_SMALL, clip_x0: float | None = None) -> torch.Tensor:
    """x_{t-1} from x_t: line 4 of DDPM's Algorithm 2 (lines 3-4 for z),

        x_{t-1} = 1 / sqrt(alpha_t) (x_t - (1 - alpha_t) / sqrt(1 - alpha_bar_t) eps) + sigma_t z,

    with sigma_t^2 from ``variance`` (see ``Variance``). x_t, eps, z: [b, ...]; t: int or int64 [b]
    in [1, T]. z ~ N(0, I) is an argument (drawn by the caller); it is ignored where t = 1
    (line 3: z = 0 at the last step), and z = None means z = 0 (the mean of p(x_{t-1} | x_t)).

    ``clip_x0 = c``: the mean is written as the posterior mean of the clamped predicted x_0, as in
    DDPM's code and diffusers' DDPMScheduler with clip_sample=True (without clamping, the same mean):

        x_0_hat = clamp((x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), -c, c)
        mean    = mu_tilde_t(x_t, x_0_hat)       (DDPM eq. 7, ``schedule.q_posterior_mean``)
    """
    t = schedule.check_inputs(x_t, t, eps, low=1, x_name="x_t")
    _check_like(z, x_t, "z", optional=True)
    variance = _enum(Variance, variance, "variance")
    clip_x0 = _check_clip(clip_x0)
    alpha_t, beta_t = schedule.coef(schedule.alpha, t, x_t), schedule.coef(schedule.beta, t, x_t)
    if clip_x0 is None:
        sqrt_one_minus_ab = schedule.coef(schedule.sqrt_one_minus_alpha_bar, t, x_t)
        mean = (x_t - beta_t / sqrt_one_minus_ab * eps) / alpha_t.sqrt()  # 1 - alpha_t = beta_t
    else:
        x0_hat = _clip(predict_x0(schedule, x_t, t, eps), clip_x0)
        mean = schedule.q_posterior_mean(x0_hat, x_t, t)  # eq. 7
    if z is None:
        return mean
    sigma2 = beta_t if variance is Variance.FIXED_LARGE else schedule.coef(schedule.posterior_variance, t, x_t)
    sigma = sigma2.sqrt()
    not_last = (t > 1).to(x_t.device, x_t.dtype).reshape(t.shape + (1,) * (x_t.ndim - t.ndim))  # line 3
    return mean + not_last * sigma * z  # line 4


def ddim_step(schedule: NoiseSchedule, x_t: torch.Tensor, t, t_prev, eps: torch.Tensor,
              eta: float = 0.0, z: torch.Tensor | None = None, clip_x0: float | None = None) -> torch.Tensor:
    """x_{t_prev} from x_t with DDIM, equation 12 of Song et al. 2021 (their alpha is our alpha_bar):

        x_{t_prev} = sqrt(alpha_bar_{t_prev}) x_0_hat                      "predicted x_0"
                   + sqrt(1 - alpha_bar_{t_prev} - sigma_t^2) eps          "direction pointing to x_t"
                   + sigma_t z                                             "random noise"
        x_0_hat    = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
        sigma_t    = eta sqrt((1 - alpha_bar_{t_prev}) / (1 - alpha_bar_t))
                         sqrt(1 - alpha_bar_t / alpha_bar_{t_prev})               (eq. 16)

    eta = 0: deterministic DDIM; eta = 1 with t_prev = t - 1: DDPM with sigma_t^2 = beta_tilde_t.
    t in [1, T], 0 <= t_prev < t (ints or int64 [b]); t_prev = 0 is the final step to clean data
    (alpha_bar_0 = 1, so the result is x_0_hat). z ~ N(0, I) [b, ...], needed only when eta > 0.

    ``clip_x0 = c`` clamps x_0_hat to [-c, c] in the first term; the direction keeps the model's eps
    (not the eps of the clamped x_0_hat), as diffusers' DDIMScheduler does with clip_sample=True and
    its default use_clipped_model_output=False.
    """
    t = schedule.check_inputs(x_t, t, eps, low=1, x_name="x_t")
    t_prev = _check_t_prev(schedule, t_prev, t, x_t)
    eta = _check_eta(eta)
    clip_x0 = _check_clip(clip_x0)
    _check_like(z, x_t, "z", optional=True)
    if eta > 0 and z is None:
        raise ValueError("eta > 0 needs noise: pass z ~ N(0, I) of the shape of x_t")
    ab_t = schedule.coef(schedule.alpha_bar, t, x_t)
    ab_prev = schedule.coef(schedule.alpha_bar, t_prev, x_t)
    one_minus_ab_t = schedule.coef(schedule.sqrt_one_minus_alpha_bar, t, x_t) ** 2
    one_minus_ab_prev = schedule.coef(schedule.sqrt_one_minus_alpha_bar, t_prev, x_t) ** 2
    x0_hat = _clip(predict_x0(schedule, x_t, t, eps), clip_x0)
    sigma = eta * (one_minus_ab_prev / one_minus_ab_t * (1 - ab_t / ab_prev)).sqrt()  # eq. 16
    direction = (one_minus_ab_prev - sigma**2).clamp(min=0).sqrt() * eps  # clamp: rounding at eta = 1
    x_prev = ab_prev.sqrt() * x0_hat + direction  # eq. 12 without the noise
    return x_prev + sigma * z if eta > 0 else x_prev


def dpm_solver_pp_2m_step(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, t_prev: int,
                          x0_hat: torch.Tensor, last: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """x_{t_prev} from x_t with DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), as diffusers'
    ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)`` computes it.

    The solver works in the continuous notation x_t = a_t x_0 + s_t eps, where
        a_t = sqrt(alpha_bar_t)        (the paper's alpha_t: NOT DDPM's alpha_t = 1 - beta_t)
        s_t = sqrt(1 - alpha_bar_t)    (the paper's sigma_t: NOT DDPM's sigma_t of the reverse step)
        lambda_t = log(a_t / s_t)      (half the log-SNR; lambda_0 = +inf)
    and integrates the probability-flow ODE in lambda with the data prediction x0_hat = x_theta(x_t, t):

        h = lambda_{t_prev} - lambda_t
        x_{t_prev} = (s_{t_prev} / s_t) x_t - a_{t_prev} (e^{-h} - 1) D
        D = x0_hat                                              first order (= DDIM with eta = 0)
        D = (1 + 1 / (2 r)) x0_hat - 1 / (2 r) x0_last,  r = (lambda_t - lambda_last) / h   second order

    ``last`` = (t_last, x0_last): the previous model evaluation (at t_last > t), or None for the
    first-order update. At t_prev = 0 (s = 0, lambda = +inf) the update is always first order and
    returns x0_hat: the second-order term has r = 0 there (diffusers' final_sigmas_type="zero").
    t, t_prev: ints, 0 <= t_prev < t <= T; x_t, x0_hat: [b, ...].
    """
    if not isinstance(x_t, torch.Tensor) or not x_t.is_floating_point():
        raise TypeError(f"x_t must be a floating-point tensor; got {getattr(x_t, 'dtype', type(x_t).__name__)}")
    _check_like(x0_hat, x_t, "x0_hat")
    t, t_prev = schedule.check_t(t, low=1), schedule.check_t(t_prev, low=0, name="t_prev")
    if t.ndim or t_prev.ndim or not t_prev < t:
        raise ValueError(f"t and t_prev must be ints with t_prev < t (one t for the whole batch); "
                         f"got t = {t.tolist()}, t_prev = {t_prev.tolist()}")
    if t_prev == 0:
        return x0_hat  # s_0 = 0, a_0 = 1, e^{-h} = 0: x_0 = D = x0_hat

    def a(u):  # a_u = sqrt(alpha_bar_u), on x_t's device/dtype
        return schedule.coef(schedule.sqrt_alpha_bar, u, x_t)

    def s(u):  # s_u = sqrt(1 - alpha_bar_u)
        return schedule.coef(schedule.sqrt_one_minus_alpha_bar, u, x_t)

    def lam(u):  # lambda_u = log(a_u / s_u)
        return a(u).log() - s(u).log()

    h = lam(t_prev) - lam(t)
    D = x0_hat  # first order
    if last is not None:  # second order
        t_last, x0_last = last
        t_last = schedule.check_t(t_last, low=1, name="t_last")
        if t_last.ndim or not t_last > t:
            raise ValueError(f"last = (t_last, x0_last) must come from an int t_last > t = {int(t)}; "
                             f"got t_last = {t_last.tolist()}")
        _check_like(x0_last, x_t, "x0_last")
        r = (lam(t) - lam(t_last)) / h  # h_last / h
        D = (1 + 1 / (2 * r)) * x0_hat - 1 / (2 * r) * x0_last
    return (s(t_prev) / s(t)) * x_t - a(t_prev) * torch.expm1(-h) * D


# ---- the samplers: timesteps, noise and memory around the pure steps ---------------------------

def _randn(shape, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    """N(0, I) from ``generator``, drawn on the generator's device and moved to ``device``: a CPU
    generator gives the same numbers whatever the device (diffusers' randn_tensor does the same)."""
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)


class Sampler:
    """What every sampler has: ``timesteps`` (descending ints in [1, T], one per model evaluation),
    ``num_model_evals``, ``init_noise``, ``step``, ``reset`` and ``clip_x0`` (None, or the c that the
    predicted x_0 is clamped to, [-c, c], in every step; see ``x0_hat``). Subclasses write ``step``."""

    def __init__(self, schedule: NoiseSchedule, timesteps: list[int], clip_x0: float | None = None) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule; got {type(schedule).__name__}")
        self.schedule = schedule
        self.timesteps = list(timesteps)
        self._index = {t: i for i, t in enumerate(self.timesteps)}
        self.clip_x0 = _check_clip(clip_x0)

    @property
    def num_model_evals(self) -> int:
        return len(self.timesteps)

    def init_noise(self, shape, generator: torch.Generator | None = None, device=None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x_T ~ N(0, I) of ``shape`` (Algorithm 2, line 1). The device defaults to the generator's
        (CPU without one)."""
        if device is None:
            device = generator.device if generator is not None else "cpu"
        return _randn(tuple(shape), generator, torch.device(device), dtype)

    def reset(self) -> None:
        """Forget the memory of earlier steps (multistep samplers); a no-op for one-step samplers."""

    def step(self, x_t: torch.Tensor, t: int, eps: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """x at the timestep after t in ``timesteps`` (or x_0 after the last), from eps = eps_theta(x_t, t)."""
        raise NotImplementedError

    def x0_hat(self, x_t: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """The predicted x_0 that the step at t works with: ``predict_x0``, clamped to
        [-clip_x0, clip_x0] when ``clip_x0`` is set."""
        return _clip(predict_x0(self.schedule, x_t, t, eps), self.clip_x0)

    def _repr_clip(self) -> str:
        return "" if self.clip_x0 is None else f", clip_x0={self.clip_x0}"

    def next_t(self, t: int) -> int:
        """The timestep after t (0 after the last): where ``step(x_t, t, ...)`` lands."""
        i = self._position(t)
        return self.timesteps[i + 1] if i + 1 < len(self.timesteps) else 0

    def _position(self, t) -> int:
        try:
            i = self._index.get(operator.index(t))
        except TypeError:
            raise TypeError(f"t must be an int (one of sampler.timesteps); got {type(t).__name__}") from None
        if i is None:
            ts = self.timesteps
            shown = ts if len(ts) <= 8 else ts[:4] + ["..."] + ts[-3:]
            raise ValueError(f"t must be one of sampler.timesteps {shown}; got t = {t}")
        return i

    def _noise(self, x_t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return _randn(x_t.shape, generator, x_t.device, x_t.dtype)


class DDPM(Sampler):
    """Ancestral sampling, DDPM's Algorithm 2, over all T steps (timesteps T, T-1, ..., 1):

        1: x_T ~ N(0, I)                                            init_noise
        2: for t = T, ..., 1 do                                     the loop over timesteps
        3:     z ~ N(0, I) if t > 1, else z = 0                     step
        4:     x_{t-1} = 1/sqrt(alpha_t) (x_t - (1 - alpha_t)/sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) + sigma_t z
        5: end for
        6: return x_0

    ``variance`` picks sigma_t^2 (see ``Variance``); ``clip_x0`` see ``ddpm_step``. For fewer steps
    with DDPM-like noise use ``DDIM(schedule, steps, eta=1.0)``. ``algorithm2`` is the same sampler
    written as one function.
    """

    def __init__(self, schedule: NoiseSchedule, variance: Variance | str = Variance.FIXED_SMALL,
                 clip_x0: float | None = None) -> None:
        super().__init__(schedule, list(range(schedule.T, 0, -1)), clip_x0)
        self.variance = _enum(Variance, variance, "variance")

    def __repr__(self) -> str:
        return f"DDPM(variance={self.variance.value!r}, steps={self.num_model_evals}{self._repr_clip()})"

    def step(self, x_t, t, eps, generator=None):
        t = self.timesteps[self._position(t)]
        z = self._noise(x_t, generator) if t > 1 else None  # line 3 (diffusers draws in this order too)
        return ddpm_step(self.schedule, x_t, t, eps, z, self.variance, self.clip_x0)  # line 4


class DDIM(Sampler):
    """DDIM (Song et al. 2021): ``steps`` model evaluations, each a ``ddim_step`` from t to the
    next timestep (0 after the last). eta = 0 is deterministic (an ODE solver); eta = 1 adds
    DDPM's posterior noise. ``clip_x0`` see ``ddim_step``."""

    def __init__(self, schedule: NoiseSchedule, steps: int = 50, eta: float = 0.0,
                 spacing: Spacing | str = Spacing.TRAILING, clip_x0: float | None = None) -> None:
        self.eta, self.spacing = _check_eta(eta), _enum(Spacing, spacing, "spacing")
        super().__init__(schedule, timesteps(schedule, steps, self.spacing), clip_x0)

    def __repr__(self) -> str:
        return (f"DDIM(steps={self.num_model_evals}, eta={self.eta}, spacing={self.spacing.value!r}"
                f"{self._repr_clip()})")

    def step(self, x_t, t, eps, generator=None):
        t, t_prev = self.timesteps[self._position(t)], self.next_t(t)
        z = self._noise(x_t, generator) if self.eta > 0 else None  # drawn at every step, as diffusers does
        return ddim_step(self.schedule, x_t, t, t_prev, eps, self.eta, z, self.clip_x0)


class DPMSolverPP2M(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022): a deterministic second-order multistep ODE solver; good
    samples in 10-25 model evaluations. Each step converts eps to x0_hat (``predict_x0``) and calls
    ``dpm_solver_pp_2m_step`` with the previous step's x0_hat as memory.

    First order at the first step (no memory yet) and at the last step (to t = 0, where the
    second-order term is undefined), exactly as diffusers with its default final_sigmas_type="zero"
    (which forces a first-order last step for any number of steps; its ``lower_order_final`` rule
    for fewer than 15 steps only changes anything with final_sigmas_type="sigma_min").

    Steps must follow ``timesteps`` in order; a step at the first timestep starts a new trajectory.
    The timesteps are diffusers' DPMSolverMultistepScheduler layout (``timesteps(..., dpm_grid=True)``).
    ``clip_x0 = c`` clamps each x0_hat to [-c, c] before it enters the update and the memory (diffusers
    has no clip_sample here; its thresholding=True with sample_max_value=1.0 is exactly c = 1).
    """

    def __init__(self, schedule: NoiseSchedule, steps: int = 20,
                 spacing: Spacing | str = Spacing.TRAILING, clip_x0: float | None = None) -> None:
        self.spacing = _enum(Spacing, spacing, "spacing")
        super().__init__(schedule, timesteps(schedule, steps, self.spacing, dpm_grid=True), clip_x0)
        self._last: tuple[int, torch.Tensor] | None = None  # (t, x0_hat) of the previous step

    def __repr__(self) -> str:
        return f"DPMSolverPP2M(steps={self.num_model_evals}, spacing={self.spacing.value!r}{self._repr_clip()})"

    def reset(self) -> None:
        self._last = None

    def step(self, x_t, t, eps, generator=None):
        i = self._position(t)
        t = self.timesteps[i]
        if i == 0:
            self.reset()
        elif self._last is None or self._last[0] != self.timesteps[i - 1]:
            done = "no step" if self._last is None else f"the last step at t = {self._last[0]}"
            raise ValueError(f"DPMSolverPP2M steps must follow sampler.timesteps in order: t = {t} needs "
                             f"the step at t = {self.timesteps[i - 1]} just before it; got {done} "
                             f"(call reset() and start again from t = {self.timesteps[0]})")
        t_prev = self.next_t(t)
        x0_hat = self.x0_hat(x_t, t, eps)
        x = dpm_solver_pp_2m_step(self.schedule, x_t, t, t_prev, x0_hat, self._last)
        self._last = (t, x0_hat)
        return x


# ---- the loop ----------------------------------------------------------------------------------

@torch.no_grad()
def sample(eps_model: EpsModel, sampler: Sampler, shape, generator: torch.Generator | None = None,
           progress: bool = True, trajectory_every: int | None = None, device=None):
    """Run the sampling loop: x_T ~ N(0, I), then ``sampler.step`` at each of ``sampler.timesteps``.

    eps_model(x_t [b, ...], t int64 [b]) -> eps [b, ...]. ``shape`` = (b, ...) of x. ``device``
    defaults to the generator's (CPU without one). Returns x_0; with ``trajectory_every = k`` returns
    (x_0, trajectory), where trajectory is a list of (t, x_t, x_0_hat) at every k-th model evaluation
    (starting with the first, at t = timesteps[0]) and a last entry (0, x_0, x_0); its tensors are
    on the CPU, for plotting. x_0_hat is the sampler's (``sampler.x0_hat``: clamped with ``clip_x0``).
    """
    if trajectory_every is not None and (not isinstance(trajectory_every, int) or trajectory_every < 1):
        raise ValueError(f"trajectory_every must be None or an int >= 1; got {trajectory_every!r}")
    sampler.reset()
    x = sampler.init_noise(shape, generator=generator, device=device)  # x_T ~ N(0, I)
    b = x.shape[0]
    trajectory = []
    for i, t in enumerate(tqdm(sampler.timesteps, desc=type(sampler).__name__, disable=not progress)):
        eps = eps_model(x, torch.full((b,), t, dtype=torch.long, device=x.device))
        if trajectory_every is not None and i % trajectory_every == 0:
            trajectory.append((t, x.cpu(), sampler.x0_hat(x, t, eps).cpu()))
        x = sampler.step(x, t, eps, generator=generator)  # x at the next (smaller) t
    if trajectory_every is None:
        return x
    trajectory.append((0, x.cpu(), x.cpu()))
    return x, trajectory


@torch.no_grad()
def algorithm2(eps_model: EpsModel, schedule: NoiseSchedule, shape, generator: torch.Generator | None = None,
               variance: Variance | str = Variance.FIXED_SMALL, device=None) -> torch.Tensor:
    """DDPM's Algorithm 2 ("Sampling", Ho et al. 2020) in one function, line by line, with the paper's
    line numbers on the right: T model evaluations from x_T ~ N(0, I) to a sample x_0 of ``shape``.

    The same numbers as ``sample(eps_model, DDPM(schedule, variance), shape, generator)``, bit for bit
    (the tests check it): ``DDPM`` cuts this loop into ``init_noise``, ``step`` and ``sample`` so that
    every sampler shares one loop; here it is in one piece, to read against the paper. sigma_t^2 is
    ``variance``'s: beta_tilde_t (FIXED_SMALL) or beta_t (FIXED_LARGE). eps_model, generator and
    device as in ``sample``.
    """
    variance = _enum(Variance, variance, "variance")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    device = torch.device(device)
    sigma2 = schedule.beta if variance is Variance.FIXED_LARGE else schedule.posterior_variance  # sigma_t^2 by t

    x_t = _randn(tuple(shape), generator, device, torch.float32)              # 1: x_T ~ N(0, I)
    for t in range(schedule.T, 0, -1):                                        # 2: for t = T, ..., 1 do
        # 3: z ~ N(0, I) if t > 1, else z = 0
        z = _randn(x_t.shape, generator, device, x_t.dtype) if t > 1 else torch.zeros_like(x_t)
        # 4: x_{t-1} = 1/sqrt(alpha_t) (x_t - (1 - alpha_t)/sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) + sigma_t z
        # with the tables' entries at t (schedule.coef: table[t], shaped to broadcast over x_t). 1 - alpha_t
        # is read as beta_t: in float32, 1 - alpha_t would lose digits at small t, where beta_t ~ 1e-4.
        alpha_t, beta_t = schedule.coef(schedule.alpha, t, x_t), schedule.coef(schedule.beta, t, x_t)
        sqrt_one_minus_alpha_bar_t = schedule.coef(schedule.sqrt_one_minus_alpha_bar, t, x_t)
        sigma_t = schedule.coef(sigma2, t, x_t).sqrt()
        eps = eps_model(x_t, torch.full((x_t.shape[0],), t, dtype=torch.long, device=device))  # eps_theta(x_t, t)
        x_t = (x_t - beta_t / sqrt_one_minus_alpha_bar_t * eps) / alpha_t.sqrt() + sigma_t * z
    return x_t                                                                # 5: end for; 6: return x_0
