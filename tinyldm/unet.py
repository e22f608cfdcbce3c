"""The denoiser eps_theta(x_t, t, y) of latent diffusion: a UNet with time embedding, attention and conditioning.

Algorithm 1 of DDPM (Ho et al. 2020) trains a network to predict the noise eps that made x_t from x_0; this module
is that network, shaped as in LDM (Rombach et al. 2022, appendix) and Stable Diffusion v1:

    x_t [b, in, h, w] --conv_in--> down path (res blocks, transformer blocks, stride-2 convs; every output kept
    as a skip) --> middle (res, transformer, res) --> up path (res blocks that concatenate a skip, transformer
    blocks, nearest-upsample + conv) --> GroupNorm, SiLU, conv --> eps [b, out, h, w]

How the conditioning enters:

* t: a sinusoidal embedding (:func:`timestep_embedding`) through Linear-SiLU-Linear gives ``emb`` ``[b, 4 * base]``,
  which every res block projects to its width: a scale and shift of its normalised feature map (``scale_shift``, the
  course models) or a shift added before the norm (SD v1).
* class labels y (``num_classes``): an embedding table *added* to ``emb``, as in LDM's and ADM's class-conditional
  models. The table has one extra row, y = ``num_classes``, the null label of the unconditional model that
  classifier-free guidance trains by label dropout.
* a context ``[b, L, context_dim]`` (``context_dim``): CLIP text hidden states ``[b, 77, 768]``, retrieved
  neighbours ``[b, k, d]``, ...; every transformer block cross-attends to it, ``context_mask`` ``[b, L]`` (True =
  attend) hides padding tokens.
* channels concatenated to x_t (``concat`` ``[b, k, h, w]``, LDM's "c_concat"): inpainting's mask and
  masked-image latent, or a face-parsing map resized to the latent grid. A base model gets the k input channels by
  :meth:`UNet.with_extra_input_channels` (zero-initialised: it computes what the base computes); see
  :mod:`tinyldm.inpaint`.

Initialisation: the last conv of every res block, the output projection of every transformer block and the final
conv are zero, so each block starts as its skip connection and the untrained model predicts eps = 0 (exactly).
A zero start is the common and stable choice (ADM, LDM): the first loss is E[eps^2] = 1 whatever the inputs.

Time convention: t as in :mod:`tinyldm.schedule` (an integer 0..T, the paper's steps are 1..T); a float t is
accepted (continuous-time samplers), the embedding does not care. The embedding sees t - ``timestep_offset``
(0 for the course models; 1 for Stable Diffusion's weights, trained on diffusers' k = t - 1).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import group_norm  # one rule for GroupNorm groups in every network: gcd(groups, channels)
from .checkpoint import SavableModel, check_partner
from .config import check_values
from .schedule import NoiseSchedule, ScheduleConfig

__all__ = ["UNetConfig", "UNet", "timestep_embedding"]

KIND = "unet"


# the names UNetConfig.preset accepts, each a classmethod of UNetConfig
PRESETS = ("tiny", "course", "course_large", "sd_v1")


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the UNet. Level i has width ``base_channels * channel_mult[i]`` and runs at
    ``[h / 2**i, w / 2**i]``; inputs must have h and w divisible by :attr:`downsample`."""

    # The defaults are the course model (``UNetConfig.course()``): a small UNet for [b, 4, 16, 16] latents that sees
    # t and y at every block (8 GroupNorm groups and scale-shift, see ``scale_shift``).
    in_channels: int = 4
    out_channels: int = 4
    base_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1, 2)  # a transformer block after each res block at these levels
    head_dim: int = 32  # heads = width // head_dim (at least 1) ...
    num_heads: int | None = None  # ... unless this is set: the same number of heads at every level (SD v1: 8)
    context_dim: int | None = None  # cross-attention to a context [b, L, context_dim] when set
    num_classes: int | None = None  # class-conditional when set; label num_classes is the null label
    dropout: float = 0.0
    norm_groups: int = 8  # GroupNorm groups (at most: gcd(norm_groups, width), see layers.group_norm)
    # how emb enters a res block: True scales and shifts after the second GroupNorm, h = norm(h) * (1 + scale) + shift
    # (ADM's "scale-shift norm"); False adds Linear(emb) per channel before it (LDM, SD v1). Narrow models need True:
    # with one or two channels per group the norm subtracts an added per-channel shift again.
    scale_shift: bool = True
    time_embed_mult: int = 4  # emb width = time_embed_mult * base_channels
    # The noise schedule the model is trained with, as ScheduleConfig fields (diffusers saves a scheduler config next
    # to its UNet for the same reason): the samplers use it by default (``UNet.schedule``).
    schedule: dict = dataclasses.field(default_factory=lambda: ScheduleConfig.ddpm().to_dict())
    # eps skip (see UNet.forward): eps_theta = sqrt(1 - alpha_bar_t) x_t + F, with alpha_bar from ``schedule``
    eps_skip: bool = False
    # Two conventions of Stable Diffusion's weights (``sd_v1()``; :mod:`tinyldm.convert` loads them), which the
    # course models do not share. norm_eps: the eps of the res blocks' and the output's GroupNorms (SD: 1e-5; the
    # transformer blocks' GroupNorm keeps 1e-6 in both). timestep_offset: the time embedding sees t -
    # timestep_offset; SD was trained on diffusers' timestep k = t - 1 (see tinyldm.schedule), so it needs 1.
    norm_eps: float = 1e-6
    timestep_offset: int = 0

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attention_levels", tuple(self.attention_levels))
        try:  # validated (and normalised: "kind" as its string) by ScheduleConfig itself
            object.__setattr__(self, "schedule", ScheduleConfig(**self.schedule).to_dict())
        except TypeError as e:
            raise ValueError(f"schedule must be a dict of ScheduleConfig fields, got {self.schedule!r} ({e})") from None
        for name in ("in_channels", "out_channels", "base_channels", "num_res_blocks", "head_dim", "norm_groups",
                     "time_embed_mult"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("num_heads", "context_dim", "num_classes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        if not self.channel_mult or any(not isinstance(m, int) or m < 1 for m in self.channel_mult):
            raise ValueError(f"channel_mult must be a non-empty tuple of ints >= 1, got {self.channel_mult!r}")
        levels = range(len(self.channel_mult))
        if any(level not in levels for level in self.attention_levels) or \
                len(set(self.attention_levels)) != len(self.attention_levels):
            raise ValueError(f"attention_levels must be distinct levels in 0..{len(self.channel_mult) - 1} "
                             f"(one per channel_mult entry), got {self.attention_levels!r}")
        if self.context_dim is not None and not self.attention_levels:
            raise ValueError(f"context_dim={self.context_dim} needs at least one attention level to cross-attend "
                             f"from, got attention_levels=()")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.norm_eps, bool) or not isinstance(self.norm_eps, (int, float)) or not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be a number > 0, got {self.norm_eps!r}")
        if isinstance(self.timestep_offset, bool) or not isinstance(self.timestep_offset, int) or \
                self.timestep_offset < 0:
            raise ValueError(f"timestep_offset must be an int >= 0, got {self.timestep_offset!r}")
        for level in self.attention_levels:
            width = self.width(level)
            if width % self.heads(width):
                raise ValueError(f"level {level} has width {width}, which {self.heads(width)} heads do not divide; "
                                 f"change head_dim / num_heads")

    def width(self, level: int) -> int:
        """Channels at ``level``."""
        return self.base_channels * self.channel_mult[level]

    def heads(self, width: int) -> int:
        """Attention heads for a block of ``width`` channels."""
        return self.num_heads if self.num_heads is not None else max(1, width // self.head_dim)

    @property
    def downsample(self) -> int:
        """How much smaller the lowest level is than the input: h and w must be multiples of it."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def null_label(self) -> int:
        """The label y of the unconditional model (the last row of the class table): ``num_classes``."""
        if self.num_classes is None:
            raise ValueError("this config has num_classes=None: it is not class-conditional and has no null label")
        return self.num_classes

    @classmethod
    def tiny(cls, **overrides) -> "UNetConfig":
        """For tests and fast mode: two levels of width 8/16, attention at the lower one, ~60k parameters."""
        return cls(**{"base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_levels": (1,),
                      "head_dim": 8, "norm_groups": 4, **overrides})

    @classmethod
    def course(cls, **overrides) -> "UNetConfig":
        """The CPU walkthrough model for ``[b, 4, 16, 16]`` latents, ~1M parameters: widths 16/32/64 at 16x16,
        8x8 and 4x4, one res block per level, attention at 8x8 and 4x4 (attention cost grows with (h*w)^2).

        Sized by compute, not parameters: a conv costs width^2 * h * w, so the parameters sit at 4x4 where they are
        cheap and the 16x16 level stays narrow. One training step at batch 64 is ~12 GFLOP (widths 32/64/64 would
        be 31 GFLOP; 64/128/128 with two res blocks, 9.3M parameters, 183).

        Narrow widths need two changes from SD's defaults: 8 GroupNorm groups (2 to 8 channels each, not 1), and
        t and y entering by scale and shift after the norm (``scale_shift``); with SD's additive embedding and
        one channel per group, GroupNorm subtracted the embedding again and the model saw neither t nor y."""
        return cls(**overrides)  # the defaults

    @classmethod
    def course_large(cls, **overrides) -> "UNetConfig":
        """The course model at twice the width (32/64/128), ~4M parameters: the next step up in capacity for the
        course's latents, at 2.7x the CPU time per step. Measured on 2 CPU cores (class-conditional, batch 64,
        s = 3): shape and colour right in 55% of samples after 3000 steps against 41% for ``course()``, but 60%
        after 9000 (70 minutes), behind ``course()`` at equal time (69% after 21,000 steps, about 60 minutes).
        A size for GPU runs (``--device cuda --precision bf16``)."""
        return cls.course(**{"base_channels": 32, **overrides})

    @classmethod
    def sd_v1(cls, **overrides) -> "UNetConfig":
        """Stable Diffusion v1's UNet: widths 320/640/1280/1280, 8 heads everywhere, CLIP ViT-L/14 context
        ``[b, 77, 768]``; ~860M parameters. Runs on latents ``[b, 4, 64, 64]`` (512 px images at f = 8).

        With SD's conventions, so that SD v1.x weights compute here exactly what they compute in diffusers
        (:func:`tinyldm.convert.load_unet` returns this config): its noise schedule (scaled linear, beta
        0.00085..0.012), GroupNorm eps 1e-5 in the res blocks (``norm_eps``), and the time embedding of t - 1
        (``timestep_offset = 1``: SD learned diffusers' timestep k = t - 1). The inpainting model is
        ``sd_v1(in_channels=9)``."""
        return cls(**{"base_channels": 320, "channel_mult": (1, 2, 4, 4), "num_res_blocks": 2,
                      "attention_levels": (0, 1, 2), "num_heads": 8, "context_dim": 768, "norm_groups": 32,
                      "scale_shift": False, "schedule": ScheduleConfig.stable_diffusion().to_dict(),
                      "norm_eps": 1e-5, "timestep_offset": 1, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides) -> "UNetConfig":
        """A preset by name (``"tiny"``, ``"course"``, ``"course_large"``, ``"sd_v1"``), with fields overridden, e.g.
        ``UNetConfig.preset("course", num_classes=10)``."""
        if name not in PRESETS:
            raise ValueError(f"unknown unet preset {name!r}; choose one of {sorted(PRESETS)}")
        return getattr(cls, name)(**overrides)

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t ``[b]`` (int or float) -> ``[b, dim]`` float32, as in the Transformer and DDPM.

    emb[:, i] = cos(t * w_i), emb[:, half + i] = sin(t * w_i), with w_i = max_period ** (-i / half), half = dim // 2
    (a zero column is appended when dim is odd). Frequencies run from 1 (resolves single steps) down to
    1 / max_period (varies slowly over all of 0..T). This is LDM's and Stable Diffusion's layout, i.e. diffusers'
    ``get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)``.
    """
    if t.ndim != 1:
        raise ValueError(f"expected t of shape [b], got shape {list(t.shape)}")
    half = dim // 2
    w = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * w[None]  # [b, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _zero(module: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias: a residual branch ending in it starts as 'add nothing'."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """x ``[b, c_in, h, w]``, emb ``[b, emb_dim]`` -> ``[b, c_out, h, w]``.

    GroupNorm, SiLU, conv3x3, then the embedding Linear(SiLU(emb)) enters, GroupNorm, SiLU, dropout, conv3x3
    (zero-init), plus a skip (1x1 conv when the width changes). How the embedding enters (``scale_shift``):

    * True (the course models, ADM): scale and shift after the second norm, h = norm(h) * (1 + scale) + shift; the
      norm cannot undo it, so it works at any number of channels per group.
    * False (LDM, SD v1): added per channel before the second norm; GroupNorm removes the part of the shift shared by
      a group's channels, so it needs many channels per group (SD v1 has 10 to 40).
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float, scale_shift: bool = False,
                 eps: float = 1e-6):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1, self.conv1 = group_norm(c_in, groups, eps), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * c_out if scale_shift else c_out)
        self.norm2, self.dropout = group_norm(c_out, groups, eps), nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))  # the block starts as its skip connection
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(F.silu(emb))[:, :, None, None]  # the same at every position: "which t (and y) is it"
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift  # after the norm, so the norm cannot undo it
        else:
            # before the norm: GroupNorm removes the part of the shift shared by a group's channels, so this needs
            # several channels per group (SD v1: 10 to 40)
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention of x ``[b, n, dim]`` to itself (``context_dim=None``) or to a context ``[b, L, d]``.

    ``mask`` ``[b, L]`` (bool, True = attend) hides context tokens. Normally fused (``F.scaled_dot_product_attention``);
    with ``keep_attention = True`` the softmax is computed explicitly and kept, detached, in ``last_attention``
    ``[b, heads, n, L]`` (rows sum to 1) for pictures of where each position looks.
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads, self.is_cross = heads, context_dim is not None
        # no biases on q, k, v (as in LDM/SD): a bias on k adds the same score to every key, which softmax ignores
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.keep_attention = False
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (rearrange(z, "b n (heads d) -> b heads n d", heads=self.heads)
                   for z in (self.to_q(x), self.to_k(context), self.to_v(context)))
        if mask is not None:
            mask = mask[:, None, None, :]  # [b, 1, 1, L]: the same for every head and query position
        if self.keep_attention:
            scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # [b, heads, n, L]
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            attn = scores.float().softmax(dim=-1).to(q.dtype)
            self.last_attention = attn.detach()
            out = attn @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(rearrange(out, "b heads n d -> b n (heads d)"))


