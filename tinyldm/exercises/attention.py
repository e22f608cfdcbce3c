"""Exercises of notebooks 07 and 08: a cross-attention block over a context [b, L, d] and its padding mask; a
nearest-neighbour search that leaves rows out, and the recall of an approximate one."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..unet import Attention
from .core import Case, Exercise, Mistake, register
from .noising import _g


def _layer() -> Attention:
    torch.manual_seed(50)
    layer = Attention(dim=16, heads=2, context_dim=8)
    return layer.eval()


# -- 07.padding_mask ---------------------------------------------------------------------------------------------------

register(Exercise(
    name="07.padding_mask",
    title="the padding mask of a batch of prompts",
    stub='''def padding_mask(lengths, L):
    """Which tokens of prompts padded to length L are real: True for the first lengths[i] positions of row i.

    lengths: int64 [b], each in 1..L; L: int. Returns bool [b, L].
    """
    raise NotImplementedError''',
    reference=lambda lengths, L: torch.arange(L)[None, :] < lengths[:, None],
    cases=lambda: [Case((torch.tensor([3, 7, 1]), 7), "lengths 3, 7 and 1 of 7"),
                   Case((torch.tensor([77]), 77), "a full prompt of 77 tokens")],
    mistakes=[
        Mistake(lambda lengths, L: torch.arange(L)[None, :] <= lengths[:, None],
                "Off by one: a prompt of length n has tokens at positions 0 .. n - 1."),
        Mistake(lambda lengths, L: torch.arange(L)[None, :] >= lengths[:, None],
                "True marks the padding in yours: here True means a real token (attend to it)."),
    ],
    hints=["A row of positions compared with a column of lengths broadcasts to [b, L]."],
))


# -- 07.cross_attention ------------------------------------------------------------------------------------------------

def _attention_cases():
    layer, g = _layer(), _g(51)
    x, context = torch.randn(2, 6, 16, generator=g), torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    return [Case((layer, x, context, mask), "two items, the first with two padding tokens"),
            Case((layer, x, context, torch.ones(2, 5, dtype=torch.bool)), "no padding"),
            Case((layer, x[:1], context[:1], mask[:1]), "a batch of one")]


def _attend(layer, x, context, mask, scale=None, softmax_dim=-1, use_mask=True, heads=None):
    heads = heads or layer.heads
    q, k, v = (z.unflatten(-1, (heads, -1)).transpose(1, 2)
               for z in (layer.to_q(x), layer.to_k(context), layer.to_v(context)))  # [b, heads, n or L, d]
    scores = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if use_mask:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    out = scores.softmax(dim=softmax_dim) @ v
    return layer.to_out(out.transpose(1, 2).flatten(2))


register(Exercise(
    name="07.cross_attention",
    title="cross-attention to the text's hidden states",
    stub='''def cross_attention(layer, x, context, mask):
    """Multi-head cross-attention, with the weights of ``layer`` (a tinyldm.unet.Attention):
    q = layer.to_q(x), k = layer.to_k(context), v = layer.to_v(context), each split into layer.heads heads
    of width d; per head softmax(q k^T / sqrt(d)) over the tokens that the mask keeps, times v; the heads
    joined again, then layer.to_out.

    x: [b, n, dim], the feature map's n positions; context: [b, L, context_dim]; mask: bool [b, L], True =
    a real token. Returns [b, n, dim].
    """
    raise NotImplementedError''',
    reference=lambda layer, x, context, mask: layer(x, context, mask),
    cases=_attention_cases,
    mistakes=[
        Mistake(lambda layer, x, c, m: _attend(layer, x, c, m, use_mask=False),
                "Padding tokens get weight: set their scores to -inf before the softmax (mask False = padding)."),
        Mistake(lambda layer, x, c, m: _attend(layer, x, c, m, scale=1.0),
                "The scores are not scaled: divide q k^T by sqrt(d), d the width of one head."),
        Mistake(lambda layer, x, c, m: _attend(layer, x, c, m, scale=x.shape[-1] ** -0.5),
                "The scores are divided by the square root of the whole width: d is the width of one head."),
        Mistake(lambda layer, x, c, m: _attend(layer, x, c, m, heads=1),
                "It matches one head over the whole width: split q, k and v into layer.heads heads."),
        Mistake(lambda layer, x, c, m: _attend(layer, x, c, m, softmax_dim=-2),
                "The softmax runs over the positions: each position's weights over the tokens must sum to 1."),
    ],
    hints=["Shapes: q [b, heads, n, d], k and v [b, heads, L, d], scores [b, heads, n, L].",
           "z.unflatten(-1, (heads, -1)).transpose(1, 2) splits the heads; mask[:, None, None, :] broadcasts over "
           "heads and positions."],
    atol=1e-5,
))


# -- 08.top_k_excluding ------------------------------------------------------------------------------------------------

def _search_cases():
    g = _g(52)
    embeddings = F.normalize(torch.randn(40, 8, generator=g), dim=1)
    queries = torch.randn(3, 8, generator=g)
    own = queries.clone()
    own[0] = embeddings[5] * 2  # query 0 is row 5 itself (scaled): it must not find itself
    own[1] = embeddings[-1] + 0.1 * queries[1]  # query 1's nearest row is the last one, which nothing excludes
    exclude = torch.tensor([[5, -1], [-1, -1], [2, 9]])
    return [Case((own, embeddings, 4, exclude), "three queries, the first a row of the database that is excluded, "
                                                "the second near the last row"),
            Case((queries, embeddings, 1, torch.full((3, 1), -1)), "k = 1, nothing excluded"),
            Case((queries[:1], embeddings, 6, torch.tensor([[0, 1, 2]])), "a batch of one, k = 6")]


def _search(q, emb, k, exclude, drop=True, largest=True, minus_one_is_row=False):
    s = F.normalize(q, dim=1) @ emb.T
    if drop:
        for i, rows in enumerate(exclude.tolist()):
            for r in rows:
                if r >= 0 or minus_one_is_row:
                    s[i, r] = float("-inf") if largest else float("inf")
    return s.topk(k, dim=1, largest=largest).indices


register(Exercise(
    name="08.top_k_excluding",
    title="k nearest neighbours, leaving some out",
    stub='''def top_k_excluding(queries, embeddings, k, exclude):
    """The k rows of ``embeddings`` most similar (cosine) to each query, most similar first, never one that
    ``exclude`` names for that query (RDM leaves a training image out of its own neighbours).

    queries: [b, d] (any length); embeddings: [n, d], unit rows; k: int; exclude: int64 [b, m], row
    indices per query, -1 meaning none. Returns int64 [b, k], row indices.
    """
    raise NotImplementedError''',
    reference=lambda q, emb, k, exclude: _search(q, emb, k, exclude),
    cases=_search_cases,
    mistakes=[
        Mistake(lambda q, emb, k, ex: _search(q, emb, k, ex, drop=False), "An excluded row comes back."),
        Mistake(lambda q, emb, k, ex: _search(q, emb, k, ex, minus_one_is_row=True),
                "A -1 in exclude means 'nothing'; as an index it is the last row, which yours leaves out."),
        Mistake(lambda q, emb, k, ex: _search(q, emb, k, ex, largest=False),
                "It returns the least similar rows: nearest means the largest cosine similarity."),
    ],
    hints=["Compute every similarity at once, one matrix product; make the excluded rows impossible to pick before "
           "taking the top k.",
           "What does -1 in exclude mean, and what does it index?"],
))


# -- 08.recall_at_k ----------------------------------------------------------------------------------------------------

register(Exercise(
    name="08.recall_at_k",
    title="how much an approximate search finds",
    stub='''def recall_at_k(found, exact):
    """The recall of an approximate search: for each query, the share of its exact k nearest rows that the
    approximate search found (in any order), averaged over the queries.

    found, exact: int64 [b, k], row indices. Returns a float in [0, 1].
    """
    raise NotImplementedError''',
    reference=lambda found, exact: sum(len(set(f) & set(e)) for f, e in zip(found.tolist(), exact.tolist()))
    / exact.numel(),
    cases=lambda: [Case((torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([[3, 2, 1], [4, 9, 8]])),
                        "two queries, one found in another order"),
                   Case((torch.tensor([[0, 1]]), torch.tensor([[0, 1]])), "everything found")],
    mistakes=[
        Mistake(lambda f, e: (f == e).float().mean().item(),
                "It compares position by position: the order within the k does not matter."),
        Mistake(lambda f, e: float(sum(len(set(a) & set(b)) for a, b in zip(f.tolist(), e.tolist()))),
                "A count: divide by the number of exact neighbours, b * k."),
    ],
    hints=["Python sets: len(set(a) & set(b)) counts the common rows of one query."],
))
