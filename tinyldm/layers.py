"""Building blocks shared by several networks (the autoencoder, the UNet, the judge, the text encoder's image side).

They live here, below every network, so that no network imports another one for a helper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["group_norm", "strided_cnn", "images_at"]


def group_norm(channels: int, groups: int, eps: float = 1e-6) -> nn.GroupNorm:
    # a group count that divides the channel count, so narrow CPU models work with the same code
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=eps)


def strided_cnn(widths: tuple[int, ...], in_channels: int = 3, groups: int = 8) -> nn.Sequential:
    """The small image encoders of the judge and the text encoder's image side: per width, a stride-2 conv and a
    conv, each followed by GroupNorm and SiLU (``[b, in, H, W]`` -> ``[b, widths[-1], H / 2^k, W / 2^k]``)."""
    layers, c = [], in_channels
    for w in widths:
        layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.GroupNorm(math.gcd(groups, w), w), nn.SiLU(),
                   nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(math.gcd(groups, w), w), nn.SiLU()]
        c = w
    return nn.Sequential(*layers)


def images_at(images: torch.Tensor, size: int) -> torch.Tensor:
    """Check ``[b, 3, H, W]`` images and resize them (bilinear, antialiased) to ``size`` x ``size`` if needed: the
    fixed input size of the small image encoders."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [b, 3, H, W], got shape {list(images.shape)}")
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return images