class FeedForward(nn.Module):
    """GEGLU feed-forward (Shazeer 2020, as in LDM): Linear to 2 * 4 * dim, a * GELU(gate), Linear back."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.proj, self.out = nn.Linear(dim, 2 * mult * dim), nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(a * F.gelu(gate))


class SpatialTransformer(nn.Module):
    """LDM's transformer block on a feature map x ``[b, c, h, w]`` -> ``[b, c, h, w]``.

    GroupNorm, 1x1 conv, then on the h*w positions as tokens: LayerNorm -> self-attention, LayerNorm ->
    cross-attention to the context (only with ``context_dim``), LayerNorm -> GEGLU feed-forward, each residual;
    then a zero-initialised 1x1 conv, so the block starts as the identity.
    """

    def __init__(self, c: int, heads: int, context_dim: int | None, groups: int):
        super().__init__()
        self.norm, self.proj_in = group_norm(c, groups), nn.Conv2d(c, c, 1)
        self.norm1, self.attn1 = nn.LayerNorm(c), Attention(c, heads)
        if context_dim is not None:
            self.norm2, self.attn2 = nn.LayerNorm(c), Attention(c, heads, context_dim)
        self.norm3, self.ff = nn.LayerNorm(c), FeedForward(c)
        self.proj_out = _zero(nn.Conv2d(c, c, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = x.shape[2]
        z = rearrange(self.proj_in(self.norm(x)), "b c h w -> b (h w) c")  # h*w tokens of width c
        z = z + self.attn1(self.norm1(z))
        if hasattr(self, "attn2"):
            z = z + self.attn2(self.norm2(z), context, context_mask)
        z = z + self.ff(self.norm3(z))
        return x + self.proj_out(rearrange(z, "b (h w) c -> b c h w", h=h))


class Upsample(nn.Module):
    """[b, c, h, w] -> [b, c, 2h, 2w]: nearest neighbour, then a conv3x3 (no checkerboard, unlike a transposed conv)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Block(nn.ModuleList):
    """A few layers run in order, each given what it needs: emb to res blocks, the context to transformer blocks
    (LDM's ``TimestepEmbedSequential``)."""

    def forward(self, h, emb, context=None, context_mask=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context, context_mask)
            else:
                h = layer(h)
        return h


