"""Pictures: image grids, latent channels, loss curves. Everything returns the matplotlib figure."""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images ``[b, 3, H, W]`` (or ``[3, H, W]``) in [-1, 1] -> uint8 ``[b, H, W, 3]`` (or ``[H, W, 3]``)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def image_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile images ``[b, 3, H, W]`` in [-1, 1] into one uint8 array ``[rows*H, nrow*W, 3]``."""
    imgs = to_uint8(x)
    b, h, w, _ = imgs.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(imgs):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return grid


def show_images(x: torch.Tensor, nrow: int | None = None, title: str | None = None,
                scale: float = 1.0, ax=None):
    """Show a grid of images in [-1, 1]; returns the figure."""
    grid = image_grid(x, nrow)
    if ax is None:
        fig, ax = plt.subplots(figsize=(scale * grid.shape[1] / 50 + 0.5, scale * grid.shape[0] / 50 + 0.5))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax.figure


def show_rows(rows: Sequence[torch.Tensor], labels: Sequence[str], scale: float = 1.0):
    """Rows of images with a label on the left of each (e.g. inputs above reconstructions)."""
    fig, axes = plt.subplots(len(rows), 1, figsize=(scale * 12, scale * 1.6 * len(rows)), squeeze=False)
    for ax, row, label in zip(axes[:, 0], rows, labels):
        ax.imshow(image_grid(row, nrow=len(row)), interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig


def show_latent_channels(z: torch.Tensor, title: str | None = None):
    """One latent ``[c, h, w]``: each channel as a grey image, with its value range."""
    z = z.detach().float().cpu()
    fig, axes = plt.subplots(1, len(z), figsize=(2.2 * len(z), 2.4))
    for i, (ax, ch) in enumerate(zip(np.atleast_1d(axes), z)):
        ax.imshow(ch, cmap="RdBu_r", vmin=-ch.abs().max(), vmax=ch.abs().max(), interpolation="nearest")
        ax.set_title(f"channel {i}\n[{ch.min():.2f}, {ch.max():.2f}]", fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_history(history: Sequence[dict], keys: Sequence[str] = ("loss",), smooth: int = 20, logy: bool = True):
    """Loss curves from a trainer's history (raw, faint; moving average, bold)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    steps = np.array([h["step"] for h in history])
    for ax, key in zip(axes[0], keys):
        y = np.array([h[key] for h in history], dtype=float)
        ax.plot(steps, y, alpha=0.3, lw=1)
        if len(y) > smooth > 1:
            ax.plot(steps[smooth - 1:], np.convolve(y, np.ones(smooth) / smooth, mode="valid"), lw=2)
        ax.set_xlabel("step"), ax.set_title(key)
        if logy and (y > 0).all():
            ax.set_yscale("log")
    fig.tight_layout()
    return fig
