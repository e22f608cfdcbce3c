"""Solutions of notebook 03's exercises."""
import math

import torch


def timestep_embedding(t, dim):
    half = dim // 2
    w = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * w[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def algorithm1_loss(eps_model, x_0, t, eps, alpha_bar):
    a = alpha_bar[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x_0 + (1 - a).sqrt() * eps
    return ((eps - eps_model(x_t, t)) ** 2).mean()
