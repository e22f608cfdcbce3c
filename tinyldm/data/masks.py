"""Inpainting masks: which pixels of an image are unknown, drawn deterministically by (seed, index), at any size.

Convention (Stable Diffusion's and LaMa's): a mask is float32 ``[1, H, W]`` (``[b, 1, H, W]`` batched) with
**1 = the hole** (unknown, to be filled) and **0 = known** (kept). The masked image the inpainting model sees is
``x * (mask < 0.5)``: the hole set to 0, mid-grey in [-1, 1]. Masks from these generators are hard (0 or 1).

The kinds (``MASK_KINDS``), the mix that Stable Diffusion's and LDM's inpainting models were trained on:

* ``"boxes"``: 1 to 4 axis-parallel rectangles, each 10-50 % of the side;
* ``"strokes"``: LaMa-style irregular masks: 1 to 4 thick brush strokes, each a random polyline of 3 to 9 segments
  with sharp turns, 3-10 % of the side wide;
* ``"outpaint"``: the border: one side cut off (a quarter to half of the image), or everything outside a window;
* ``"object"``: what a dataset item knows is there: the first object of a scene (its bounding box, grown by a
  margin, so the hole's outline does not give the shape away), or a part of a face (the eyes, the mouth, the hair,
  the nose, the glasses: the part's pixels grown by the margin);
* ``"everything"``: the whole image: the inpainting model then is the plain generator, which it must stay
  (Stable Diffusion's inpainting finetune masks everything in 25 % of its samples).

``MaskGenerator(MaskConfig(...), seed)`` draws a kind by the config's weights and then a mask of that kind, from
``np.random.default_rng([seed, index, MASK_STREAM])``: mask i is the same in any order, in any process, and a
different stream from the dataset item of the same (seed, index).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from .faces import PARTS
from .scenes import DataError, check_int, pixel_centres

__all__ = ["MASK_KINDS", "FACE_MASK_PARTS", "MaskConfig", "MaskGenerator", "box_mask", "stroke_mask", "outpaint_mask",
           "region_mask", "object_mask", "check_mask", "masked_image"]

MASK_KINDS = ("boxes", "strokes", "outpaint", "object", "everything")
# the face parts an "object" mask of a face covers (one of them per mask)
FACE_MASK_PARTS = ("eyes", "mouth", "hair", "nose", "glasses")
MASK_STREAM = 0x6D61736B  # "mask": keeps the masks' random numbers apart from the items'


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres (x [1, size], y [size, 1]) as fractions of the side."""
    u = pixel_centres(size)
    return u[None, :], u[:, None]


def box_mask(size: int, rng: np.random.Generator, n: int | None = None, low: float = 0.1,
             high: float = 0.5) -> np.ndarray:
    """``n`` (default: 1 to 4) rectangles with sides in [low, high] of the image side, anywhere inside it;
    float32 ``[size, size]``."""
    n = int(rng.integers(1, 5)) if n is None else n
    x, y = _grid(size)
    mask = np.zeros((size, size), np.float32)
    for _ in range(n):
        w, h = rng.uniform(low, high, 2)
        x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        mask[(x >= x0) & (x < x0 + w) & (y >= y0) & (y < y0 + h)] = 1.0
    return mask