class UNet(SavableModel, nn.Module):
    """eps_theta(x_t, t, y, context): x_t ``[b, in, h, w]`` -> eps ``[b, out, h, w]``. See the module docstring."""

    kind, config_class = KIND, UNetConfig

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = cfg = config or UNetConfig()
        g, attn, emb_dim = cfg.norm_groups, set(cfg.attention_levels), cfg.time_embed_mult * cfg.base_channels

        def res(c_in, c_out):
            return ResBlock(c_in, c_out, emb_dim, g, cfg.dropout, cfg.scale_shift, cfg.norm_eps)

        def transformer(c):
            return SpatialTransformer(c, cfg.heads(c), cfg.context_dim, g)

        self.time_embed = nn.Sequential(nn.Linear(cfg.base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_embed = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes is not None else None

        c = cfg.width(0)
        self.conv_in = nn.Conv2d(cfg.in_channels, c, 3, padding=1)
        skips, down = [c], []  # skips: the width of every feature map the up path will concatenate
        for level in range(len(cfg.channel_mult)):
            for _ in range(cfg.num_res_blocks):
                layers = [res(c, cfg.width(level))]
                c = cfg.width(level)
                if level in attn:
                    layers.append(transformer(c))
                down.append(Block(layers))
                skips.append(c)
            if level < len(cfg.channel_mult) - 1:
                down.append(Block([nn.Conv2d(c, c, 3, stride=2, padding=1)]))  # halve h and w
                skips.append(c)
        self.down = nn.ModuleList(down)
        self.mid = Block([res(c, c)] + ([transformer(c)] if attn else []) + [res(c, c)])
        up = []
        for level in reversed(range(len(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):  # one more than on the way down: it eats the downsampler's skip
                layers = [res(c + skips.pop(), cfg.width(level))]
                c = cfg.width(level)
                if level in attn:
                    layers.append(transformer(c))
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(Upsample(c))
                up.append(Block(layers))
        self.up = nn.ModuleList(up)
        # zero conv: the untrained model predicts eps = 0 exactly, a stable start (loss E[eps^2] = 1)
        self.out = nn.Sequential(group_norm(c, g, cfg.norm_eps), nn.SiLU(),
                                 _zero(nn.Conv2d(c, cfg.out_channels, 3, padding=1)))
        # gradient checkpointing (training only): recompute each block's activations in the backward pass instead of
        # keeping them, for about a third more compute; what SD's UNet needs to train at 512 px on one GPU
        self.gradient_checkpointing = False
        if cfg.eps_skip:
            self.register_buffer("eps_skip", self.schedule.sqrt_one_minus_alpha_bar.clone(), persistent=False)  # [T+1]
        else:
            self.eps_skip = None

    @classmethod
    def load(cls, path, map_location="cpu", autoencoder: nn.Module | None = None,
             text_encoder: nn.Module | None = None, allow_other_autoencoder: bool = False,
             allow_other_text_encoder: bool = False, image_encoder: nn.Module | None = None) -> "UNet":
        """Load a UNet file; with ``autoencoder`` (and ``text_encoder``, or the retrieval ``image_encoder``) also check
        that they are the ones it was trained with (their fingerprints are in the file), raising a CheckpointError if
        not. A latent UNet paired with another autoencoder decodes to garbage; ``allow_other_autoencoder=True`` skips
        the check."""
        model = super().load(path, map_location)
        if autoencoder is not None:
            check_partner(model, autoencoder, "autoencoder", "autoencoder", allow_other_autoencoder)
        if text_encoder is not None:
            check_partner(model, text_encoder, "text_encoder", "text encoder", allow_other_text_encoder)
        if image_encoder is not None:
            check_partner(model, image_encoder, "image_encoder", "image encoder")
        return model

    @property
    def schedule(self) -> NoiseSchedule:
        """The noise schedule this model is trained with (``config.schedule``): what samplers should use."""
        return NoiseSchedule(ScheduleConfig(**self.config.schedule))

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # -- the forward pass ---------------------------------------------------------------------
    def forward(self, x_t: torch.Tensor, t: int | float | torch.Tensor, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                concat: torch.Tensor | None = None) -> torch.Tensor:
        """Predict eps ``[b, out, h, w]`` from x_t ``[b, in, h, w]`` at time t.

        t: a number (the same t for the whole batch) or a tensor ``[b]``. y: class labels ``[b]`` (int64) in
        0..num_classes, num_classes being the null label; ``None`` means the null label for the whole batch.
        context: ``[b, L, context_dim]``, required by a model with ``context_dim``. context_mask: ``[b, L]`` bool,
        True = attend, at least one True per row. concat: ``[b, in - out, h, w]``, the extra input channels of a model
        made by :meth:`with_extra_input_channels` (inpainting's [mask, masked-image latent], a parsing map): the
        network sees ``[x_t, concat]`` along the channels, while eps and the eps skip concern x_t alone.
        """
        if concat is not None:
            x_t = self._with_concat(x_t, concat)
        t, y = self._check_inputs(x_t, t, y, context, context_mask)
        # timestep_offset: SD's weights learned the embedding of diffusers' k = t - 1 (UNetConfig.timestep_offset)
        emb = timestep_embedding(t - self.config.timestep_offset, self.config.base_channels)
        emb = self.time_embed(emb.to(self.time_embed[0].weight.dtype))
        if self.label_embed is not None:
            emb = emb + self.label_embed(y)  # the class enters exactly like t: one vector added to emb
        h = self.conv_in(x_t)
        skips = [h]
        for block in self.down:
            h = self._run(block, h, emb, context, context_mask)
            skips.append(h)
        h = self._run(self.mid, h, emb, context, context_mask)
        for block in self.up:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
        eps = self.out(h)
        if self.eps_skip is not None:
            # eps_theta = sqrt(1 - alpha_bar_t) x_t + F(x_t, t). The first term is the exact eps-prediction for
            # data x_0 ~ N(0, I), so the network only learns the correction for real data. Why it matters: at
            # large t, x_0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) multiplies any error of eps
            # by 1 / sqrt(alpha_bar_T) ~ 160, and a plain UNet (GroupNorm before its last conv) learns the
            # near-identity eps ~ x_t precisely only after very long training; samplers then drift (seen here:
            # samples with std 10 after 3000 steps). A "skip" preconditioning in the sense of EDM (Karras 2022).
            eps = eps + self.eps_skip[t.round().long()].view(-1, 1, 1, 1).to(eps.dtype) * x_t[:, :eps.shape[1]]
        return eps

    def _run(self, block: Block, h, emb, context, context_mask) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # keep only the block's input; its activations are recomputed in the backward pass
            return checkpoint(block, h, emb, context, context_mask, use_reentrant=False)
        return block(h, emb, context, context_mask)

    def _with_concat(self, x_t: torch.Tensor, concat: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        k = cfg.in_channels - cfg.out_channels
        if k < 1:
            raise ValueError(f"this model has no extra input channels (in_channels = out_channels = "
                             f"{cfg.in_channels}) and takes no concat; make one with with_extra_input_channels(k)")
        if concat.ndim != 4 or x_t.ndim != 4 or concat.shape[1] != k or concat.shape[0] != x_t.shape[0] \
                or concat.shape[2:] != x_t.shape[2:]:
            raise ValueError(f"expected x_t [b, {cfg.out_channels}, h, w] and concat [b, {k}, h, w] (in_channels "
                             f"{cfg.in_channels} = {cfg.out_channels} + {k}), got x_t {list(x_t.shape)} and concat "
                             f"{list(concat.shape)}")
        return torch.cat([x_t, concat.to(x_t.dtype)], dim=1)

    def _check_inputs(self, x_t, t, y, context, context_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raise ValueError naming expected and actual for bad inputs; return t ``[b]`` and y ``[b]`` (or None)."""
        cfg = self.config
        if x_t.ndim != 4 or x_t.shape[1] != cfg.in_channels:
            more = cfg.in_channels - cfg.out_channels
            also = (f" (or x_t [b, {cfg.out_channels}, h, w] with concat [b, {more}, h, w], the extra input "
                    f"channels)") if more > 0 else ""
            raise ValueError(f"expected x_t [b, {cfg.in_channels}, h, w]{also}, got shape {list(x_t.shape)}")
        b, _, h, w = x_t.shape
        if h % cfg.downsample or w % cfg.downsample:
            raise ValueError(f"x_t height and width must be multiples of {cfg.downsample} "
                             f"(2 ** (levels - 1)), got {h}x{w}")
        if not torch.is_tensor(t):
            t = torch.tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"expected t as a number or a tensor [{b}] (the batch size of x_t), "
                             f"got shape {list(t.shape)}")
        if cfg.num_classes is None:
            if y is not None:
                raise ValueError("this model has num_classes=None and takes no class labels y, got y")
        else:
            if y is None:
                y = torch.full((b,), cfg.null_label, dtype=torch.long, device=x_t.device)
            if y.shape != (b,) or y.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"expected y as an int64 tensor [{b}] (the batch size of x_t), "
                                 f"got {y.dtype} of shape {list(y.shape)}")
            if check_values(y) and bool(((y < 0) | (y > cfg.num_classes)).any()):
                raise ValueError(f"expected labels y in 0..{cfg.num_classes} ({cfg.num_classes} = the null label), "
                                 f"got values from {int(y.min())} to {int(y.max())}")
        if cfg.context_dim is None:
            if context is not None or context_mask is not None:
                raise ValueError("this model has context_dim=None (no cross-attention) and takes no context, "
                                 "got context" + ("_mask" if context is None else ""))
        else:
            if context is None:
                raise ValueError(f"this model cross-attends: expected context [b, L, {cfg.context_dim}], got None "
                                 f"(for the unconditional model pass the null context, e.g. the empty prompt's)")
            if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.context_dim:
                raise ValueError(f"expected context [{b}, L, {cfg.context_dim}] (b from x_t, context_dim from the "
                                 f"config), got shape {list(context.shape)}")
            if context_mask is not None:
                if context_mask.dtype != torch.bool or context_mask.shape != context.shape[:2]:
                    raise ValueError(f"expected context_mask as a bool tensor {list(context.shape[:2])}, "
                                     f"got {context_mask.dtype} of shape {list(context_mask.shape)}")
                if check_values(context_mask) and not bool(context_mask.any(dim=1).all()):
                    # softmax over no tokens at all is 0/0: NaN everywhere downstream
                    raise ValueError("expected context_mask to keep at least one token in every row, "
                                     "got a row that is all False")
        return t, y

    # -- attention maps -----------------------------------------------------------------------
    @contextmanager
    def recording_attention(self, include_self: bool = False) -> Iterator[dict[str, list[torch.Tensor]]]:
        """Within the ``with`` block, keep the attention maps of every forward pass.

        Yields a dict from module name (e.g. ``"down.3.1.attn2"``) to a list with one tensor
        ``[b, heads, h*w, L]`` per forward call, in order (a sampling loop gives one per step). Cross-attention
        only, unless ``include_self`` (then also ``[b, heads, h*w, h*w]`` under the ``attn1`` names). Slower than
        the fused path: use it for pictures, not for training.
        """
        maps: dict[str, list[torch.Tensor]] = {}
        modules = {name: m for name, m in self.named_modules()
                   if isinstance(m, Attention) and (m.is_cross or include_self)}
        before = {name: m.keep_attention for name, m in modules.items()}

        def hook(name):
            return lambda module, args, output: maps.setdefault(name, []).append(module.last_attention)

        handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
        for m in modules.values():
            m.keep_attention = True
        try:
            yield maps
        finally:
            for handle in handles:
                handle.remove()
            for name, m in modules.items():
                m.keep_attention, m.last_attention = before[name], None

    # -- finetuning on other classes ------------------------------------------------------------
    def with_num_classes(self, n: int) -> "UNet":
        """A copy with a class table for ``n`` classes (and the null label ``n``), to finetune on data with other
        classes. Every new row starts as the old null label's row (zero for a model without classes, whose emb gets
        nothing added), so the copy computes for every label what the base computes unconditionally, and the
        finetune learns from there what each class changes."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"expected n, the number of classes, as an int >= 1, got {n!r}")
        new = copy.deepcopy(self)
        new.config = dataclasses.replace(self.config, num_classes=n)
        emb_dim = self.time_embed[-1].out_features
        weight = self.time_embed[-1].weight
        table = nn.Embedding(n + 1, emb_dim, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            null = (self.label_embed.weight[self.config.num_classes] if self.label_embed is not None
                    else torch.zeros(emb_dim, device=weight.device, dtype=weight.dtype))
            table.weight.copy_(null.expand(n + 1, -1))
        new.label_embed = table
        return new

    # -- inpainting: more input channels --------------------------------------------------------
    def with_extra_input_channels(self, k: int) -> "UNet":
        """A copy whose conv_in takes k more input channels (appended after the old ones).

        The new input weights are zero, so the copy computes exactly the same function of the old channels
        whatever the new ones hold, until training moves them: a pretrained model is finetuned for inpainting
        (mask + masked-image latent as extra channels) from where it already works.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"expected k, the number of extra input channels, as an int >= 1, got {k!r}")
        new = copy.deepcopy(self)
        new.config = dataclasses.replace(self.config, in_channels=self.config.in_channels + k)
        old = self.conv_in
        conv = nn.Conv2d(new.config.in_channels, old.out_channels, 3, padding=1,
                         device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[:, :old.in_channels] = old.weight
            conv.bias.copy_(old.bias)
        new.conv_in = conv
        return new
