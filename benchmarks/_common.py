"""Helpers shared by the benchmark scripts: threads, timing, FLOP counting, markdown tables.

Not a benchmark itself. The scripts import it as ``_common`` (``python benchmarks/NAME.py`` puts
``benchmarks/`` on ``sys.path``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable, Sequence

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch.set_num_threads (default: torch's default on this machine, %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes: exercises the code, not a measurement")


def setup(args: argparse.Namespace) -> torch.device:
    """Set threads, return the device, and with --quick switch tinyldm's stand-ins to fast mode."""
    torch.set_num_threads(args.threads)
    if args.quick:
        # course_autoencoder()/course_judge()/course_unet() train tiny stand-ins in fast mode when
        # their files in data/ are missing; in --quick we only exercise the code path
        os.environ.setdefault("TINYLDM_FAST", "1")
    return torch.device(args.device)


def environment(device: torch.device) -> str:
    """One line naming what the numbers were measured on."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"
    return (f"torch {torch.__version__}, {where}, {torch.get_num_threads()} torch threads, "
            f"python {platform.python_version()}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved_medians(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                        warmup: int = 1) -> dict[str, list[float]]:
    """Time each fn ``repeats`` times, round-robin (a, b, a, b, ...), after ``warmup`` untimed
    calls of each. Returns all the times in seconds per name (take the median)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        # alternate the order so neither side always runs right after the other
        names = list(fns) if r % 2 == 0 else list(reversed(fns))
        for name in names:
            times[name].append(time_once(fns[name], device))
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """'median (min-max)' in ms or s."""
    m, lo, hi = median(values), min(values), max(values)
    if m < 1:
        return f"{m * 1e3:.1f} ms ({lo * 1e3:.1f}-{hi * 1e3:.1f})"
    return f"{m:.2f} s ({lo:.2f}-{hi:.2f})"


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of fn, as torch.utils.flop_counter counts them (matmuls, convolutions,
    attention; a multiply-add is 2 FLOPs; norms and pointwise ops are not counted)."""
    from torch.utils import flop_counter

    # torch counts the CUDA attention kernels but not the CPU one: count it the same way
    def cpu_sdpa(q, k, v, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_flop_count(q, k, v)

    def cpu_sdpa_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_backward_flop_count(grad_out, q, k, v)

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = cpu_sdpa
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = cpu_sdpa_backward
    with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


def fmt_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], REPO_ROOT), *sys.argv[1:]])


def banner(title: str, device: torch.device) -> None:
    print(f"# {title}")
    print(f"command: {command_line()}")
    print(f"environment: {environment(device)}")
    print(flush=True)


def footer(notes: Sequence[str], quick: bool) -> None:
    """The last lines of a benchmark: its NOTEs (stand-in models and the like), and the --quick warning."""
    for note in notes:
        print("NOTE: " + note)
    if quick:
        print("--quick: smoke-test sizes, not a measurement.")
