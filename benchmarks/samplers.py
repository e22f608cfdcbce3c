"""Sample quality vs. number of model evaluations, with the course model.

The course's latent UNet (``tinyldm.pretrained.course_unet()``), autoencoder (``course_autoencoder()``) and judge
(``course_judge()``). Samplers, all from the same initial noise x_T (seed ``--seed``, one generator per batch):

* DDPM, Algorithm 2: 1000 steps, sigma_t^2 = beta_tilde_t (``variance="fixed_small"``) -- the reference;
* DDIM, eta = 0: 10, 20, 50, 100 steps;
* DPM-Solver++(2M): 10, 20, 50 steps.

Each sampler draws ``--n`` latents (default 512), decodes them, and is scored by the FSD (Frechet Scene Distance,
``tinyldm.metrics.fsd``) against ``--n`` real held-out one-object scenes (seed 1; training used seed 0). Floors:
the FSD of a second real set (seed 2) and of that set's autoencoder reconstructions (the best this autoencoder
allows). Seconds per sampler include decoding. A sampler is "within 10%" when its FSD <= 1.1 x DDPM-1000's; the
last line says which samplers with <= 20 evaluations are -- reported, not asserted. FSD has sampling noise of
its own (compare the real-vs-real floor), so differences of a few percent are within noise.

The schedule is read from the UNet file (what it was trained with); DDPM's linear schedule otherwise.

Command and time (2 CPU cores, quiet machine; DDPM-1000 is ~80% of it):

    .venv/bin/python benchmarks/samplers.py                       # about 20 minutes (n = 512)
    .venv/bin/python benchmarks/samplers.py --n 256               # about 10 minutes
    .venv/bin/python benchmarks/samplers.py --quick               # smoke test, under a minute

``--quick`` (n = 32) uses a tiny randomly initialised UNet unless ``--unet PATH`` is given, and says so: it only
exercises the code path. Without ``--quick``, a missing ``data/unet-course.safetensors`` (and autoencoder, judge)
is replaced by the small stand-in that ``tinyldm.pretrained`` trains on the spot, with a note in the output.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import _common as C
from tinyldm import Scenes, UNet, UNetConfig
from tinyldm.checkpoint import CheckpointError, check_partner
from tinyldm.metrics import fsd
from tinyldm.pretrained import COURSE_AUTOENCODER, COURSE_JUDGE, COURSE_UNET, course_autoencoder, course_judge, course_unet
from tinyldm.recipes import held_out_scenes
from tinyldm.sample import DDIM, DDPM, DPMSolverPP2M, sample


def tiny_random_unet(channels: int) -> UNet:
    """A tiny UNet with random weights everywhere (the zero-initialised output layers too, so it is not eps = 0)."""
    torch.manual_seed(0)
    unet = UNet(UNetConfig.tiny(in_channels=channels, out_channels=channels))
    with torch.no_grad():
        for p in unet.parameters():
            if not p.any():
                nn.init.normal_(p, std=0.02)
    return unet.eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=512, help="generated and real images (default %(default)s)")
    parser.add_argument("--batch", type=int, default=256, help="sampling batch (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise, the same for all samplers")
    parser.add_argument("--unet", default=None, help=f"UNet file (default {COURSE_UNET.name} in data/)")
    parser.add_argument("--ddim", default="10,20,50,100", help="DDIM step counts (default %(default)s)")
    parser.add_argument("--dpm", default="10,20,50", help="DPM-Solver++(2M) step counts (default %(default)s)")
    parser.add_argument("--no-ddpm", action="store_true", help="skip DDPM-1000 (then no 10%% column)")
    C.add_common_args(parser)
    args = parser.parse_args()
    if args.quick:
        args.n, args.batch = 32, 32
    device = C.setup(args)
    warnings.filterwarnings("ignore", category=FutureWarning)
    C.banner("samplers: quality vs. model evaluations", device)
    notes = []

    for path, what in ((COURSE_AUTOENCODER, "course autoencoder"), (COURSE_JUDGE, "course judge")):
        if not path.exists():
            notes.append(f"{path} is missing: the {what} is a small stand-in trained just now")
            print("NOTE: " + notes[-1], flush=True)
    ae = course_autoencoder().to(device).eval()
    judge = course_judge()
    channels = ae.config.latent_channels
    latent_shape = tuple(ae.latent_shape((1, 3, 64, 64))[1:])

    unet_path = Path(args.unet) if args.unet else None
    if unet_path is not None:
        unet = UNet.load(unet_path)
    elif args.quick:
        unet = tiny_random_unet(channels)
        notes.append("--quick: a TINY RANDOMLY INITIALISED UNet (UNetConfig.tiny), not the course model: "
                     "the FSDs below only exercise the code path")
    elif COURSE_UNET.exists():
        unet_path, unet = COURSE_UNET, UNet.load(COURSE_UNET)
    else:
        notes.append(f"{COURSE_UNET} is missing: the UNet is the small stand-in tinyldm.pretrained trains on "
                     f"the spot (samples are poor); make the real one with `tinyldm train-diffusion`")
        print("NOTE: " + notes[-1], flush=True)
        unet = course_unet(ae)
    if notes and notes[-1].startswith("--quick"):
        print("NOTE: " + notes[-1], flush=True)
    unet = unet.to(device).eval()
    schedule = unet.schedule  # the schedule the UNet was trained with, from its config
    try:
        check_partner(unet, ae.cpu(), "autoencoder", "autoencoder")
    except CheckpointError as e:
        notes.append(f"{e}: samples decode wrongly")
        print("NOTE: " + notes[-1], flush=True)
    ae = ae.to(device)
    print(f"UNet: {unet_path or 'in memory'}, {C.fmt_count(unet.num_parameters())} params; latents "
          f"{list(latent_shape)}; {schedule!r}", flush=True)

    real = held_out_scenes(64, args.n, max_objects=1)  # seed 1
    scenes2 = Scenes(size=64, length=args.n, seed=2, max_objects=1)
    real2 = torch.stack([scenes2[i]["image"] for i in range(args.n)])
    with torch.no_grad():
        recon = torch.cat([ae.from_latent(ae.to_latent(x.to(device))).cpu() for x in real2.split(args.batch)])
    floor, floor_ae = fsd(judge, real2, real), fsd(judge, recon, real)

    samplers = [] if args.no_ddpm else [("DDPM (fixed_small)", DDPM(schedule, variance="fixed_small"))]
    samplers += [("DDIM (eta 0)", DDIM(schedule, steps=int(k), eta=0.0)) for k in args.ddim.split(",") if k]
    samplers += [("DPM-Solver++(2M)", DPMSolverPP2M(schedule, steps=int(k))) for k in args.dpm.split(",") if k]

    def eps_model(x, t):
        return unet(x, t)

    results = []
    for name, sampler in samplers:
        print(f"{name}, {sampler.num_model_evals} evaluations, {args.n} samples ...", flush=True)
        out = []
        C.sync(device)
        start = time.perf_counter()
        for j, i in enumerate(range(0, args.n, args.batch)):
            b = min(args.batch, args.n - i)
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + j)  # same x_T for every sampler
            with torch.no_grad():
                z = sample(eps_model, sampler, (b, *latent_shape), generator=g, progress=False, device=device)
                out.append(ae.from_latent(z).float().cpu())
        C.sync(device)
        seconds = time.perf_counter() - start
        images = torch.cat(out)
        value = fsd(judge, images, real)
        results.append((name, sampler.num_model_evals, seconds, value))
        print(f"  {seconds:.1f} s, FSD {value:.3f}", flush=True)

    ref = results[0][3] if not args.no_ddpm else None
    print()
    rows = []
    for k, (name, evals, seconds, value) in enumerate(results):
        within = "-" if not ref else "reference" if k == 0 else "yes" if value <= 1.1 * ref else "no"
        rows.append([name, evals, f"{seconds:.1f}", f"{value:.3f}", f"{value / ref:.2f}" if ref else "-", within])
    rows.append(["real scenes (seed 2), the floor", "-", "-", f"{floor:.3f}", f"{floor / ref:.2f}" if ref else "-",
                 "-"])
    rows.append(["autoencoder reconstructions of them", "-", "-", f"{floor_ae:.3f}",
                 f"{floor_ae / ref:.2f}" if ref else "-", "-"])
    print(C.markdown_table(["sampler", "model evaluations", "seconds (incl. decoding)", "FSD",
                            "FSD / DDPM-1000", "within 10% of DDPM-1000"], rows))
    if ref:
        few = [r for r in results[1:] if r[1] <= 20 and r[3] <= 1.1 * ref]
        print(f"\n<= 20 evaluations within 10% of DDPM-1000's FSD {ref:.3f}: "
              + (f"{', '.join(f'{n} {e}' for n, e, _, _ in few)}" if few else "none"))
    print(f"\n{args.n} samples per sampler (seed {args.seed}) vs. {args.n} real held-out scenes (seed 1), "
          f"batch {args.batch}; {C.environment(device)}.")
    C.footer(notes, args.quick)


if __name__ == "__main__":
    main()
