"""The forward (noising) process of DDPM: beta schedules and q(x_t | x_0).

Notation follows Ho et al. 2020 ("DDPM"): beta_t, alpha_t = 1 - beta_t,
alpha_bar_t = prod_{i=1..t} alpha_i, eps ~ N(0, I), data x_0, noisy x_t.

THE TIME CONVENTION (used everywhere in tinyldm)
------------------------------------------------
* t is an integer in {0, 1, ..., T}. t = 0 is clean data (x_0 itself); the paper's
  steps are t = 1..T, and t = T is (almost) pure noise.
* The tables ``beta``, ``alpha``, ``alpha_bar`` (and the others below) have length
  T + 1 and are indexed directly by t: ``alpha_bar[t]`` is the paper's alpha_bar_t.
  Index 0 is the clean-data entry: beta_0 = 0, alpha_0 = 1, alpha_bar_0 = 1, so
  q_sample(x_0, 0, eps) returns x_0 unchanged.
* diffusers counts its timesteps k = 0..T-1 (its ``betas[k]`` is our beta[k + 1]).
  diffusers' timestep k = t - 1 (our t = k + 1); use ``to_diffusers_timestep`` and
  ``from_diffusers_timestep`` at the boundary, never ad-hoc ``- 1``.

Tensors: data x_0, x_t, eps have shape [b, ...] (e.g. [b, c, h, w]); t is a Python
int (same t for the whole batch) or an int64 tensor [b] (one t per batch item,
broadcast over the other dims).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass
from enum import Enum

import torch

from .config import check_values

__all__ = ["BetaSchedule", "ScheduleConfig", "NoiseSchedule"]


class BetaSchedule(str, Enum):
    """How beta_1..beta_T are laid out (names match diffusers' ``beta_schedule``)."""

    LINEAR = "linear"  # DDPM: beta_t linear from beta_1 to beta_T
    SCALED_LINEAR = "scaled_linear"  # Stable Diffusion: sqrt(beta_t) linear
    COSINE = "cosine"  # Nichol & Dhariwal 2021; diffusers' "squaredcos_cap_v2"


@dataclass(frozen=True)
class ScheduleConfig:
    """Everything that defines a noise schedule: ``kind``, the number of steps T, the
    first and last betas (diffusers' ``beta_start``/``beta_end``) and the cosine offset s.
    ``kind`` may be given as a string. ``beta_1``/``beta_T`` are ignored by COSINE (its
    betas come from alpha_bar(t) and ``cosine_s``) but are still validated."""

    kind: BetaSchedule = BetaSchedule.LINEAR
    T: int = 1000
    beta_1: float = 1e-4
    beta_T: float = 0.02
    cosine_s: float = 0.008

    def __post_init__(self) -> None:
        try:  # accept "cosine" as well as BetaSchedule.COSINE
            object.__setattr__(self, "kind", BetaSchedule(self.kind))
        except ValueError:
            valid = ", ".join(repr(k.value) for k in BetaSchedule)
            raise ValueError(f"kind must be one of {valid}; got {self.kind!r}") from None
        if isinstance(self.T, bool) or not isinstance(self.T, int) or self.T < 1:
            raise ValueError(f"T must be an int >= 1; got {self.T!r}")
        if not (0.0 < self.beta_1 <= self.beta_T < 1.0):
            raise ValueError(
                "expected 0 < beta_1 <= beta_T < 1; "
                f"got beta_1={self.beta_1!r}, beta_T={self.beta_T!r}"
            )
        if not (0.0 <= self.cosine_s < 1.0):
            raise ValueError(f"expected 0 <= cosine_s < 1; got cosine_s={self.cosine_s!r}")

    @classmethod
    def ddpm(cls, T: int = 1000) -> ScheduleConfig:
        """The course default and DDPM's schedule: linear betas 1e-4..0.02."""
        return cls(BetaSchedule.LINEAR, T=T, beta_1=1e-4, beta_T=0.02)

    @classmethod
    def stable_diffusion(cls, T: int = 1000) -> ScheduleConfig:
        """Stable Diffusion's schedule: sqrt(beta) linear, beta 0.00085..0.012."""
        return cls(BetaSchedule.SCALED_LINEAR, T=T, beta_1=0.00085, beta_T=0.012)

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008) -> ScheduleConfig:
        """Improved DDPM's cosine schedule (offset s, betas clipped at 0.999)."""
        return cls(BetaSchedule.COSINE, T=T, cosine_s=s)

    @classmethod
    def preset(cls, kind: BetaSchedule | str) -> ScheduleConfig:
        """The preset of a kind: "linear" (DDPM), "scaled_linear" (Stable Diffusion) or "cosine"."""
        return _PRESETS[cls(kind=kind).kind]()

    def to_dict(self) -> dict:
        """Plain JSON-able fields (``kind`` as its string); ``ScheduleConfig(**d)`` rebuilds it."""
        return {**dataclasses.asdict(self), "kind": self.kind.value}


