"""The latent-diffusion pipeline: what a user calls to make images from a trained UNet and its autoencoder.

    noise z_T ~ N(0, I) --sampler loop (with classifier-free guidance)--> z_0 --autoencoder.from_latent--> images

The loop itself is :func:`tinyldm.sample.sample` (visible and short); guidance is :class:`tinyldm.conditioning.Guided`;
this module only puts them together, in chunks, with reproducible noise, and checks that the UNet is decoded by the
autoencoder whose latents it learned.
"""

from __future__ import annotations

import torch

from .autoencoder import Autoencoder
from .checkpoint import check_partner
from .conditioning import Guided
from .config import autocast
from .sample import DDIM, sample
from .unet import UNet

__all__ = ["generate", "decode"]


@torch.no_grad()
def generate(model: UNet, ae: Autoencoder, cond: dict | None = None, null: dict | None = None, s: float = 0.0,
             n: int | None = None, sampler=None, seed: int = 0, batch_size: int = 128, progress: bool = False,
             latent_shape: tuple[int, int, int] = (4, 16, 16), device=None,
             allow_other_autoencoder: bool = False, precision: str = "fp32") -> torch.Tensor:
    """Images ``[n, 3, H, W]`` from ``model``: the sampling loop (DDIM, 20 steps, on the model's own training schedule
    ``model.schedule``, unless ``sampler``) with classifier-free guidance of scale s when ``cond`` is given, in chunks
    of ``batch_size``, then decoded by ``ae``.

    ``cond``/``null``: model inputs for all n samples, e.g. ``LabelCondition(24).given(labels)`` and ``.null(n)``.
    The noise of chunk k comes from ``seed + k``, so the same seed gives the same images. The loop runs on ``device``
    (default: the CPU; the model must be there); the latents are decoded where ``ae`` is, and the images come back on
    the CPU. A model loaded from a file that
    records another autoencoder raises a CheckpointError (``allow_other_autoencoder=True`` skips the check).
    ``precision="bf16"`` runs the network in bfloat16 under autocast (the sampler's arithmetic stays float32): the
    GPU's fast path.
    """
    check_partner(model, ae, "autoencoder", "autoencoder", allow_other_autoencoder)
    device = torch.device(device) if device is not None else torch.device("cpu")
    n = n if cond is None else len(next(iter(cond.values())))
    if n is None:
        raise ValueError("give n (the number of images) or cond")
    if s != 0 and cond is not None and null is None:
        raise ValueError(f"guidance with s = {s} needs null, the null condition (e.g. condition.null(n))")
    sampler = sampler or DDIM(model.schedule, steps=20)
    images = []
    for k, start in enumerate(range(0, n, batch_size)):
        part = slice(start, min(n, start + batch_size))
        eps_model = model
        if cond is not None:
            eps_model = Guided(model, {key: v[part].to(device) for key, v in cond.items()},
                               {key: v[part].to(device) for key, v in null.items()} if null is not None else None, s)
        with autocast(device, precision):
            z = sample(eps_model, sampler, (part.stop - part.start, *latent_shape),
                       generator=torch.Generator(device).manual_seed(seed + k), progress=progress, device=device)
        images.append(decode(ae, z))
    return torch.cat(images)


@torch.no_grad()
def decode(ae: Autoencoder, z: torch.Tensor) -> torch.Tensor:
    """Latents ``[b, c, h, w]`` -> images ``[b, 3, H, W]`` on the CPU, decoded where the autoencoder is (a GPU decodes
    Stable Diffusion's 512 px latents in milliseconds, a CPU in seconds), in its dtype."""
    weight = next(ae.parameters())
    return ae.from_latent(z.to(weight.device, weight.dtype)).float().cpu()
