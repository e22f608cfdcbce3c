"""Exercises of notebook 06: condition dropout, the guided eps, and guidance in one batched forward pass."""

from __future__ import annotations

import torch

from ..conditioning import Guided, guided_eps
from .core import Case, Exercise, Mistake, register
from .noising import _g
from .training import TinyEps

# -- 06.drop_labels ----------------------------------------------------------------------------------------------------


def _drop_cases():
    y = torch.arange(10) % 4
    return [Case((y, torch.rand(10, generator=_g(30)), 0.3, 4), "ten labels, p = 0.3"),
            Case((y, torch.rand(10, generator=_g(31)), 0.0, 4), "p = 0: nothing dropped"),
            Case((y, torch.rand(10, generator=_g(32)), 1.0, 4), "p = 1: everything dropped"),
            Case((y[:1], torch.tensor([0.05]), 0.1, 4), "a batch of one, drawn u = 0.05 < p")]


register(Exercise(
    name="06.drop_labels",
    title="condition dropout",
    stub='''def drop_labels(y, u, p, null_label):
    """Classifier-free guidance's training trick: each label becomes the null label with probability p.

    y: int64 [b] labels; u: float [b], one uniform draw in [0, 1) per item (u < p means "drop");
    p: the drop probability; null_label: int (num_classes). Returns int64 [b].
    """
    raise NotImplementedError''',
    reference=lambda y, u, p, null: torch.where(u < p, torch.full_like(y, null), y),
    cases=_drop_cases,
    mistakes=[
        Mistake(lambda y, u, p, null: torch.where(u >= p, torch.full_like(y, null), y),
                "It drops the items it should keep: with p = 0.1 a tenth of the labels are dropped, not nine tenths."),
        Mistake(lambda y, u, p, null: torch.where(u < p, torch.zeros_like(y), y),
                "Dropped labels become 0, a real class: the null label is num_classes, the extra row."),
    ],
    hints=["torch.where(condition, if_true, if_false) picks per item."],
))


# -- 06.guided_eps -----------------------------------------------------------------------------------------------------

def _guided_cases():
    c, n = torch.randn(3, 4, 8, 8, generator=_g(33)), torch.randn(3, 4, 8, 8, generator=_g(34))
    return [Case((c, n, 3.0), "s = 3"), Case((c, n, 0.0), "s = 0: the conditional model alone"),
            Case((c, n, 7.5), "s = 7.5")]


register(Exercise(
    name="06.guided_eps",
    title="the guided prediction",
    stub='''def guided_eps(eps_cond, eps_null, s):
    """The seed's classifier-free guidance: eps(x_t, t, y) + s (eps(x_t, t, y) - eps(x_t, t, null)).

    eps_cond, eps_null: [b, c, h, w]; s: the guidance scale (s = 0: no guidance). Returns [b, c, h, w].
    """
    raise NotImplementedError''',
    reference=guided_eps,
    cases=_guided_cases,
    mistakes=[
        Mistake(lambda c, n, s: n + s * (c - n),
                "Off by one in s: with s = 0 your result is the null prediction, but it must be the conditional one. "
                "Is your s diffusers' guidance_scale (which is 1 + s)?"),
        Mistake(lambda c, n, s: c + s * (n - c),
                "The difference points the wrong way: guidance moves away from the null prediction."),
        Mistake(lambda c, n, s: s * (c - n), "The conditional prediction itself is missing: start from it."),
    ],
    hints=["What must the result be at s = 0? Which direction does s push in?"],
))


# -- 06.guided_forward -------------------------------------------------------------------------------------------------

def _forward_cases():
    model = TinyEps(classes=3)
    x = torch.randn(4, 4, 8, 8, generator=_g(35))
    t = torch.tensor([900, 500, 100, 1])
    return [Case((model, x, t, torch.tensor([0, 1, 2, 0]), 3, 3.0), "four items, s = 3"),
            Case((model, x[:1], t[:1], torch.tensor([2]), 3, 1.0), "a batch of one, s = 1")]


def _forward_reference(model, x_t, t, y, null_label, s):
    return Guided(model, {"y": y}, {"y": torch.full_like(y, null_label)}, s)(x_t, t)


def _swapped(model, x_t, t, y, null_label, s):
    both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)]))
    eps_null, eps_cond = both.chunk(2)
    return eps_cond + s * (eps_cond - eps_null)


register(Exercise(
    name="06.guided_forward",
    title="guidance in one forward pass",
    stub='''def guided_forward(model, x_t, t, y, null_label, s):
    """The guided eps with one call of the model on a batch twice as large: x_t twice, with y for the first
    half and the null label for the second, then split the output and combine the halves.

    model(x_t, t, y) -> eps; x_t: [b, c, h, w]; t: int64 [b]; y: int64 [b]; null_label: int; s: float.
    Returns [b, c, h, w].
    """
    raise NotImplementedError''',
    reference=_forward_reference,
    cases=_forward_cases,
    mistakes=[
        Mistake(_swapped, "The halves are swapped: the first half of the output belongs to the first half of the "
                          "input, the one with y."),
        Mistake(lambda model, x_t, t, y, null_label, s: model(x_t, t, y),
                "It is the conditional prediction alone: the null half and s are missing."),
    ],
    hints=["torch.cat([x_t, x_t]) and torch.cat([y, null]) make the batch; out.chunk(2) splits the output."],
    atol=1e-5, rtol=1e-4,
))
