"""Exercises of notebooks 00 and 01: the data's label convention and its pixels; the autoencoder's sample, its KL
term and the latent scale factor."""

from __future__ import annotations

import torch

from ..autoencoder import DiagonalGaussian
from ..data import COLORS, SHAPES, label_of
from ..viz import to_uint8
from .core import Case, Exercise, Mistake, register
from .noising import _g

# -- 00.label_of -------------------------------------------------------------------------------------------------------

_PAIRS = [("circle", "red"), ("circle", "purple"), ("square", "red"), ("triangle", "green"), ("star", "orange"),
          ("star", "purple")]

register(Exercise(
    name="00.label_of",
    title="the class label of a scene",
    stub='''def label_of(shape, color):
    """The class label of a (shape, colour) pair: classes are numbered shape by shape, all colours of the first
    shape, then all colours of the second, ..., in the order of data.SHAPES and data.COLORS.

    shape: a name from data.SHAPES; color: a name from data.COLORS. Returns an int in 0..23.
    """
    raise NotImplementedError''',
    reference=label_of,
    cases=lambda: [Case(pair, f"{pair[1]} {pair[0]}") for pair in _PAIRS],
    mistakes=[
        Mistake(lambda s, c: list(COLORS).index(c) * len(SHAPES) + SHAPES.index(s),
                "Shape and colour are in each other's place: the classes are numbered shape by shape."),
        Mistake(lambda s, c: SHAPES.index(s) * len(COLORS) + list(COLORS).index(c) + 1,
                "Off by one: labels start at 0 (the red circle)."),
        Mistake(lambda s, c: SHAPES.index(s) * len(SHAPES) + list(COLORS).index(c),
                "Each shape has as many classes as there are colours: step by len(data.COLORS)."),
    ],
    hints=["SHAPES is a tuple (SHAPES.index(shape)); COLORS is a dict, list(COLORS).index(color) gives the colour's "
           "position."],
))


# -- 00.to_uint8 -------------------------------------------------------------------------------------------------------

def _uint8_cases():
    x = torch.rand(2, 3, 8, 8, generator=_g(40)) * 2 - 1
    return [Case((x,), "two random images"), Case((torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1),),
                                                  "-1, 0 and 1 in the three channels"),
            Case((x[:1] * 1.5,), "values beyond [-1, 1], as a decoder may give")]


