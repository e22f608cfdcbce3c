"""Solutions of notebook 02's exercises."""
import torch


def alpha_bar(beta):
    return torch.cumprod(1 - beta, dim=0)


def q_sample(x_0, t, eps, alpha_bar):
    a = alpha_bar[t].view(-1, 1, 1, 1).to(x_0.dtype)
    return a.sqrt() * x_0 + (1 - a).sqrt() * eps


def q_step(x_prev, t, eps, beta):
    b = beta[t].view(-1, 1, 1, 1).to(x_prev.dtype)
    return (1 - b).sqrt() * x_prev + b.sqrt() * eps


def snr(t, alpha_bar):
    return alpha_bar[t] / (1 - alpha_bar[t])