def _segment_distance(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of every pixel centre to the segment a-b (fractions of the side)."""
    d = b - a
    s = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1]) / max(float(d @ d), 1e-12), 0.0, 1.0)
    return np.hypot(x - (a[0] + s * d[0]), y - (a[1] + s * d[1]))


def stroke_mask(size: int, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """LaMa-style irregular mask: ``n`` (default: 1 to 4) brush strokes. A stroke starts anywhere, then takes 3 to 9
    segments of 5-20 % of the side, each turning by up to 120 degrees from the last, bouncing off the borders, with a
    round brush 3-10 % of the side wide. float32 ``[size, size]``."""
    n = int(rng.integers(1, 5)) if n is None else n
    x, y = _grid(size)
    mask = np.zeros((size, size), bool)
    for _ in range(n):
        width = rng.uniform(0.03, 0.10)
        point, angle = rng.uniform(0.1, 0.9, 2), rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(3, 10))):
            angle += rng.uniform(-2 * math.pi / 3, 2 * math.pi / 3)
            length = rng.uniform(0.05, 0.2)
            nxt = point + length * np.array([math.cos(angle), math.sin(angle)])
            bounced = np.abs(nxt)  # reflect at 0 ...
            bounced = np.where(bounced > 1, 2 - bounced, bounced)  # ... and at 1
            mask |= _segment_distance(x, y, point, bounced) <= width / 2
            if bounced[0] != nxt[0]:  # the stroke goes on in the reflected direction
                angle = math.pi - angle
            if bounced[1] != nxt[1]:
                angle = -angle
            point = bounced
    return mask.astype(np.float32)


def outpaint_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """The border to be painted: with probability 1/2 one side cut off (a quarter to half of the image), else all
    outside a window of 45-75 % of the side, placed anywhere. float32 ``[size, size]``."""
    x, y = _grid(size)
    if rng.random() < 0.5:
        cut = rng.uniform(0.25, 0.5)
        side = int(rng.integers(4))
        known = [x >= cut, x < 1 - cut, y >= cut, y < 1 - cut][side]  # left, right, top, bottom cut off
        known = np.broadcast_to(known, (size, size))
    else:
        w, h = rng.uniform(0.45, 0.75, 2)
        x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        known = (x >= x0) & (x < x0 + w) & (y >= y0) & (y < y0 + h)
    return (~known).astype(np.float32)


def region_mask(coverage: np.ndarray, margin: float, box: bool = False) -> np.ndarray:
    """The pixels where ``coverage`` ``[H, W]`` (a part's or an object's share of each pixel) is at least 0.5, grown
    by ``margin`` (fraction of the side) in every direction; with ``box``, their bounding box grown by the margin.
    Empty coverage gives an empty mask. float32 ``[H, W]``."""
    h, w = coverage.shape
    inside = coverage >= 0.5
    if not inside.any():
        return np.zeros((h, w), np.float32)
    m = int(round(margin * max(h, w)))
    if box:
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        out = np.zeros((h, w), np.float32)
        out[max(0, rows[0] - m):rows[-1] + m + 1, max(0, cols[0] - m):cols[-1] + m + 1] = 1.0
        return out
    if m == 0:
        return inside.astype(np.float32)
    # grow by a disc of radius m: a max-filter over the disc's offsets (masks are small; this stays simple)
    grown = np.zeros((h + 2 * m, w + 2 * m), bool)
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            if dx * dx + dy * dy <= m * m:
                grown[m + dy:m + dy + h, m + dx:m + dx + w] |= inside
    return grown[m:m + h, m:m + w].astype(np.float32)


def object_mask(item: Mapping[str, Any], rng: np.random.Generator, margin: float = 0.06,
                parts: tuple[str, ...] = FACE_MASK_PARTS) -> np.ndarray:
    """A hole over what an item of the procedural data shows: a scene's first object (the one its label names) as its
    bounding box grown by ``margin``, or one of a face's ``parts`` that the face has (drawn by ``rng``), grown by
    ``margin``. float32 ``[H, W]``. An item without ``"masks"`` (a folder's photo) is an error."""
    if "masks" not in item:
        raise DataError("an 'object' mask needs an item of the procedural data with 'masks' (Scenes or Faces); "
                        f"got an item with keys {sorted(item)}: give this data's MaskConfig object=0")
    masks = np.asarray(item["masks"], np.float32)
    if "n_objects" in item:  # a scene: box around object 0, so the outline does not give the shape away
        return region_mask(masks[0], margin, box=True)
    if masks.shape[0] != len(PARTS):
        raise DataError(f"expected a scene's object masks or a face's {len(PARTS)} part masks, got masks of shape "
                        f"{list(masks.shape)}")
    present = [p for p in parts if (masks[PARTS.index(p)] >= 0.5).any()]
    if not present:
        raise DataError(f"the face has none of the parts {parts} (glasses are worn by 3 in 10)")
    part = present[int(rng.integers(len(present)))]
    return region_mask(masks[PARTS.index(part)], margin)


@dataclass(frozen=True)
class MaskConfig:
    """The mix of mask kinds a :class:`MaskGenerator` draws: one weight per kind of ``MASK_KINDS`` (normalised to
    probabilities; 0 leaves a kind out). The default is the inpainting finetune's mix: everything masked in a
    quarter of the samples (the model stays a generator), the rest split among boxes, strokes, borders and objects.
    ``margin``: how far object and part masks reach beyond the object (fraction of the side); ``parts``: the face
    parts an object mask of a face may cover."""

    boxes: float = 0.25
    strokes: float = 0.25
    outpaint: float = 0.1
    object: float = 0.15
    everything: float = 0.25
    margin: float = 0.06
    parts: tuple[str, ...] = FACE_MASK_PARTS

    def __post_init__(self):
        object.__setattr__(self, "parts", tuple(self.parts))
        weights = [getattr(self, k) for k in MASK_KINDS]
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights) or sum(weights) <= 0:
            raise DataError(f"mask kind weights must be numbers >= 0, not all 0; got "
                            f"{dict(zip(MASK_KINDS, weights))}")
        if not 0 <= self.margin < 0.5:
            raise DataError(f"margin must be in [0, 0.5) (a fraction of the image side), got {self.margin!r}")
        if not self.parts or any(p not in PARTS for p in self.parts):
            raise DataError(f"parts must be names from {PARTS}, got {self.parts!r}")

    @classmethod
    def only(cls, kind: str, **overrides) -> "MaskConfig":
        """Every mask of one kind, e.g. ``MaskConfig.only("strokes")``."""
        if kind not in MASK_KINDS:
            raise DataError(f"unknown mask kind {kind!r}; choose one of {MASK_KINDS}")
        return cls(**{**{k: float(k == kind) for k in MASK_KINDS}, **overrides})

    @classmethod
    def parse(cls, text: str) -> "MaskConfig":
        """From the command line: ``"boxes=0.3,strokes=0.3,everything=0.25"`` (kinds not named get weight 0)."""
        weights = {k: 0.0 for k in MASK_KINDS}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            if name.strip() not in MASK_KINDS:
                raise DataError(f"unknown mask kind {name.strip()!r} in {text!r}; choose from {MASK_KINDS}")
            try:
                weights[name.strip()] = float(value)
            except ValueError:
                raise DataError(f"expected KIND=WEIGHT, e.g. strokes=0.3; got {part!r}") from None
        return cls(**weights)

    @property
    def probabilities(self) -> dict[str, float]:
        total = sum(getattr(self, k) for k in MASK_KINDS)
        return {k: getattr(self, k) / total for k in MASK_KINDS}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class MaskGenerator:
    """Mask ``index`` at any size: a kind drawn by ``config``'s weights, then a mask of that kind, both from
    ``np.random.default_rng([seed, index, MASK_STREAM])``.

    ``generator(index, size)`` -> float32 tensor ``[1, size, size]``; kind "object" needs the dataset item
    (``generator(index, item=dataset[index])``, its size is the item's). ``generator.kind(index)`` says which kind
    mask ``index`` is, without drawing it."""

    def __init__(self, config: MaskConfig | None = None, seed: int = 0):
        self.config = config or MaskConfig()
        self.seed = check_int("seed", seed, 0)
        self._kinds = [k for k in MASK_KINDS if getattr(self.config, k) > 0]
        self._p = np.array([self.config.probabilities[k] for k in self._kinds])

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, check_int("index", index, 0), MASK_STREAM])

    def _draw_kind(self, rng: np.random.Generator) -> str:
        return self._kinds[int(rng.choice(len(self._kinds), p=self._p))] if len(self._kinds) > 1 else self._kinds[0]

    def kind(self, index: int) -> str:
        return self._draw_kind(self._rng(index))

    def __call__(self, index: int, size: int | None = None, item: Mapping[str, Any] | None = None) -> torch.Tensor:
        if item is not None:
            image_size = int(item["image"].shape[-1])
            if size is not None and size != image_size:
                raise DataError(f"size {size} differs from the item's image size {image_size}")
            size = image_size
        if size is None:
            raise DataError("give the mask's size, or the dataset item it is for")
        size = check_int("size", size, 1)
        rng = self._rng(index)
        kind = self._draw_kind(rng)
        if kind == "boxes":
            mask = box_mask(size, rng)
        elif kind == "strokes":
            mask = stroke_mask(size, rng)
        elif kind == "outpaint":
            mask = outpaint_mask(size, rng)
        elif kind == "object":
            if item is None:
                raise DataError("mask kind 'object' needs the dataset item: generator(index, item=dataset[index])")
            mask = object_mask(item, rng, self.config.margin, self.config.parts)
        else:
            mask = np.ones((size, size), np.float32)
        return torch.from_numpy(np.ascontiguousarray(mask))[None]

    def __repr__(self) -> str:
        weights = ", ".join(f"{k}={getattr(self.config, k):g}" for k in self._kinds)
        return (f"MaskGenerator({weights}, margin={self.config.margin:g}, parts={','.join(self.config.parts)}, "
                f"seed={self.seed})")


