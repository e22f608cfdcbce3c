"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, section 3 and appendix G).

An encoder E maps an image x ``[b, 3, H, W]`` in [-1, 1] to a diagonal Gaussian over latents
z ``[b, c, H/f, W/f]``; a decoder D maps z back to an image. With the Stable Diffusion shape
(``AutoencoderConfig.sd()``: f = 8, c = 4) an image ``[b, 3, 256, 256]`` becomes ``[b, 4, 32, 32]``,
48 times fewer numbers, and diffusion runs there instead of on pixels.

The loss is a reconstruction term plus a *very* weak KL pull of q(z|x) towards N(0, I) (weight
1e-6, as in LDM). The KL keeps the latent space smooth without forcing it to unit variance, so
the latents come out with whatever scale the encoder likes; :meth:`Autoencoder.fit_scale_factor`
measures it from data and stores ``scale_factor = 1 / std(z)`` in the model, and diffusion works on
``scale_factor * z`` (see :meth:`Autoencoder.to_latent`), which has unit variance like the noise eps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import SavableModel
from .layers import group_norm

KIND = "autoencoder"

# AutoencoderConfig.downsample_padding: how the encoder's stride-2 convs pad
PADDINGS = ("symmetric", "asymmetric")


@dataclass(frozen=True)
class AutoencoderConfig:
    """Shape of the autoencoder. The downsampling factor is f = 2 ** (len(channel_mult) - 1)."""

    in_channels: int = 3
    latent_channels: int = 4
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    mid_attention: bool = True  # one self-attention block at the lowest resolution, as in LDM
    norm_groups: int = 32
    kl_weight: float = 1e-6
    # how the encoder's stride-2 conv3x3 pads: "symmetric", one pixel on every side (the course models);
    # "asymmetric", one pixel on the right and bottom only (LDM and Stable Diffusion: the same shapes, other numbers)
    downsample_padding: str = "symmetric"

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        if self.downsample_padding not in PADDINGS:
            raise ValueError(f"downsample_padding must be one of {PADDINGS}, got {self.downsample_padding!r}")
        if self.in_channels < 1 or self.latent_channels < 1 or self.base_channels < 1:
            raise ValueError(f"channel counts must be >= 1, got {self}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty tuple of ints >= 1, got {self.channel_mult}")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")

    @property
    def f(self) -> int:
        """Spatial downsampling factor: H / h."""
        return 2 ** (len(self.channel_mult) - 1)

    @classmethod
    def sd(cls) -> "AutoencoderConfig":
        """Stable Diffusion v1's autoencoder (kl-f8): [b,3,256,256] -> [b,4,32,32], 84M params, with SD's
        asymmetric downsampling padding, so that SD's weights load into it exactly
        (:func:`tinyldm.convert.load_autoencoder`; their scale_factor is 0.18215)."""
        return cls(base_channels=128, channel_mult=(1, 2, 4, 4), num_res_blocks=2, downsample_padding="asymmetric")

    @classmethod
    def course(cls) -> "AutoencoderConfig":
        """The course's CPU autoencoder: f = 4, 4 channels; 64 px scenes -> [b,4,16,16] latents.

        Without the mid attention: it trains on 32 px crops and runs on whole images, and only
        attention would see a different number of positions in the two (convolutions don't care).
        """
        return cls(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, mid_attention=False)

    @classmethod
    def course_f8(cls) -> "AutoencoderConfig":
        """A CPU-sized f = 8 model with Stable Diffusion's latent shape ratio: 256 px -> 32 x 32."""
        return cls(base_channels=32, channel_mult=(1, 2, 2, 4), num_res_blocks=1)

    @classmethod
    def tiny(cls) -> "AutoencoderConfig":
        """For tests and fast mode: a few thousand parameters, f = 4."""
        return cls(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, mid_attention=False)

    @classmethod
    def preset(cls, name: str) -> "AutoencoderConfig":
        presets = {"sd": cls.sd, "course": cls.course, "course_f8": cls.course_f8, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(f"unknown autoencoder preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    def to_dict(self) -> dict:
        return asdict(self)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus a (1x1 if needed) skip connection."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = group_norm(c_out, groups), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, with a residual connection."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.norm = group_norm(c, groups)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, 1, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # [b, 1, h*w, c]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class PadRightBottomConv(nn.Conv2d):
    """LDM's downsampler: a stride-2 conv3x3 (no padding of its own) after padding only the right and bottom by one,
    ``[b, c, H, W]`` -> ``[b, c, H/2, W/2]``. Its weights have the names and shapes of a plain conv."""

    def __init__(self, c: int):
        super().__init__(c, c, 3, stride=2, padding=0)

    def forward(self, x):
        return super().forward(F.pad(x, (0, 1, 0, 1)))


class Encoder(nn.Module):
    """x [b, in, H, W] -> moments [b, 2 * latent, H/f, W/f] (mean and log-variance)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        g, widths = cfg.norm_groups, [cfg.base_channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        layers, c = [], widths[0]
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(c, width, g))
                c = width
            if level < len(widths) - 1:  # halve H and W
                layers.append(PadRightBottomConv(c) if cfg.downsample_padding == "asymmetric"
                              else nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.down = nn.Sequential(*layers)
        self.mid = nn.Sequential(ResBlock(c, c, g), AttnBlock(c, g) if cfg.mid_attention else nn.Identity(),
                                 ResBlock(c, c, g))
        self.out = nn.Sequential(group_norm(c, g), nn.SiLU(), nn.Conv2d(c, 2 * cfg.latent_channels, 3, padding=1))

    def forward(self, x):
        return self.out(self.mid(self.down(self.conv_in(x))))


class Decoder(nn.Module):
    """z [b, latent, h, w] -> x [b, in, h*f, w*f]; the encoder's mirror, upsampling by nearest + conv."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        g, widths = cfg.norm_groups, [cfg.base_channels * m for m in cfg.channel_mult]
        c = widths[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, c, 3, padding=1)
        self.mid = nn.Sequential(ResBlock(c, c, g), AttnBlock(c, g) if cfg.mid_attention else nn.Identity(),
                                 ResBlock(c, c, g))
        layers = []
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(cfg.num_res_blocks + 1):  # one more than the encoder, as in LDM
                layers.append(ResBlock(c, width, g))
                c = width
            if level > 0:
                layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
        self.up = nn.Sequential(*layers)
        self.out = nn.Sequential(group_norm(c, g), nn.SiLU(), nn.Conv2d(c, cfg.in_channels, 3, padding=1))

    def forward(self, z):
        return self.out(self.up(self.mid(self.conv_in(z))))


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))), with mean and logvar ``[b, c, h, w]``."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)  # keeps exp() finite early in training
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps  # the reparameterisation trick: gradients flow to mean and std

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) per image, summed over c, h, w: ``[b]``."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class Autoencoder(SavableModel, nn.Module):
    """The KL autoencoder. ``scale_factor`` (a buffer, saved with the weights) is 1 until
    :meth:`fit_scale_factor` measures it."""

    kind, config_class = KIND, AutoencoderConfig

    def __init__(self, config: AutoencoderConfig | None = None):
        super().__init__()
        self.config = config or AutoencoderConfig()
        c = self.config.latent_channels
        self.encoder, self.decoder = Encoder(self.config), Decoder(self.config)
        # 1x1 convs between the networks and the latent space, as in LDM (quant_conv, post_quant_conv)
        self.quant_conv, self.post_quant_conv = nn.Conv2d(2 * c, 2 * c, 1), nn.Conv2d(c, c, 1)
        self.register_buffer("scale_factor", torch.tensor(1.0))

    @property
    def f(self) -> int:
        return self.config.f

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """[b, 3, H, W] -> [b, c, H/f, W/f] without running the network."""
        b, _, h, w = image_shape
        return (b, self.config.latent_channels, h // self.f, w // self.f)

    def _check_image(self, x: torch.Tensor) -> None:
        cin, f = self.config.in_channels, self.f
        if x.ndim != 4 or x.shape[1] != cin:
            raise ValueError(f"expected images [b, {cin}, H, W], got shape {list(x.shape)}")
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"image height and width must be multiples of f = {f}, got {x.shape[2]}x{x.shape[3]}")

    def _check_latent(self, z: torch.Tensor) -> None:
        c = self.config.latent_channels
        if z.ndim != 4 or z.shape[1] != c:
            raise ValueError(f"expected latents [b, {c}, h, w], got shape {list(z.shape)}")

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x ``[b, 3, H, W]`` in [-1, 1] -> q(z | x) over z ``[b, c, H/f, W/f]`` (unscaled)."""
        self._check_image(x)
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z ``[b, c, h, w]`` (unscaled) -> x ``[b, 3, h*f, w*f]``, roughly in [-1, 1]."""
        self._check_latent(z)
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Reconstruct through a sampled z (as in training): returns (x_rec, posterior)."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior

    # -- the latent space diffusion sees ------------------------------------------------------
    @torch.no_grad()
    def to_latent(self, x: torch.Tensor, sample: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """Image -> diffusion latent ``scale_factor * z`` (z the posterior mean, or a sample)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.scale_factor * z

    @torch.no_grad()
    def from_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion latent -> image in [-1, 1] (clamped): undo the scale, then decode."""
        return self.decode(z / self.scale_factor).clamp(-1, 1)

    @torch.no_grad()
    def fit_scale_factor(self, images: torch.Tensor, batch_size: int = 64) -> float:
        """Set ``scale_factor = 1 / std(z)`` over ``images`` ``[n, 3, H, W]``; return it.

        Diffusion's forward process assumes data of about unit variance: q(x_T | x_0) only reaches
        N(0, I) if x_0 is on the scale of eps. Stable Diffusion's 0.18215 was found the same way.
        """
        was_training = self.training
        self.eval()
        z = torch.cat([self.encode(images[i:i + batch_size]).mode() for i in range(0, len(images), batch_size)])
        self.train(was_training)
        self.scale_factor.fill_(1.0 / z.float().std().item())
        return self.scale_factor.item()


def autoencoder_loss(model: Autoencoder, batch: torch.Tensor | dict, generator: torch.Generator | None = None):
    """LDM's loss without the perceptual and GAN terms: L1 reconstruction + kl_weight * KL.

    Both terms are per pixel (LDM sums them per image; dividing both by C*H*W keeps its balance):
    loss = mean |x - D(z)| + kl_weight * KL(q(z|x) || N(0, I)) / (C*H*W),  z ~ q(z|x).
    ``batch`` is images ``[b, 3, H, W]`` or a data batch with them under "image". Returns (loss, logs).
    """
    x = batch["image"] if isinstance(batch, dict) else batch
    x_rec, posterior = model(x, generator)
    rec = (x - x_rec).abs().mean()
    kl = posterior.kl().mean() / x[0].numel()
    loss = rec + model.config.kl_weight * kl
    return loss, {"rec": rec.item(), "kl": kl.item(), "psnr": psnr(x_rec.detach(), x).mean().item()}


def psnr(x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, for images in [-1, 1] (peak-to-peak 2): ``[b]``."""
    mse = (x_rec.clamp(-1, 1) - x).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def reconstruction_psnr(model: Autoencoder, images: torch.Tensor, batch_size: int = 64) -> float:
    """Mean PSNR (dB) of ``decode(mode of encode(x))`` over ``images`` ``[n, 3, H, W]``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    values = [psnr(model.decode(model.encode(x.to(device)).mode()), x.to(device))
              for x in images.split(batch_size)]
    model.train(was_training)
    return torch.cat(values).mean().item()