register(Exercise(
    name="00.to_uint8",
    title="from the network's pixels to an image file's",
    stub='''def to_uint8(x):
    """Images as the networks see them, float [b, 3, H, W] in [-1, 1], as an image file stores them:
    uint8 [b, H, W, 3] in 0..255 (channels last; -1 -> 0, 1 -> 255, rounded; values outside [-1, 1]
    clipped first).
    """
    raise NotImplementedError''',
    reference=lambda x: torch.from_numpy(to_uint8(x)),  # the package's, as a tensor
    cases=_uint8_cases,
    mistakes=[
        Mistake(lambda x: (x.clamp(-1, 1) * 255).round().clamp(0, 255).to(torch.uint8).movedim(1, -1),
                "-1 must become 0 and 1 become 255: shift before you scale."),
        Mistake(lambda x: ((x.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).movedim(1, -1),
                "The values are cut, not rounded: round to the nearest integer before the conversion."),
        Mistake(lambda x: ((x + 1) * 127.5).round().to(torch.uint8).movedim(1, -1),
                "Values outside [-1, 1] wrap around in uint8: clip them first."),
    ],
    hints=["Map [-1, 1] linearly onto [0, 255] first; .movedim moves a dimension to another place."],
    atol=0, rtol=0,
))


# -- 01.reparameterize -------------------------------------------------------------------------------------------------

def _moments(seed: int, b: int = 3):
    g = _g(seed)
    return torch.randn(b, 4, 4, 4, generator=g), torch.randn(b, 4, 4, 4, generator=g) - 2, torch.randn(
        b, 4, 4, 4, generator=g)


register(Exercise(
    name="01.reparameterize",
    title="a sample of q(z | x), with gradients",
    stub='''def reparameterize(mean, logvar, eps):
    """z ~ N(mean, exp(logvar)), written so that gradients reach mean and logvar: z = mean + sigma * eps.

    mean, logvar, eps: [b, c, h, w] (eps ~ N(0, I)). Returns z: [b, c, h, w].
    """
    raise NotImplementedError''',
    reference=lambda mean, logvar, eps: mean + torch.exp(0.5 * logvar) * eps,
    cases=lambda: [Case(_moments(41), "three random posteriors"), Case(_moments(42, 1), "a batch of one")],
    mistakes=[
        Mistake(lambda m, lv, e: m + torch.exp(lv) * e,
                "exp(logvar) is the variance: the sample is scaled by the standard deviation, its square root."),
        Mistake(lambda m, lv, e: m + lv * e, "logvar is a logarithm of the variance: undo the log first."),
        Mistake(lambda m, lv, e: m + torch.exp(-0.5 * lv) * e,
                "The sign of the exponent: sigma = exp(+logvar / 2)."),
    ],
    hints=["sigma = exp(logvar / 2)."],
))


# -- 01.kl -------------------------------------------------------------------------------------------------------------

def _kl_reference(mean, logvar):
    return DiagonalGaussian(torch.cat([mean, logvar], dim=1)).kl()


register(Exercise(
    name="01.kl",
    title="the KL term of the autoencoder",
    stub='''def kl(mean, logvar):
    """KL(N(mean, diag(exp(logvar))) || N(0, I)) per image:
    0.5 * sum over c, h, w of (mean^2 + exp(logvar) - 1 - logvar).

    mean, logvar: [b, c, h, w]. Returns [b].
    """
    raise NotImplementedError''',
    reference=_kl_reference,
    cases=lambda: [Case(_moments(43)[:2], "three random posteriors"),
                   Case((torch.zeros(2, 4, 4, 4), torch.zeros(2, 4, 4, 4)), "the prior itself: KL = 0"),
                   Case(_moments(44, 1)[:2], "a batch of one")],
    mistakes=[
        Mistake(lambda m, lv: (m ** 2 + lv.exp() - 1 - lv).sum(dim=(1, 2, 3)), "Twice too large: the factor 0.5."),
        Mistake(lambda m, lv: 0.5 * (m ** 2 + lv.exp() - 1 - lv).mean(dim=(1, 2, 3)),
                "A mean over the latent's numbers: the KL of the whole latent sums them."),
        Mistake(lambda m, lv: 0.5 * (m ** 2 + (0.5 * lv).exp() - 1 - lv).sum(dim=(1, 2, 3)),
                "exp(logvar / 2) is the standard deviation: the formula has the variance."),
    ],
    hints=["Sum over dims (1, 2, 3), keep the batch dimension."],
))


# -- 01.scale_factor ---------------------------------------------------------------------------------------------------

register(Exercise(
    name="01.scale_factor",
    title="the latent scale factor",
    stub='''def scale_factor(z):
    """The number that gives the latents unit standard deviation (Stable Diffusion's 0.18215 was found so):
    1 / the standard deviation of all the numbers in z.

    z: [n, c, h, w], latents (posterior means). Returns a float.
    """
    raise NotImplementedError''',
    reference=lambda z: 1.0 / z.std().item(),
    cases=lambda: [Case((5 * torch.randn(64, 4, 8, 8, generator=_g(45)) + 1,), "latents with std 5 and mean 1"),
                   Case((0.18 * torch.randn(16, 4, 8, 8, generator=_g(46)),), "latents with std 0.18")],
    mistakes=[
        Mistake(lambda z: z.std().item(), "It is the spread itself: the factor divides the latents by it."),
        Mistake(lambda z: 1.0 / z.var().item(), "1 / the variance: scale by the standard deviation."),
        Mistake(lambda z: 1.0 / z.abs().max().item(), "1 / the largest value: use the standard deviation."),
    ],
    hints=["One number for all the latents: measure the spread of all their values together."],
    rtol=1e-4,
))
