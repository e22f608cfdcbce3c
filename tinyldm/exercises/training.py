"""Exercises of notebooks 03 and 05: the sinusoidal time embedding, Algorithm 1's loss, and the loss with a label y;
how a label enters the network."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..unet import timestep_embedding
from .core import Case, Exercise, Mistake, register
from .noising import SCHEDULE, _col, _g

T = SCHEDULE.T


# -- 03.timestep_embedding ---------------------------------------------------------------------------------------------

def _embedding_cases():
    return [Case((torch.randint(0, T + 1, (5,), generator=_g(20)), 32), "five random t, dim 32"),
            Case((torch.tensor([0]), 16), "t = 0, dim 16"),
            Case((torch.tensor([1, T]), 64), f"t = 1 and T = {T}, dim 64"),
            Case((torch.tensor([2.5]), 8), "a float t = 2.5 (continuous-time samplers), dim 8")]


def _embedding_mistake(order="cos_sin", freq_over="half"):
    def emb(t, dim):
        half = dim // 2
        n = half if freq_over == "half" else dim
        w = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / n)
        args = t.float()[:, None] * w[None]
        parts = [torch.cos(args), torch.sin(args)] if order == "cos_sin" else [torch.sin(args), torch.cos(args)]
        return torch.cat(parts, dim=1)
    return emb


register(Exercise(
    name="03.timestep_embedding",
    title="the sinusoidal time embedding",
    stub='''def timestep_embedding(t, dim):
    """t [b] (int or float) -> [b, dim] float32, dim even: with half = dim // 2 and the frequencies
    w_i = 10000 ** (-i / half) for i = 0 .. half - 1,

        emb[:, i] = cos(t * w_i),   emb[:, half + i] = sin(t * w_i).
    """
    raise NotImplementedError''',
    reference=timestep_embedding,
    cases=_embedding_cases,
    mistakes=[
        Mistake(_embedding_mistake(order="sin_cos"),
                "sin and cos are in each other's place: cos comes first (the first half), sin second."),
        Mistake(_embedding_mistake(freq_over="dim"),
                "The frequencies fall too slowly: the exponent is -i / half, with half = dim // 2."),
    ],
    hints=["Make w as a [half] tensor, then the outer product t[:, None] * w[None] is [b, half].",
           "10000 ** (-i / half) is exp(-log(10000) * i / half)."],
    atol=1e-5,
))


# -- the tiny networks the loss exercises call ------------------------------------------------------------------------

class TinyEps(nn.Module):
    """A small fixed eps_theta(x_t, t[, y]) for the loss exercises: one conv whose output depends on t (and y)."""

    def __init__(self, classes: int | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(21)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        self.classes = classes
        self.table = torch.randn(classes + 1, 4, generator=g) if classes else None

    def forward(self, x_t, t, y=None):
        out = self.conv(x_t) * (1 + t.float().view(-1, 1, 1, 1) / T)
        if self.classes is not None:
            if y is None:
                raise TypeError("this model is class-conditional: call it as model(x_t, t, y)")
            out = out + self.table[y].view(-1, 4, 1, 1)
        return out


def _loss_cases(classes=None):
    model = TinyEps(classes)
    x, e = torch.randn(6, 4, 8, 8, generator=_g(22)), torch.randn(6, 4, 8, 8, generator=_g(23))
    ab = SCHEDULE.alpha_bar
    y = (torch.arange(6) % classes,) if classes else ()
    t_random = torch.randint(1, T + 1, (6,), generator=_g(24))
    cases = [("a batch at random t", t_random), ("t = 1", torch.full((6,), 1)), (f"t = T = {T}", torch.full((6,), T))]
    return [Case((model, x, *y, t, e, ab), where) for where, t in cases]


def _loss(model, x_0, t, eps, ab, y=None, target="eps", model_input="x_t", reduce="mean"):
    x_t = _col(ab, t, x_0).sqrt() * x_0 + (1 - _col(ab, t, x_0)).sqrt() * eps
    inputs = x_t if model_input == "x_t" else x_0
    pred = model(inputs, t) if y is None else model(inputs, t, y)
    goal = {"eps": eps, "x_0": x_0, "x_t": x_t}[target]
    err = (goal - pred) ** 2
    return err.mean() if reduce == "mean" else err.sum()


_LOSS_STUB = '''def algorithm1_loss(eps_model, x_0, t, eps, alpha_bar):
    """Line 5 of Algorithm 1 for a batch, given its t and eps (lines 3 and 4):

        || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2,

    averaged over every number of the batch. eps_model(x_t, t) -> eps_hat; x_0, eps: [b, c, h, w];
    t: int64 [b] in 1..T; alpha_bar: float32 [T + 1], indexed by t. Returns a 0-dim tensor.
    """
    raise NotImplementedError'''

register(Exercise(
    name="03.algorithm1_loss",
    title="line 5 of Algorithm 1",
    stub=_LOSS_STUB,
    reference=lambda model, x_0, t, eps, ab: _loss(model, x_0, t, eps, ab),
    cases=_loss_cases,
    mistakes=[
        Mistake(lambda m, x, t, e, ab: _loss(m, x, t, e, ab, target="x_0"),
                "It matches a loss against x_0: the network predicts the noise, so the target of line 5 is eps."),
        Mistake(lambda m, x, t, e, ab: _loss(m, x, t, e, ab, model_input="x_0"),
                "The network is called on x_0: it must see the noisy x_t that the closed form makes from x_0 and eps."),
        Mistake(lambda m, x, t, e, ab: _loss(m, x, t, e, ab, reduce="sum"),
                "It is a sum: the loss is averaged over every number of the batch."),
        Mistake(lambda m, x, t, e, ab: _loss(m, x, t, e, ab, target="x_t"),
                "It matches a loss against x_t: the target of line 5 is the noise eps that made x_t."),
    ],
    hints=["Two lines: x_t from the closed form (notebook 02), then the mean squared difference between eps and "
           "eps_model(x_t, t).",
           "Reshape alpha_bar[t] to [b, 1, 1, 1] so that each image gets its own t."],
))


# -- 05.class_embedding ------------------------------------------------------------------------------------------------

def _class_cases():
    g = _g(25)
    table = torch.randn(5, 16, generator=g)  # 4 classes + the null label
    emb = torch.randn(6, 16, generator=g)
    return [Case((emb, torch.tensor([0, 1, 2, 3, 1, 0]), table), "six labels"),
            Case((emb[:2], torch.tensor([4, 4]), table), "the null label (4 = num_classes)"),
            Case((emb[:1], torch.tensor([3]), table), "a batch of one")]


register(Exercise(
    name="05.class_embedding",
    title="how a label enters the network",
    stub='''def class_embedding(emb, y, table):
    """The embedding every res block sees when the model is told y: the time embedding plus the label's row
    of the class table (LDM's class-conditional models, notebook 05).

    emb: [b, d], the time embedding of t; y: int64 [b] in 0..num_classes (num_classes = the null label);
    table: [num_classes + 1, d], one row per label, the last one the null label's. Returns [b, d].
    """
    raise NotImplementedError''',
    reference=lambda emb, y, table: emb + table[y],
    cases=_class_cases,
    mistakes=[
        Mistake(lambda emb, y, table: emb * table[y],
                "It multiplies: the label's vector is added to the time embedding, the same way for every t."),
        Mistake(lambda emb, y, table: emb + table[y - 1],
                "Off by one row: label y is row y of the table (row num_classes is the null label)."),
        Mistake(lambda emb, y, table: table[y], "The time embedding is lost: add the label's row to it."),
    ],
    hints=["Indexing the table with y gives one row per item, [b, d]."],
))


# -- 05.conditional_loss -----------------------------------------------------------------------------------------------

register(Exercise(
    name="05.conditional_loss",
    title="Algorithm 1 with a label y",
    stub='''def conditional_loss(eps_model, x_0, y, t, eps, alpha_bar):
    """Algorithm 1's loss for a class-conditional model eps_theta(x_t, t, y):

        || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t, y) ||^2, averaged.

    eps_model(x_t, t, y) -> eps_hat; x_0, eps: [b, c, h, w]; y: int64 [b] class labels;
    t: int64 [b] in 1..T; alpha_bar: float32 [T + 1]. Returns a 0-dim tensor.
    """
    raise NotImplementedError''',
    reference=lambda model, x_0, y, t, eps, ab: _loss(model, x_0, t, eps, ab, y=y),
    cases=lambda: _loss_cases(classes=3),
    mistakes=[
        Mistake(lambda m, x, y, t, e, ab: _loss(m, x, t, e, ab, y=torch.full_like(y, 3)),
                "It matches the model asked for the null label: pass each item's own y."),
        Mistake(lambda m, x, y, t, e, ab: _loss(m, x, t, e, ab, y=y, target="x_0"),
                "It matches a loss against x_0: the network predicts the noise."),
        Mistake(lambda m, x, y, t, e, ab: _loss(m, x, t, e, ab, y=y, reduce="sum"),
                "It is a sum: average over every number of the batch."),
    ],
    hints=["The unconditional loss with one more argument: the model is eps_model(x_t, t, y)."],
))
