"""How fast the face stand-in renders, against what training on it needs.

For each size (``--sizes``, default 64, 128, 256, 512, 1024): faces per second on one core (``data.Faces`` items,
image, masks, caption and attributes, median of ``--repeats`` passes over ``--n`` items), and the ratio that says
whether data can slow training down: the time to render one training batch against the time of one training step
of the course UNet at that size (batch 64, the latents of 64 px faces at f = 4 and their multiples), measured in the
same run. A ratio under 1 means one core renders a batch faster than the step runs; the training commands render
each face only once anyway (the latents are cached), and a DataLoader with workers renders in parallel.

    .venv/bin/python benchmarks/face_rendering.py            # ~1 min on 2 cores
    .venv/bin/python benchmarks/face_rendering.py --quick    # smoke test
"""

from __future__ import annotations

import argparse

import torch

import _common as C
from tinyldm.data import Faces
from tinyldm.schedule import NoiseSchedule
from tinyldm.train import EpsLoss
from tinyldm.unet import UNet, UNetConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="64,128,256,512,1024")
    parser.add_argument("--n", type=int, default=64, help="faces per timed pass (fewer above 256 px)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    C.add_common_args(parser)
    args = parser.parse_args()
    device = C.setup(args)
    C.banner("face stand-in: rendering speed against a training step", device)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes, args.n, args.repeats = sizes[:2], 4, 1
    unet = UNet(UNetConfig.course(eps_skip=True)).to(device)
    loss = EpsLoss(NoiseSchedule())
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    generator = torch.Generator(device).manual_seed(0)
    rows = []
    for size in sizes:
        n = max(2, args.n * 256 // size) if size > 256 else args.n
        faces = Faces(size=size, length=n, seed=3)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # rendering is numpy on one core: what one DataLoader worker does
        seconds = C.median([C.time_once(lambda: [faces[i] for i in range(n)], device) for _ in range(args.repeats)])
        torch.set_num_threads(threads)
        per_second = n / seconds
        latent = size // 4
        batch = {"latent": torch.randn(args.batch if size <= 128 else 4, 4, latent, latent, device=device)}

        def step():
            opt.zero_grad(set_to_none=True)
            loss(unet, batch, generator)[0].backward()
            opt.step()

        step()  # warm-up
        step_s = C.median([C.time_once(step, device) for _ in range(args.repeats)])
        b = len(batch["latent"])
        rows.append([size, f"{per_second:.1f}", f"{1e3 / per_second:.2f}", b, f"{step_s * 1e3:.0f}",
                     f"{b / per_second / step_s:.2f}"])
    print(C.markdown_table(["size (px)", "faces/s (1 core)", "ms per face", "batch", "UNet step (ms)",
                            "render a batch / one step"], rows))
    C.footer(["the UNet step: the course UNet (1.0M parameters), Algorithm 1's loss, AdamW, on random latents of "
              "the size's shape; batch 4 above 128 px"], args.quick)


if __name__ == "__main__":
    main()
