"""Training on several processes: PyTorch's DistributedDataParallel, started by ``torchrun``.

    torchrun --nproc_per_node 8 -m tinyldm.cli train-diffusion ...      one machine, eight GPUs
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m tinyldm.cli ...

torchrun starts one process per device and tells each its place (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); the
training commands read it from there and need no flag. Processes talk through NCCL on GPUs and gloo on CPUs (what the
tests run: two CPU processes). The Trainer splits every step's batch between the processes so that N processes take
exactly the items, and the random numbers, that one process takes (see :class:`tinyldm.train.Trainer`); DDP averages
the gradients, so every process holds the same weights after each step. Only process 0 ("main") writes files,
draws progress bars and runs callbacks.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist

__all__ = ["rank", "world_size", "local_rank", "is_distributed", "is_main", "setup", "barrier", "main_first",
           "all_reduce_mean"]


def rank() -> int:
    """This process's number among all (0 without torchrun)."""
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    """How many processes train together (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    """This process's number on its machine: which GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """Process 0, the one that writes files and prints."""
    return rank() == 0


def setup(device: str | torch.device | None = None) -> torch.device:
    """Join the process group started by torchrun (once; NCCL for CUDA devices, gloo otherwise) and return this
    process's device: ``cuda:LOCAL_RANK`` for a CUDA device, else ``device`` as given. Without torchrun, nothing to do."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and is_distributed():
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if is_distributed() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device is not None and device.type == "cuda" else "gloo")
    return device


def barrier() -> None:
    if is_distributed() and dist.is_initialized():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on process 0 first and on the others after it: for work that writes a cache (encoding latents,
    building a retrieval database) which the other processes then find done."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over all processes (``x`` itself in one process)."""
    if is_distributed() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= world_size()
    return x