_PRESETS = {
    BetaSchedule.LINEAR: ScheduleConfig.ddpm,
    BetaSchedule.SCALED_LINEAR: ScheduleConfig.stable_diffusion,
    BetaSchedule.COSINE: ScheduleConfig.cosine,
}


def _betas(cfg: ScheduleConfig) -> torch.Tensor:
    """beta_1..beta_T as float64 [T], exactly as diffusers lays them out."""
    T = cfg.T
    if cfg.kind is BetaSchedule.LINEAR:
        return torch.linspace(cfg.beta_1, cfg.beta_T, T, dtype=torch.float64)
    if cfg.kind is BetaSchedule.SCALED_LINEAR:  # sqrt(beta_t) linear, then squared
        return torch.linspace(cfg.beta_1**0.5, cfg.beta_T**0.5, T, dtype=torch.float64) ** 2
    s = cfg.cosine_s

    def f(u: float) -> float:  # alpha_bar(u) up to a constant, u = t / T in [0, 1]
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    # beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, clipped at 0.999: alpha_bar(1) = 0 gives
    # beta_T = 1, i.e. alpha_T = 0, and the reverse step divides by sqrt(alpha_t).
    return torch.tensor([min(1 - f(t / T) / f((t - 1) / T), 0.999) for t in range(1, T + 1)],
                        dtype=torch.float64)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class NoiseSchedule:
    """The tables of a noise schedule and the forward process q built on them.

    Public tables are float32 CPU tensors of shape [T + 1], indexed by t (see the
    module docstring; index 0 = clean data): ``beta``, ``alpha``, ``alpha_bar``,
    ``sqrt_alpha_bar``, ``sqrt_one_minus_alpha_bar``, ``posterior_variance``
    (beta_tilde_t; 0 at t = 0 and t = 1).
    Methods move what they need to the device/dtype of their input, so the schedule
    itself never needs ``.to(device)``.
    """

    def __init__(self, config: ScheduleConfig | None = None) -> None:
        if config is None:
            config = ScheduleConfig()
        if not isinstance(config, ScheduleConfig):
            raise TypeError(f"config must be a ScheduleConfig; got {type(config).__name__}")
        self.config = config
        self.T = config.T

        # Computed in float64: alpha_bar is a product of up to T factors, and near t = 1,
        # 1 - alpha_bar_t ~ 1e-4 is a difference of nearly equal numbers; in float32 both
        # lose digits (up to ~6e-4 relative error in 1 - alpha_bar_1). Stored in float32 because the
        # data are float32 (or lower): float64 tables would silently promote x to float64
        # (and some devices, e.g. MPS, have no float64 at all).
        beta = torch.cat([torch.zeros(1, dtype=torch.float64), _betas(config)])  # beta_0 = 0
        alpha = 1.0 - beta  # alpha_t = 1 - beta_t
        alpha_bar = torch.cumprod(alpha, dim=0)  # alpha_bar_t = prod_{i<=t} alpha_i; [0] = 1
        one_minus = 1.0 - alpha_bar
        # beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t  (DDPM eq. 7).
        # t = 1: alpha_bar_0 = 1 makes it exactly 0 (the last reverse step is deterministic,
        # as z = 0 at t = 1 in DDPM's Algorithm 2). t = 0 is 0/0: defined as 0.
        post_var = torch.zeros_like(beta)
        post_var[1:] = one_minus[:-1] / one_minus[1:] * beta[1:]
        # snr_t = alpha_bar_t / (1 - alpha_bar_t); log via log1p to keep digits at small t.
        # Both are +inf at t = 0 (no noise); torch gives inf for x / 0 without warning.
        snr = alpha_bar / one_minus
        log_snr = torch.log(alpha_bar) - torch.log1p(-alpha_bar)
        # The posterior mean mu_tilde_t = c_x0[t] x_0 + c_xt[t] x_t (DDPM eq. 7), t >= 1; index 0 unused (0).
        # t = 1: c_x0 = beta_1 / (1 - alpha_bar_1) = 1 and c_xt = 0, so mu_tilde_1 = x_0.
        c_x0, c_xt = torch.zeros_like(beta), torch.zeros_like(beta)
        c_x0[1:] = alpha_bar[:-1].sqrt() * beta[1:] / one_minus[1:]
        c_xt[1:] = alpha[1:].sqrt() * one_minus[:-1] / one_minus[1:]

        self.beta, self.alpha, self.alpha_bar = beta.float(), alpha.float(), alpha_bar.float()
        self.sqrt_alpha_bar = alpha_bar.sqrt().float()
        self.sqrt_one_minus_alpha_bar = one_minus.sqrt().float()
        self.posterior_variance = post_var.float()
        self._sqrt_alpha, self._sqrt_beta = alpha.sqrt().float(), beta.sqrt().float()  # q_step
        self._snr, self._log_snr = snr.float(), log_snr.float()
        self._mu_x0, self._mu_xt = c_x0.float(), c_xt.float()  # q_posterior_mean

    @classmethod
    def from_kind(cls, kind: BetaSchedule | str = "linear", **overrides) -> NoiseSchedule:
        """The preset for ``kind`` ("linear" = DDPM, "scaled_linear" = Stable Diffusion,
        "cosine"), with fields replaced by ``overrides`` (e.g. ``T=100``)."""
        return cls(dataclasses.replace(ScheduleConfig.preset(kind), **overrides))

    @property
    def kind(self) -> BetaSchedule:
        return self.config.kind

    def __repr__(self) -> str:
        T = self.T
        return (f"NoiseSchedule(kind={self.kind.value!r}, T={T}, beta_1={self.beta[1].item():.3g}, "
                f"beta_T={self.beta[T].item():.3g}, alpha_bar_T={self.alpha_bar[T].item():.3g})")

    # ---- time ------------------------------------------------------------------------
    def check_t(self, t, low: int = 0, high: int | None = None, name: str = "t") -> torch.Tensor:
        """t as an int64 tensor (its shape kept: 0-dim for an int), after checking that it is an int or
        an integer tensor with values in [low, high] (default high = T). ``name`` is the argument's
        name in the error messages. Every method that takes a t goes through here, so a bad t is
        reported the same way everywhere (the samplers use it too)."""
        high = self.T if high is None else high
        if isinstance(t, torch.Tensor):
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise TypeError(f"{name} must be an integer tensor; got dtype {t.dtype}")
            t = t.long()
        else:
            try:
                t = torch.tensor(operator.index(t), dtype=torch.long)
            except TypeError:
                raise TypeError(f"{name} must be an int or an integer tensor; "
                                f"got {type(t).__name__}") from None
        if t.numel() > 0 and check_values(t) and (t.min() < low or t.max() > high):
            bad = torch.unique(t[(t < low) | (t > high)]).tolist()
            raise ValueError(f"{name} must be in [{low}, {high}] (T = {self.T}); "
                             f"got out-of-range values {bad[:10]}")
        return t

    def to_diffusers_timestep(self, t):
        """Our t in [1, T] -> diffusers' timestep k = t - 1 in [0, T - 1].
        int in, int out; tensor in, int64 tensor out."""
        k = self.check_t(t, low=1) - 1
        return k if isinstance(t, torch.Tensor) else int(k)

    def from_diffusers_timestep(self, k):
        """diffusers' timestep k in [0, T - 1] -> our t = k + 1 in [1, T].
        int in, int out; tensor in, int64 tensor out."""
        t = self.check_t(k, low=0, high=self.T - 1, name="diffusers timestep k") + 1
        return t if isinstance(k, torch.Tensor) else int(t)

    def sample_t(self, batch_size: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        """t ~ Uniform{1, ..., T}, int64 [batch_size] (DDPM Algorithm 1, line 3).
        The device defaults to the generator's (CPU without one)."""
        if not _is_int(batch_size) or batch_size < 0:
            raise ValueError(f"batch_size must be an int >= 0; got {batch_size!r}")
        if device is None:
            device = generator.device if generator is not None else "cpu"
        return torch.randint(1, self.T + 1, (batch_size,), generator=generator,
                             device=device, dtype=torch.long)

    def snr(self, t) -> torch.Tensor:
        """snr_t = alpha_bar_t / (1 - alpha_bar_t), float32, shape of t (+inf at t = 0)."""
        t = self.check_t(t)
        return self._snr.to(t.device)[t]

    def log_snr(self, t) -> torch.Tensor:
        """log snr_t = log alpha_bar_t - log(1 - alpha_bar_t), float32 (+inf at t = 0)."""
        t = self.check_t(t)
        return self._log_snr.to(t.device)[t]

    # ---- looking up tables, checking inputs ------------------------------------------
    def coef(self, table: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        """``table[t]`` on x's device and dtype, shaped [b, 1, 1, ...] (or [1, 1, ...] for one t) so
        that it broadcasts against x [b, ...]: the per-t coefficient of an update, e.g.
        ``coef(self.sqrt_alpha_bar, t, x_0) * x_0``.

        ``table``: one of the [T + 1] tables above. t: an int or an int64 tensor (0-dim or [b]), already
        checked (``check_t`` / ``check_inputs``); it may live on the CPU or on x's device.
        """
        c = table.to(x.device)[torch.as_tensor(t, device=x.device)].to(x.dtype)
        return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))

    def check_inputs(self, x: torch.Tensor, t, eps: torch.Tensor, low: int = 0, x_name: str = "x_t",
                     eps_name: str = "eps") -> torch.Tensor:
        """Check the arguments (x, t, eps) of an update and return t as an int64 tensor (``check_t``).

        x: a floating-point tensor [b, ...]; t: an int in [low, T] (one t for the batch) or an int64
        tensor [b] (one per item); eps: a tensor of x's shape. ``x_name`` and ``eps_name`` are the
        arguments' names in the error messages.
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"{x_name} must be a floating-point tensor; got {got}")
        t = self.check_t(t, low=low)
        if t.ndim > 1 or (t.ndim == 1 and (x.ndim == 0 or t.shape[0] != x.shape[0])):
            raise ValueError(f"t must be an int or an int64 tensor [b] with b = {x_name}.shape[0]; "
                             f"got t.shape = {list(t.shape)}, {x_name}.shape = {list(x.shape)}")
        if not isinstance(eps, torch.Tensor):
            raise TypeError(f"{eps_name} must be a tensor of shape {list(x.shape)}; "
                            f"got {type(eps).__name__}")
        if eps.shape != x.shape:
            raise ValueError(f"{eps_name} must have the shape of {x_name}: expected {list(x.shape)}, "
                             f"got {list(eps.shape)}")
        return t

    # ---- forward process -------------------------------------------------------------
    def q_sample(self, x_0: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) in closed form (DDPM eq. 4), t in [0, T]:
        x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.

        x_0, eps: [b, ...]; t: int or int64 [b]. eps is an argument, not drawn here,
        because it is the training target. The result has x_0's device and dtype.
        """
        t = self.check_inputs(x_0, t, eps, low=0, x_name="x_0")
        return (self.coef(self.sqrt_alpha_bar, t, x_0) * x_0
                + self.coef(self.sqrt_one_minus_alpha_bar, t, x_0) * eps)

    def q_step(self, x_prev: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """One forward step x_{t-1} -> x_t, t in [1, T] (DDPM eq. 2):
        q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I), i.e.
        x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps. Shapes as in ``q_sample``."""
        t = self.check_inputs(x_prev, t, eps, low=1, x_name="x_prev")
        return (self.coef(self._sqrt_alpha, t, x_prev) * x_prev
                + self.coef(self._sqrt_beta, t, x_prev) * eps)

    def q_posterior_mean(self, x_0: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        """The mean of the posterior q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I), t in [1, T]
        (DDPM eq. 7; its variance is ``posterior_variance``):

            mu_tilde_t(x_t, x_0) = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
                                 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t.

        x_0, x_t: [b, ...]; t: int or int64 [b]. At t = 1 it is x_0 itself. With x_0 = the x_0 that
        eps implies, it is the mean of Algorithm 2's line 4; samplers that clip the predicted x_0 use
        this form (with the clipped x_0), as DDPM's code and diffusers' DDPMScheduler do.
        """
        t = self.check_inputs(x_t, t, x_0, low=1, x_name="x_t", eps_name="x_0")
        return self.coef(self._mu_x0, t, x_t) * x_0 + self.coef(self._mu_xt, t, x_t) * x_t
