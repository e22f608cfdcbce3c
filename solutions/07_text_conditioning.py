"""Solutions of notebook 07's exercises."""
import torch


def padding_mask(lengths, L):
    return torch.arange(L)[None, :] < lengths[:, None]


def cross_attention(layer, x, context, mask):
    heads = layer.heads
    q, k, v = (z.unflatten(-1, (heads, -1)).transpose(1, 2)  # [b, heads, n or L, d]
               for z in (layer.to_q(x), layer.to_k(context), layer.to_v(context)))
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # [b, heads, n, L]
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    out = scores.softmax(dim=-1) @ v  # [b, heads, n, d]
    return layer.to_out(out.transpose(1, 2).flatten(2))