def check_mask(mask: torch.Tensor, image: torch.Tensor | None = None, name: str = "mask") -> torch.Tensor:
    """``mask`` as float ``[b, 1, H, W]`` in [0, 1] (1 = hole), checked against ``image`` ``[b, 3, H, W]`` when given:
    a ValueError says what was expected and what came."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"expected {name} as a tensor [b, 1, H, W], got {type(mask).__name__}")
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"expected {name} of shape [b, 1, H, W] (one channel, 1 = the hole), got {list(mask.shape)}")
    if image is not None and (mask.shape[0] != image.shape[0] or mask.shape[2:] != image.shape[2:]):
        raise ValueError(f"expected {name} [{image.shape[0]}, 1, {image.shape[2]}, {image.shape[3]}] to match the "
                         f"image {list(image.shape)}, got {list(mask.shape)}")
    mask = mask.float()
    if mask.numel() and bool(((mask < 0) | (mask > 1) | mask.isnan()).any()):
        raise ValueError(f"expected {name} values in [0, 1] (1 = the hole, 0 = kept), got values from "
                         f"{mask.min().item():g} to {mask.max().item():g}")
    return mask


def masked_image(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The image an inpainting model is shown: ``image * (mask < 0.5)``, the hole set to 0 (Stable Diffusion's
    convention). image ``[b, 3, H, W]`` in [-1, 1], mask ``[b, 1, H, W]``."""
    mask = check_mask(mask, image)
    return image * (mask < 0.5).to(image.dtype)
