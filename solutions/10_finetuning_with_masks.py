"""Solutions of notebook 10's exercises."""
import torch


def masked_image(x, mask):
    return x * (mask < 0.5)


def widen_conv_in(weight, k):
    return torch.cat([weight, torch.zeros(weight.shape[0], k, *weight.shape[2:])], dim=1)


def blend_step(z, z_known, keep, t, alpha_bar, eps):
    a = alpha_bar[t]
    return keep * (a.sqrt() * z_known + (1 - a).sqrt() * eps) + (1 - keep) * z
