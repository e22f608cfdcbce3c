"""Stable Diffusion v1's UNet in training: activation memory with and without gradient checkpointing.

One training step (Algorithm 1's loss, forward and backward; no optimizer) of tinyldm's ``UNetConfig.sd_v1()`` UNet
(859.5M parameters, random weights: memory and time do not depend on the values) on latents of ``--size`` px images
(f = 8: 512 px -> [b, 4, 64, 64]) with a [b, 77, 768] context, each variant in its own process. Reported: the peak
resident memory of the process minus its resident memory with the weights and their gradients allocated (so: what the
activations of one step need), and the step time. The ratio checkpointed / plain is what ``--grad-checkpointing``
buys; on a GPU the activations take the same bytes in float32 (half under bf16 autocast), plus the optimizer's state
(2 x 3.4 GB for AdamW).

    .venv/bin/python benchmarks/sd_memory.py --size 256     # ~2 min on 2 cores, ~12 GB of memory
    .venv/bin/python benchmarks/sd_memory.py --quick        # the tiny UNet, seconds
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(size: int, batch: int, checkpointing: bool, quick: bool) -> dict:
    import torch

    from tinyldm.schedule import NoiseSchedule
    from tinyldm.train import EpsLoss
    from tinyldm.unet import UNet, UNetConfig

    torch.manual_seed(0)
    cfg = UNetConfig.tiny(context_dim=768) if quick else UNetConfig.sd_v1()
    unet = UNet(cfg).train()
    unet.gradient_checkpointing = checkpointing
    for p in unet.parameters():
        p.grad = torch.zeros_like(p)  # the gradients' memory, allocated up front: the baseline holds it
    latent = size // 8
    batch_ = {"latent": torch.randn(batch, 4, latent, latent)}
    context = torch.randn(batch, 77, 768)
    loss = EpsLoss(NoiseSchedule(), condition=lambda b, g: {"context": context})
    generator = torch.Generator().manual_seed(0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    loss(unet, batch_, generator)[0].backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"activations_gb": (peak - base) / 2**20, "step_s": seconds,
            "parameters_m": sum(p.numel() for p in unet.parameters()) / 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256, help="image side in px (latents: size / 8)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.size, args.batch, args.child == "on", args.quick)))
        return
    print(f"# SD v1 UNet, one training step at {args.size} px (latents {args.size // 8}x{args.size // 8}), "
          f"batch {args.batch}, CPU float32")
    print(f"command: python {' '.join(sys.argv)}\n")
    results = {}
    for mode in ("off", "on"):
        cmd = [sys.executable, __file__, "--size", str(args.size), "--batch", str(args.batch), "--child", mode]
        out = subprocess.run(cmd + (["--quick"] if args.quick else []), check=True, capture_output=True, text=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print("| gradient checkpointing | activation memory | step time (forward + backward) |")
    print("|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {r['activations_gb']:.2f} GB | {r['step_s']:.1f} s |")
    off, on = results["off"], results["on"]
    print(f"\ncheckpointed / plain: memory {on['activations_gb'] / max(off['activations_gb'], 1e-9):.2f}x, "
          f"time {on['step_s'] / off['step_s']:.2f}x ({off['parameters_m']:.1f}M parameters)")
    if args.quick:
        print("--quick: the tiny UNet, not a measurement.")


if __name__ == "__main__":
    main()
