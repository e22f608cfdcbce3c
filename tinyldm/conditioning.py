"""Conditioning: eps_theta(x_t, t) becomes eps_theta(x_t, t, y), and classifier-free guidance steers it.

A *condition* turns a batch into the keyword arguments the UNet takes for y, and knows y's null value:

* ``LabelCondition``: class labels, ``{"y": [b]}``; the null label is ``num_classes`` (the UNet's extra row).
* ``TextCondition``: prompts through a frozen text encoder (:mod:`tinyldm.text`), ``{"context": [b, L, d],
  "context_mask": [b, L]}``; the null prompt is the empty string "", as in Stable Diffusion.
* ``ConcatCondition``: tensors of the batch laid beside x_t as extra input channels, ``{"concat": [b, k, h, w]}``
  (LDM's "c_concat"): inpainting's mask and masked-image latent, a face-parsing map; its null value is zeros.
* ``Conditions``: several at once (a class label and a parsing map), each with its own dropout.

Training (classifier-free guidance, Ho & Salimans 2022): with probability ``p_uncond`` (default 0.1) an item's
condition is replaced by the null one, so one network learns both eps(x_t, t, y) and eps(x_t, t, null).
:class:`tinyldm.train.EpsLoss` calls ``condition(batch, generator)``, which does that dropout.

Sampling: :class:`Guided` wraps the network into the ``eps_model(x_t, t)`` that every sampler of
:mod:`tinyldm.sample` takes, with the guided prediction of the seed

    eps~(x_t, t, y) = eps(x_t, t, y) + s * (eps(x_t, t, y) - eps(x_t, t, null))

computed in one batched forward pass (the conditional and the null half side by side). s = 0 is the plain
conditional model; diffusers' ``guidance_scale`` is 1 + s.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .config import check_values

__all__ = ["drop_mask", "LabelCondition", "TextCondition", "ConcatCondition", "Conditions", "guided_eps", "Guided"]


def drop_mask(b: int, p: float, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """``[b]`` bool: True where an item's condition is dropped (replaced by null), each with probability p."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"expected a drop probability p_uncond in [0, 1], got {p}")
    device = device if device is not None else (generator.device if generator is not None else "cpu")
    return torch.rand(b, generator=generator, device=device) < p


