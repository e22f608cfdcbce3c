"""Helpers shared by the test modules (pytest puts tests/ on the import path)."""
import torch


def perturbed(model, seed: int = 0, scale: float = 0.1):
    """Move every weight off its init: the zero-initialised layers otherwise hide how the output depends on inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model
