"""Solutions of notebook 09's exercises."""
import torch


def relative_change(weights, base):
    moved = torch.cat([(w - b).flatten() for w, b in zip(weights, base)])
    return (moved.norm() / torch.cat([b.flatten() for b in base]).norm()).item()


def new_class_table(table, n):
    return table[-1].expand(n + 1, -1).clone()