class LabelCondition:
    """Class labels from ``batch[key]`` -> ``{"y": [b]}``; labels dropped to ``null_label`` with prob p_uncond."""

    def __init__(self, num_classes: int, p_uncond: float = 0.1, key: str = "label"):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"expected num_classes as an int >= 1, got {num_classes!r}")
        drop_mask(0, p_uncond)  # validates p_uncond
        self.num_classes, self.p_uncond, self.key = num_classes, p_uncond, key

    @property
    def null_label(self) -> int:
        return self.num_classes

    def given(self, y: torch.Tensor | Sequence[int], device=None) -> dict[str, torch.Tensor]:
        """The model inputs for labels y ``[b]`` (checked to be in 0..num_classes, num_classes = null)."""
        y = torch.as_tensor(y, dtype=torch.long, device=device)
        if y.ndim != 1:
            raise ValueError(f"expected labels y of shape [b], got shape {list(y.shape)}")
        if len(y) and check_values(y) and bool(((y < 0) | (y > self.num_classes)).any()):
            raise ValueError(f"expected labels in 0..{self.num_classes - 1} (or {self.num_classes}, the null "
                             f"label), got values from {int(y.min())} to {int(y.max())}")
        return {"y": y}

    def null(self, b: int, device=None) -> dict[str, torch.Tensor]:
        return {"y": torch.full((b,), self.null_label, dtype=torch.long, device=device)}

    def __call__(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        y = torch.as_tensor(batch[self.key]).long()
        drop = drop_mask(len(y), self.p_uncond, generator, y.device)
        return self.given(torch.where(drop, torch.full_like(y, self.null_label), y))

    def __repr__(self) -> str:
        return f"LabelCondition(num_classes={self.num_classes}, p_uncond={self.p_uncond})"


class TextCondition:
    """Prompts from ``batch[key]`` -> the frozen encoder's ``{"context", "context_mask"}``; a dropped prompt
    becomes "" (the null prompt) before encoding, so the null condition is exactly what sampling uses.

    ``use_mask=False`` lets the UNet attend to padding tokens too, as Stable Diffusion v1 does with CLIP (its
    padding positions hold end-of-text states that carry the whole prompt through the causal attention).

    ``cache``: a frozen encoder gives a prompt the same states every time, so up to ``cache`` prompts' states are
    kept (on the device they were last asked on) and a training step encodes only prompts it has not seen: with
    one caption per dataset (FFHQ's "a photo of a face") and the empty prompt, the text encoder runs once per run.
    An encoder that trains (any parameter with ``requires_grad``) is never cached.
    """

    def __init__(self, encoder: nn.Module, p_uncond: float = 0.1, key: str = "caption", use_mask: bool = True,
                 cache: int = 4096):
        drop_mask(0, p_uncond)
        self.encoder, self.p_uncond, self.key, self.use_mask = encoder, p_uncond, key, use_mask
        self.cache_size, self._cache = cache, {}

    def _encode_uncached(self, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, mask = self.encoder.encode(prompts)
        return (hidden.to(device), mask.to(device)) if device is not None else (hidden, mask)

    def _encode(self, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        frozen = not any(p.requires_grad for p in self.encoder.parameters())
        if not frozen or self.cache_size <= 0:
            return self._encode_uncached(prompts, device)
        new = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        fresh = {}
        if new:
            hidden, mask = self._encode_uncached(new, device)
            fresh = {p: (h, m) for p, h, m in zip(new, hidden, mask)}
        rows = [fresh[p] if p in fresh else self._cache[p] for p in prompts]
        for p, row in fresh.items():
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))  # the oldest
            self._cache[p] = row
        if len({h.shape for h, _ in rows}) > 1:  # an encoder that pads to each batch's longest prompt: no stacking
            self._cache.clear()
            return self._encode_uncached(prompts, device)
        hidden, mask = torch.stack([h for h, _ in rows]), torch.stack([m for _, m in rows])
        return (hidden.to(device), mask.to(device)) if device is not None else (hidden, mask)

    def given(self, prompts: Sequence[str], device=None) -> dict[str, torch.Tensor]:
        if isinstance(prompts, str):
            raise ValueError(f"expected a list of prompts, got one string {prompts!r}; wrap it in a list")
        hidden, mask = self._encode(list(prompts), device)
        out = {"context": hidden}
        if self.use_mask:
            out["context_mask"] = mask.to(out["context"].device)
        return out

    def null(self, b: int, device=None) -> dict[str, torch.Tensor]:
        return self.given([""] * b, device)

    def __call__(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        prompts = list(batch[self.key])
        drop = drop_mask(len(prompts), self.p_uncond, generator).tolist()
        device = generator.device if generator is not None else None
        return self.given(["" if d else p for p, d in zip(prompts, drop)], device)

    def __repr__(self) -> str:
        return f"TextCondition({type(self.encoder).__name__}, p_uncond={self.p_uncond}, use_mask={self.use_mask})"


class ConcatCondition:
    """The batch's tensors ``keys`` (each ``[b, k_i, h, w]``) side by side along the channels -> ``{"concat": [b, k,
    h, w]}``, the extra input channels of a UNet made by ``with_extra_input_channels`` (LDM's "c_concat").

    Inpainting: keys ("mask", "masked_latent") and p_uncond = 0: the mask says which part of the latent is known, a
    fact the model must respect in every sample, not a condition to drop (the class or prompt beside it is dropped
    for guidance). A face-parsing map: key "map" with p_uncond = 0.1, dropped to zeros, its null value, so the map can
    be guided like a label."""

    def __init__(self, keys: Sequence[str], p_uncond: float = 0.0):
        if isinstance(keys, str) or not keys:
            raise ValueError(f"expected a list of batch keys, e.g. ('mask', 'masked_latent'), got {keys!r}")
        drop_mask(0, p_uncond)
        self.keys, self.p_uncond = tuple(keys), p_uncond

    def given(self, *tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model input for the tensors of ``keys``, in that order."""
        if len(tensors) != len(self.keys) or any(t.ndim != 4 or t.shape[0] != tensors[0].shape[0] or
                                                 t.shape[2:] != tensors[0].shape[2:] for t in tensors):
            raise ValueError(f"expected {len(self.keys)} tensors [b, k, h, w] with the same b, h, w (for "
                             f"{', '.join(self.keys)}), got shapes {[list(t.shape) for t in tensors]}")
        return {"concat": torch.cat([t.float() for t in tensors], dim=1)}

    def null(self, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The null condition of the same shape as ``like`` (a ``given`` result): zeros."""
        return {"concat": torch.zeros_like(like["concat"])}

    def __call__(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        out = self.given(*(torch.as_tensor(batch[k]) for k in self.keys))
        if self.p_uncond > 0:
            keep = ~drop_mask(len(out["concat"]), self.p_uncond, generator, out["concat"].device)
            out["concat"] = out["concat"] * keep.view(-1, 1, 1, 1).to(out["concat"].dtype)
        return out

    def __repr__(self) -> str:
        return f"ConcatCondition({', '.join(self.keys)}, p_uncond={self.p_uncond})"


class Conditions:
    """Several conditions as one, for training: each turns the batch into its model inputs with its own dropout
    (drawn in order from the step's generator), and the dicts are merged; e.g. a class label and inpainting's
    channels, ``Conditions(LabelCondition(24), ConcatCondition(("mask", "masked_latent")))``."""

    def __init__(self, *parts):
        if not parts:
            raise ValueError("expected at least one condition")
        self.parts = parts

    def __call__(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for part in self.parts:
            inputs = part(batch, generator)
            if out.keys() & inputs.keys():
                raise ValueError(f"two conditions give the same model input {sorted(out.keys() & inputs.keys())}")
            out.update(inputs)
        return out

    def __repr__(self) -> str:
        return f"Conditions({', '.join(map(repr, self.parts))})"


def guided_eps(eps_cond: torch.Tensor, eps_null: torch.Tensor, s: float) -> torch.Tensor:
    """The seed's guided prediction: eps(x_t, t, y) + s * (eps(x_t, t, y) - eps(x_t, t, null))."""
    return eps_cond + s * (eps_cond - eps_null)


def _cat(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if a.keys() != b.keys():
        raise ValueError(f"the condition and the null condition must have the same keys, got {sorted(a)} "
                         f"and {sorted(b)}")
    return {k: torch.cat([a[k], b[k]]) for k in a}


class Guided:
    """A guided ``eps_model(x_t, t)`` for the samplers: the network with condition ``cond`` (a dict of model
    inputs, e.g. ``condition.given(labels)``), guided away from ``null`` with scale s.

    One forward pass on the batch ``[x_t; x_t]`` with ``[cond; null]``, then :func:`guided_eps` on its two
    halves (s = 0 skips the null half). Works with every sampler: it is just another eps_model.
    """

    def __init__(self, model: nn.Module, cond: dict[str, torch.Tensor], null: dict[str, torch.Tensor] | None = None,
                 s: float = 3.0):
        if s != 0 and null is None:
            raise ValueError(f"guidance with s = {s} needs the null condition (e.g. condition.null(b))")
        self.model, self.cond, self.null, self.s = model, cond, null, float(s)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.s == 0:
            return self.model(x_t, t, **self.cond)
        both = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), **_cat(self.cond, self.null))
        eps_cond, eps_null = both.chunk(2)
        return guided_eps(eps_cond, eps_null, self.s)
