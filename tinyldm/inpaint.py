"""Finetuning with masks: inpainting, and generation that follows a face-parsing map.

INPAINTING
----------
An inpainting model fills a hole so that the fill fits what is around it. Stable Diffusion's and LDM's inpainting
models are the plain latent UNet with more input channels (:meth:`tinyldm.unet.UNet.forward`'s ``concat``):

    eps_theta([z_t, m, z_masked], t, y)     z_t       [b, c, h, w]  the noisy latent, as in every latent model
                                            m         [b, 1, h, w]  the mask on the latent grid (1 = the hole)
                                            z_masked  [b, c, h, w]  the latent of the masked image x * (mask < 0.5)

(9 channels for c = 4, in this order, as in Stable Diffusion's inpainting model). Algorithm 1 trains it unchanged:
x_0 is still the latent of the whole image, t and eps are drawn as always, and the network sees what a user will
give it, the mask and the known part. Masks come from :mod:`tinyldm.data.masks` (boxes, strokes, borders, objects,
and everything in a quarter of the samples, so the model stays a generator).

**Zero-initialised channels.** :func:`inpainting_unet` makes the 9-channel model from a trained base by appending
input-conv weights that are zero: at step 0 it computes exactly what the base computes (tested), and the finetune
starts from a working generator that only has to learn to use the new channels. Random new weights would add noise
to the first layer's every output and destroy what the base knew (a known mistake, diffusers issue 1619).

**Training-free baselines.** A plain model can be made to inpaint without training, by forcing the known part at
every step of sampling. With ``keep`` the latent cells whose pixels are all known and ``z_known`` the latent of the
masked image:

* latent blending (:func:`blended_sample`; "Blended Latent Diffusion", Avrahami et al. 2023): after each step to
  t', ``z_t' <- keep * q_sample(z_known, t', eps) + (1 - keep) * z_t'``;
* RePaint (:func:`repaint_sample`; Lugmayr et al. 2022): the same, and every few steps the sample is sent back up
  the chain by q(z_t | z_t') and denoised again, so the generated part gets more chances to agree with the known one.

The base never sees the known part as an input, only a noisy copy pasted into its own sample; at high noise the
copy says little, and the fill is decided before the context is clear. That is why the trained model wins.

MASK-CONDITIONED GENERATION
---------------------------
The same concat input carries any picture-shaped condition. A face-parsing map (one channel per part of
:data:`tinyldm.data.PARTS`, the classes of CelebAMask-HQ) goes in beside z_t (:func:`parsing_unet`), as in LDM's
semantic synthesis model, and the model draws a face that follows it. The map keeps its pixel detail on the latent
grid (:func:`parsing_map`: each cell's f x f pixels of each part become channels, ``NUM_PARTS * f * f`` of them), so
that parts of a few pixels (eyes, brows, a mouth) are drawn where the map puts them, not only in the right cell.
Dropped to zeros in 10 % of the samples, the map is guided like a label. :class:`tinyldm.metrics.Segmenter`
measures how well samples follow their maps (mean IoU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .autoencoder import Autoencoder
from .checkpoint import check_partner
from .conditioning import Guided
from .data.faces import NUM_PARTS
from .data.masks import MaskGenerator, check_mask, masked_image
from .pipeline import decode
from .sample import DDIM, Sampler, ddim_step, sample
from .schedule import NoiseSchedule
from .unet import UNet

__all__ = ["CONCAT_KINDS", "MASK_RESIZE", "METHODS", "concat_channels", "concat_kind", "latent_mask",
           "inpainting_unet", "parsing_unet", "inpainting_inputs", "parsing_map", "MaskedImages",
           "InpaintingLatents", "ParsingMaps", "blended_sample", "repaint_times", "repaint_sample", "Inpainting",
           "inpaint", "paste", "hole_mse", "seam_error", "inpainting_scores"]

CONCAT_KINDS = ("inpaint", "parsing")  # what a UNet's extra input channels hold
MASK_RESIZE = ("max", "nearest")
METHODS = ("model", "blend", "repaint")  # the trained inpainting model, and the two training-free baselines


def concat_channels(kind: str, latent_channels: int, f: int | None = None) -> int:
    """How many input channels ``kind`` adds for an autoencoder with c = ``latent_channels`` and factor ``f``:
    inpainting's mask and masked-image latent (1 + c), or a parsing map's parts at the pixel grid
    (``NUM_PARTS * f * f``, see :func:`parsing_map`)."""
    if kind == "inpaint":
        return 1 + latent_channels
    if kind == "parsing":
        if f is None:
            raise ValueError("a parsing map's channels depend on the autoencoder's factor f: pass f")
        return NUM_PARTS * f * f
    raise ValueError(f"expected a concat kind from {CONCAT_KINDS}, got {kind!r}")


def concat_kind(model: UNet) -> str | None:
    """What ``model``'s extra input channels hold: its file says ("concat" in ``model.info``); a model without the
    record (Stable Diffusion's inpainting weights) with 2c + 1 input channels is an inpainting model. None: a plain
    model."""
    cfg = model.config
    kind = (getattr(model, "info", None) or {}).get("concat")
    if kind is not None:
        return kind
    if cfg.in_channels == cfg.out_channels:
        return None
    if cfg.in_channels == 2 * cfg.out_channels + 1:
        return "inpaint"
    raise ValueError(f"the model has {cfg.in_channels - cfg.out_channels} extra input channels and no record of what "
                     f"they hold (model.info['concat'], one of {CONCAT_KINDS})")


def latent_mask(mask: torch.Tensor, size: Sequence[int], mode: str = "max") -> torch.Tensor:
    """A pixel mask ``[b, 1, H, W]`` on the latent grid ``[b, 1, h, w]`` (``size`` = (h, w), H and W multiples of
    them). ``"max"``: a cell is in the hole if any of its pixels is (the course's models; what the blending baselines
    need, since a cell with a hole pixel in it is not known); ``"nearest"``: one pixel per cell, as Stable Diffusion's
    inpainting pipeline resizes its masks."""
    mask = check_mask(mask)
    h, w = (int(v) for v in size)
    if mask.shape[2] % h or mask.shape[3] % w:
        raise ValueError(f"the mask's {mask.shape[2]}x{mask.shape[3]} pixels do not tile a {h}x{w} latent grid")
    if mode == "max":
        return F.adaptive_max_pool2d(mask, (h, w))
    if mode == "nearest":
        return F.interpolate(mask, size=(h, w), mode="nearest")
    raise ValueError(f"expected mask_resize one of {MASK_RESIZE}, got {mode!r}")


def _with_channels(base: UNet, k: int, kind: str) -> UNet:
    cfg = base.config
    if cfg.in_channels != cfg.out_channels:
        raise ValueError(f"the base model already has {cfg.in_channels - cfg.out_channels} extra input channels "
                         f"(in_channels {cfg.in_channels}, out_channels {cfg.out_channels}); expected a plain model, "
                         f"whose input is the latent alone")
    model = base.with_extra_input_channels(k)
    model.info = {**(getattr(base, "info", None) or {}), "concat": kind}
    return model


def inpainting_unet(base: UNet) -> UNet:
    """The inpainting model made from a plain one: input ``[z_t, mask, z_masked]`` (2c + 1 channels: 9 for SD's and
    the course's c = 4). The new input weights are zero, so it computes exactly what ``base`` computes, whatever the
    new channels hold, until training moves them."""
    return _with_channels(base, concat_channels("inpaint", base.config.out_channels), "inpaint")


def parsing_unet(base: UNet, f: int) -> UNet:
    """The mask-conditioned model made from a plain one that works in the latents of an autoencoder with factor
    ``f``: input ``[z_t, map]`` with the parsing map's ``NUM_PARTS * f * f`` channels (:func:`parsing_map`),
    zero-initialised like :func:`inpainting_unet`."""
    if isinstance(f, bool) or not isinstance(f, int) or f < 1:
        raise ValueError(f"expected f, the autoencoder's downsampling factor, as an int >= 1, got {f!r}")
    return _with_channels(base, concat_channels("parsing", base.config.out_channels, f), "parsing")


@torch.no_grad()
def inpainting_inputs(ae: Autoencoder, image: torch.Tensor, mask: torch.Tensor, mask_resize: str = "max"
                      ) -> torch.Tensor:
    """What an inpainting model sees beside z_t: ``[mask on the latent grid, latent of image * (mask < 0.5)]``,
    ``[b, 1 + c, h, w]``, where the autoencoder is. image ``[b, 3, H, W]`` in [-1, 1], mask ``[b, 1, H, W]`` (1 = the
    hole)."""
    weight = next(ae.parameters())
    image, mask = image.to(weight.device, weight.dtype), mask.to(weight.device)
    z_masked = ae.to_latent(masked_image(image, mask))
    return torch.cat([latent_mask(mask, z_masked.shape[-2:], mask_resize), z_masked], dim=1)


def parsing_map(masks: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Part masks ``[b, P, H, W]`` (or ``[P, H, W]``; each pixel's part shares summing to 1) laid on the latent grid
    ``size`` = (h, w) without losing a pixel: each cell's f x f pixels (f = H / h) of each part become channels
    (space-to-depth, ``F.pixel_unshuffle``) -> ``[b, P * f * f, h, w]``, part by part: channel ``p * f * f + i * f +
    j`` holds pixel (i, j) of each cell of part p. Averaging each cell instead (P channels of part shares) keeps
    where a part is only to the cell: the eyes, brows and mouth of a 64 px face span a few pixels, a cell is 4 x 4,
    and a model given cell shares draws them less where the map asks (notebook 10 measures both)."""
    if masks.ndim not in (3, 4) or masks.shape[-3] != NUM_PARTS:
        raise ValueError(f"expected part masks [b, {NUM_PARTS}, H, W] (one channel per PARTS entry), got shape "
                         f"{list(masks.shape)}")
    h, w = (int(v) for v in size)
    if masks.shape[-2] % h or masks.shape[-1] % w:
        raise ValueError(f"the masks' {masks.shape[-2]}x{masks.shape[-1]} pixels do not tile a {h}x{w} latent grid")
    if masks.shape[-2] // h != masks.shape[-1] // w:
        raise ValueError(f"the masks' {masks.shape[-2]}x{masks.shape[-1]} pixels make cells of unequal sides on a "
                         f"{h}x{w} latent grid; expected the same factor f in height and width")
    one = masks.ndim == 3
    out = F.pixel_unshuffle(masks[None] if one else masks, masks.shape[-2] // h)
    return out[0] if one else out


# -- data --------------------------------------------------------------------------------------------------------------

class MaskedImages(Dataset):
    """``variants`` masked copies of every image of ``images``, to be encoded once into a latent cache (see
    :func:`tinyldm.recipes.train_diffusion`): item ``k`` is image ``k % n`` with mask ``k`` of ``masks``,

        {"image": image * (mask < 0.5), "mask": the mask on the latent grid [1, h, w] (f = ``f``), "label": int}

    so the cache holds each masked latent with its mask, and :class:`InpaintingLatents` joins it to the latent of
    the whole image. Encoding on the fly would cost more than the UNet step on a CPU; cached variants do not."""

    KEEP = ("mask",)  # what a latent cache of these items keeps beside the masked latent

    def __init__(self, images: Dataset, masks: MaskGenerator, variants: int = 4, f: int = 4,
                 mask_resize: str = "max"):
        if isinstance(variants, bool) or not isinstance(variants, int) or variants < 1:
            raise ValueError(f"expected variants, masked copies per image, as an int >= 1, got {variants!r}")
        if mask_resize not in MASK_RESIZE:
            raise ValueError(f"expected mask_resize one of {MASK_RESIZE}, got {mask_resize!r}")
        self.images, self.masks, self.variants, self.f, self.mask_resize = images, masks, variants, f, mask_resize

    def __len__(self) -> int:
        return self.variants * len(self.images)

    def __getitem__(self, k: int) -> dict:
        if not 0 <= k < len(self):
            raise IndexError(f"index {k} out of range for {len(self)} masked images")
        i = k % len(self.images)
        item = self.images[i]
        image = item["image"]
        mask = self.masks(k, item=item)
        size = (image.shape[-2] // self.f, image.shape[-1] // self.f)
        return {"image": masked_image(image[None], mask[None])[0], "label": int(item.get("label", 0)),
                "mask": latent_mask(mask[None], size, self.mask_resize)[0]}

    def __repr__(self) -> str:
        return (f"MaskedImages({self.images!r}, {self.masks!r}, variants={self.variants}, f={self.f}, "
                f"resize={self.mask_resize})")


class InpaintingLatents(Dataset):
    """Training items of the inpainting model: the masked latents of a :class:`MaskedImages` cache joined to the
    latents of the whole images (``clean``, item for item the images the masked ones were made from, so masked item
    k belongs to image k % n): ``{"latent": x_0 [c, h, w], "masked_latent": [c, h, w], "mask": [1, h, w], "label",
    ...}``."""

    def __init__(self, clean: Dataset, masked: Dataset):
        if len(masked) % len(clean):
            raise ValueError(f"{len(masked)} masked latents are not whole variants of {len(clean)} images")
        self.clean, self.masked = clean, masked

    def __len__(self) -> int:
        return len(self.masked)

    def __getitem__(self, k: int) -> dict:
        m = self.masked[k]
        return {**self.clean[k % len(self.clean)], "masked_latent": m["latent"], "mask": m["mask"]}

    @property
    def labels(self) -> torch.Tensor:
        clean = torch.as_tensor(self.clean.labels)
        return clean.repeat(len(self) // len(self.clean))

    def __repr__(self) -> str:
        return f"InpaintingLatents({self.clean!r}, {self.masked!r})"


class ParsingMaps(Dataset):
    """Items of a dataset with face-parsing masks (:class:`tinyldm.data.Faces`, or real images with CelebAMask-HQ
    annotations) plus ``"map"``: the masks on the latent grid of an autoencoder with factor ``f``,
    ``[NUM_PARTS * f * f, H / f, W / f]`` (:func:`parsing_map`). The pixel masks are left out: the map is what the model
    and the latent cache need."""

    def __init__(self, images: Dataset, f: int = 4):
        self.images, self.f = images, f

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.images[i])
        masks = torch.as_tensor(item.pop("masks", torch.zeros(0)))
        if masks.ndim != 3 or masks.shape[0] != NUM_PARTS:
            raise ValueError(f"{self.images!r} has no face-parsing masks (items need 'masks' [{NUM_PARTS}, H, W], one "
                             f"per PARTS entry; got {list(masks.shape)}): a parsing map needs face-parsing data such "
                             f"as Faces")
        item["map"] = parsing_map(masks, (masks.shape[-2] // self.f, masks.shape[-1] // self.f))
        return item

    def __repr__(self) -> str:
        return f"ParsingMaps({self.images!r}, f={self.f}, pixels)"  # "pixels": the map's layout, in the cache's key


# -- sampling ----------------------------------------------------------------------------------------------------------

def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    draw = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=draw, dtype=x.dtype).to(x.device)


def _known_at(schedule: NoiseSchedule, z_known: torch.Tensor, t: int, generator) -> torch.Tensor:
    """The known latent at noise level t: q_sample(z_known, t, eps) with fresh eps (itself at t = 0)."""
    return z_known if t == 0 else schedule.q_sample(z_known, t, _noise(z_known, generator))


@torch.no_grad()
def blended_sample(eps_model, sampler: Sampler, z_known: torch.Tensor, keep: torch.Tensor,
                   generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Latent blending: the sampling loop of :func:`tinyldm.sample.sample`, with the known cells (``keep`` = 1,
    ``[b, 1, h, w]``) replaced after every step by the known latent ``z_known`` ``[b, c, h, w]`` noised to the level
    the step landed on. Returns z_0 ``[b, c, h, w]``."""
    schedule = sampler.schedule
    sampler.reset()
    x = sampler.init_noise(z_known.shape, generator=generator, device=z_known.device)  # x_T ~ N(0, I)
    b = x.shape[0]
    for t in tqdm(sampler.timesteps, desc="blend", disable=not progress):
        eps = eps_model(x, torch.full((b,), t, dtype=torch.long, device=x.device))
        x = sampler.step(x, t, eps, generator=generator)  # x at t' = the next timestep (0 after the last)
        x = keep * _known_at(schedule, z_known, sampler.next_t(t), generator) + (1 - keep) * x  # the known part
    return x


def repaint_times(n: int, jump: int = 5, resample: int = 5) -> list[int]:
    """RePaint's walk over positions n, n - 1, ..., 0 of a sampler's timesteps (n = the first, 0 = clean data): down
    one position at a time, and at every ``jump``-th position, ``resample - 1`` times, back up ``jump`` positions and
    down again (Lugmayr et al. 2022, their ``get_schedule_jump``). resample = 1 is plain blending."""
    for name, v in (("n", n), ("jump", jump), ("resample", resample)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"expected {name} as an int >= 1, got {v!r}")
    left = {i: resample - 1 for i in range(jump, n, jump)}  # positions where the walk goes back up
    walk, i = [n], n
    while i > 0:
        i -= 1
        walk.append(i)
        if left.get(i, 0) > 0:
            left[i] -= 1
            for _ in range(jump):
                i += 1
                walk.append(i)
    return walk


@torch.no_grad()
def repaint_sample(eps_model, schedule: NoiseSchedule, timesteps: Sequence[int], z_known: torch.Tensor,
                   keep: torch.Tensor, jump: int = 5, resample: int = 5, generator: torch.Generator | None = None,
                   progress: bool = False) -> torch.Tensor:
    """RePaint on the timesteps of a sampler (descending, e.g. ``DDIM(schedule, 20).timesteps``): going down, a
    stochastic step (DDIM with eta = 1: DDPM's posterior, as RePaint uses) followed by the known cells pasted in as
    in :func:`blended_sample`; going up, fresh noise by q(z_t | z_t') = N(sqrt(alpha_bar_t / alpha_bar_t') z_t',
    (1 - alpha_bar_t / alpha_bar_t') I). The walk is :func:`repaint_times`; it costs about ``resample`` times the
    model evaluations of blending."""
    ts = [0] + sorted(int(t) for t in timesteps)  # ts[i]: the timestep at position i, ts[0] = 0 clean
    walk = repaint_times(len(ts) - 1, jump, resample)
    x = _noise(z_known, generator)  # x_T ~ N(0, I)
    b = x.shape[0]
    for i, j in tqdm(list(zip(walk, walk[1:])), desc="repaint", disable=not progress):
        t, t_to = ts[i], ts[j]
        if j < i:  # down: denoise from t to t_to, then paste the known part in at t_to
            eps = eps_model(x, torch.full((b,), t, dtype=torch.long, device=x.device))
            x = ddim_step(schedule, x, t, t_to, eps, eta=1.0, z=_noise(x, generator))
            x = keep * _known_at(schedule, z_known, t_to, generator) + (1 - keep) * x
        else:  # up: q(x_{t_to} | x_t), a fresh draw of the noise added between t and t_to
            ratio = schedule.alpha_bar[t_to].item() / schedule.alpha_bar[t].item()
            x = ratio ** 0.5 * x + (1 - ratio) ** 0.5 * _noise(x, generator)
    return x


@dataclass
class Inpainting:
    """What :func:`inpaint` returns: ``images`` ``[b, 3, H, W]``, the decoded fill pasted into the known pixels (the
    known region exactly as given); ``raw``, the decoded latent before pasting (where a seam would show); ``mask``
    ``[b, 1, H, W]``; ``evals``, model evaluations per sample."""

    images: torch.Tensor
    raw: torch.Tensor
    mask: torch.Tensor
    evals: int


def paste(image: torch.Tensor, raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``image`` where the mask is 0, ``raw`` where it is 1 (a soft mask blends): the known pixels come back exactly
    as they were, whatever the autoencoder's reconstruction of them."""
    mask = check_mask(mask, image)
    return image * (1 - mask) + raw * mask


@torch.no_grad()
def inpaint(model: UNet, ae: Autoencoder, image: torch.Tensor, mask: torch.Tensor, cond: dict | None = None,
            null: dict | None = None, s: float = 0.0, method: str = "model", sampler: Sampler | None = None,
            seed: int = 0, jump: int = 5, resample: int = 5, mask_resize: str = "max", batch_size: int = 64,
            device=None, progress: bool = False, allow_other_autoencoder: bool = False) -> Inpainting:
    """Fill the holes of ``image`` ``[b, 3, H, W]`` (in [-1, 1]) where ``mask`` ``[b, 1, H, W]`` is 1.

    ``method``: ``"model"``, an inpainting model (:func:`inpainting_unet`, or Stable Diffusion's inpainting weights)
    that sees the mask and the masked image's latent; or a training-free baseline with a plain ``model``:
    ``"blend"`` (:func:`blended_sample`) or ``"repaint"`` (:func:`repaint_sample`, with ``jump`` and ``resample``).
    ``cond`` / ``null`` / ``s``: classifier-free guidance as in :func:`tinyldm.pipeline.generate` (e.g.
    ``LabelCondition(24).given(labels)``, ``.null(b)``); the inpainting channels go into both halves. The loop runs
    ``sampler`` (default DDIM with 20 steps on the model's schedule; RePaint uses its timesteps), in chunks of
    ``batch_size`` with the noise of chunk k from ``seed + k``. ``mask_resize``: how the mask meets the latent grid
    (:func:`latent_mask`; Stable Diffusion's pipeline uses "nearest").
    """
    if method not in METHODS:
        raise ValueError(f"expected method one of {METHODS}, got {method!r}")
    check_partner(model, ae, "autoencoder", "autoencoder", allow_other_autoencoder)
    mask = check_mask(mask, image)
    kind = concat_kind(model)
    if method == "model" and kind != "inpaint":
        raise ValueError(f"method 'model' needs an inpainting model (inpainting_unet(base), trained), got a model "
                         f"whose extra input channels are {kind!r}; a plain model inpaints with 'blend' or 'repaint'")
    if method != "model" and kind is not None:
        raise ValueError(f"method {method!r} runs a plain model (the baselines force the known part at every step), "
                         f"got one with {kind!r} input channels")
    if s != 0 and cond is not None and null is None:
        raise ValueError(f"guidance with s = {s} needs null, the null condition (e.g. condition.null(b))")
    device = torch.device(device) if device is not None else torch.device("cpu")
    sampler = sampler or DDIM(model.schedule, steps=20)
    raws = []
    for k, start in enumerate(range(0, len(image), batch_size)):
        part = slice(start, min(len(image), start + batch_size))
        x, m = image[part], mask[part]
        concat = inpainting_inputs(ae, x, m, mask_resize).to(device)  # [b, 1 + c, h, w]
        c, n = _chunk(cond, part, device), _chunk(null, part, device)
        if method == "model":
            c, n = {**c, "concat": concat}, ({**n, "concat": concat} if null is not None else None)
        eps_model = Guided(model, c, n, s) if (cond is not None or method == "model") else model
        generator = torch.Generator(device).manual_seed(seed + k)
        z_known, keep = concat[:, 1:], 1 - latent_mask(m, concat.shape[-2:], "max").to(device)
        if method == "model":
            z = sample(eps_model, sampler, z_known.shape, generator=generator, progress=progress, device=device)
        elif method == "blend":
            z = blended_sample(eps_model, sampler, z_known, keep, generator, progress)
        else:
            z = repaint_sample(eps_model, sampler.schedule, sampler.timesteps, z_known, keep, jump, resample,
                               generator, progress)
        raws.append(decode(ae, z))
    raw = torch.cat(raws)
    if method == "repaint":
        walk = repaint_times(len(sampler.timesteps), jump, resample)
        evals = sum(j < i for i, j in zip(walk, walk[1:]))  # one model evaluation per step down
    else:
        evals = sampler.num_model_evals
    return Inpainting(paste(image, raw, mask), raw, mask, evals)


def _chunk(inputs: dict | None, part: slice, device) -> dict:
    return {key: v[part].to(device) for key, v in inputs.items()} if inputs is not None else {}


# -- measures ------------------------------------------------------------------------------------------------------------

def _hole(mask: torch.Tensor, images: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    if images.shape != truth.shape:
        raise ValueError(f"expected images and truth of the same shape, got {list(images.shape)} and "
                         f"{list(truth.shape)}")
    return check_mask(mask, images) >= 0.5


def hole_mse(images: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image ``[b]``: the mean squared error against ``truth`` over the hole's pixels (images in [-1, 1])."""
    hole = _hole(mask, images, truth).float()
    sq = (images - truth).pow(2).mean(1, keepdim=True)  # over colour channels
    return (sq * hole).sum((1, 2, 3)) / hole.sum((1, 2, 3)).clamp(min=1)


def seam_error(images: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image ``[b]``: how far the step in colour across the hole's border differs from the step the true image
    has there: the mean of |(a - b) - (a* - b*)| over every pair of neighbouring pixels (a, b) with one in the hole
    and one outside (a*, b*: the truth's). A fill that fits its surroundings has no step the truth lacks."""
    hole = _hole(mask, images, truth)
    errors, counts = 0, 0
    for dim in (2, 3):  # vertical and horizontal neighbours
        n = images.shape[dim] - 1
        a, b = images.narrow(dim, 1, n), images.narrow(dim, 0, n)
        ta, tb = truth.narrow(dim, 1, n), truth.narrow(dim, 0, n)
        border = (hole.narrow(dim, 1, n) != hole.narrow(dim, 0, n)).float()
        errors = errors + ((a - b) - (ta - tb)).abs().mean(1, keepdim=True).mul(border).sum((1, 2, 3))
        counts = counts + border.sum((1, 2, 3))
    return errors / counts.clamp(min=1)


@torch.no_grad()
def inpainting_scores(images: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor, judge=None,
                      attributes: torch.Tensor | None = None) -> dict[str, float]:
    """How close inpaintings ``images`` come to the ``truth`` they were cut from (the known parts are equal):

    * ``hole_mse``: the mean squared error in the hole (pixels in [-1, 1]); lower is better;
    * ``seam``: :func:`seam_error`, the step across the border that the truth does not have; lower is better;
    * ``feature``: with a ``judge``, the mean distance of the images' judge features from the truth's; lower is better;
    * ``attributes``: with the asked ``attributes`` ``[b, A]`` (-1: don't care), the share of images in which the judge
      reads all of them, e.g. the class of an object that was cut out and asked for again; higher is better.
    """
    scores = {"n": len(images), "hole_mse": hole_mse(images, truth, mask).mean().item(),
              "seam": seam_error(images, truth, mask).mean().item()}
    if judge is not None:
        judge.eval()
        scores["feature"] = (judge.features(images) - judge.features(truth)).norm(dim=1).mean().item()
        if attributes is not None:
            from .metrics import attribute_accuracy

            scores["attributes"] = attribute_accuracy(judge, images, attributes)["all"]
    return scores
