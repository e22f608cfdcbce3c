"""Run-wide settings: fast mode, devices, seeds and where the course keeps its files.

The course runs at two speeds from the same cells (see the README):

- walkthrough (default): sizes chosen so each notebook finishes in a few minutes on a 2-core CPU
  and shows results that look like what the text claims;
- fast (``TINYLDM_FAST=1``, set by the test command and CI): the same cells on tiny sizes, so the
  whole course executes under nbval in minutes. Results are not meant to look good in fast mode.

Model configs live next to their models (``AutoencoderConfig`` in ``autoencoder``,
``ScheduleConfig`` in ``schedule``) as dataclasses with named presets.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TypeVar

import numpy as np
import torch

T_ = TypeVar("T_")

FAST_ENV = "TINYLDM_FAST"
DEBUG_ENV = "TINYLDM_DEBUG"

# The repository root when running from a checkout (notebooks, tests, the CLI); `data/` holds the
# small course checkpoints made by `tinyldm train-autoencoder`, `build/` what the course writes.
REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("TINYLDM_DATA", REPO_ROOT / "data"))
BUILD_DIR = Path(os.environ.get("TINYLDM_BUILD", REPO_ROOT / "build"))


def env_flag(name: str) -> bool:
    """True when the environment variable ``name`` is set to a true value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def fast_mode() -> bool:
    """True when ``TINYLDM_FAST`` is set to a true value (1, true, yes, on)."""
    return env_flag(FAST_ENV)


def check_values(x: torch.Tensor) -> bool:
    """Whether to check the values of ``x`` (labels in range, a mask with a token per row, t in 0..T): always for a
    CPU tensor; for a GPU tensor only with ``TINYLDM_DEBUG=1``, because reading a value back from the GPU makes the
    host wait for every kernel queued before it, and the hot path of training should never wait. Shapes and dtypes are
    checked always (they need no read-back)."""
    if x.device.type in ("cpu", "meta"):
        return x.device.type == "cpu"  # a meta tensor (shapes only) has no values
    return env_flag(DEBUG_ENV)


PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device | str, precision: str = "fp32"):
    """The autocast context of a precision: "bf16" runs matmuls and convolutions in bfloat16 (the weights stay
    float32), "fp32" changes nothing. For training (the Trainer) and sampling (``generate``, ``inpaint``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def pick(walkthrough: T_, fast: T_) -> T_:
    """The walkthrough value, or the fast one in fast mode: ``steps = pick(600, 5)``."""
    return fast if fast_mode() else walkthrough


def mode_banner() -> str:
    """One line for the top of each notebook: which mode, which device, how many threads."""
    mode = "FAST (tiny sizes, for CI)" if fast_mode() else "WALKTHROUGH"
    return f"tinyldm mode: {mode} | device: {default_device()} | torch threads: {torch.get_num_threads()}"


def default_device() -> torch.device:
    """cuda if present, then Apple's mps, else cpu. Override with ``TINYLDM_DEVICE``."""
    if name := os.environ.get("TINYLDM_DEVICE"):
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return a CPU generator seeded the same, for explicit use."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Within the block, torch's global CPU generator starts from ``seed``; afterwards it is as it was.

    For what draws from the global generator and should be repeatable without changing anything outside, such as
    the random initial weights of a network: ``with seeded(0): model = UNet(config)`` gives the same weights on every
    run, whatever ran before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
