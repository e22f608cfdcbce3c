"""Latent vs. pixel space: the seed paper's reason for latents, measured on the course's scenes.

One UNet family (tinyldm ``UNet``, the course preset's widths 16/32/64, one res block per level, attention at 8x8
and 4x4), one data set (``tinyldm.data.Scenes``, 64 px, one object, seed 0), three spaces:

* ``pixel``: the UNet on images ``[b, 3, 64, 64]`` directly. 64 px needs more levels than 16x16 latents to reach
  the same bottom: ``--pixel-mult 1,1,1,2,4`` (default) runs widths 16/16/16/32/64 at 64, 32, 16, 8, 4 px, i.e.
  the latent model's three levels (16x16 at width 16, 8x8 at 32, 4x4 at 64) with two more width-16 levels on
  top; attention at 8x8 and 4x4 as in the latent model. The lowest level is 4x4.
* ``f4``: latents ``[b, 4, 16, 16]`` of the course autoencoder (``tinyldm.pretrained.course_autoencoder()``),
  ``UNetConfig.course()``: 16x16, 8x8, 4x4.
* ``f8``: latents ``[b, 4, 8, 8]`` of an f = 8 autoencoder (``AutoencoderConfig.course_f8()``), the same
  ``UNetConfig.course()``: 8x8, 4x4, 2x2. The autoencoder is trained here for ``--f8-ae-minutes`` with the course
  autoencoder's recipe (``tinyldm.recipes.train_autoencoder(preset="course_f8")``: 32 px crops of 64 px
  scenes, batch 32, lr 1e-3; ``--f8-crop 0`` for whole images; the step count comes from timing a few steps
  first) unless ``--f8-autoencoder PATH`` is given; it is saved to
  ``build/benchmarks/autoencoder-course_f8.safetensors`` for reuse. Its PSNR is reported: after a few minutes it
  is worse than the course f = 4 model (4400 steps), which caps the f = 8 row's quality. For an equal-effort
  f = 8 autoencoder make it with the f = 4 model's command and pass it in (see benchmarks/README.md).

Measured for each, in one process:

1. training step time at batch 64 (one ``Trainer`` step: EpsLoss forward/backward, AdamW, EMA), the three
   interleaved, median of ``--repeats``;
2. quality after EQUAL WALL-CLOCK training: a fresh model trained with ``Trainer`` + ``EpsLoss`` (lr 1e-3,
   ``--warmup-steps``, EMA 0.999, batch 64) for ``--minutes`` each, then ``--n-samples`` images from its EMA
   weights with DDIM (50 steps, eta 0) and decoded, scored by the FSD against ``--n-samples`` real held-out
   scenes (seed 1) in the course judge's feature space (``tinyldm.metrics.fsd``). Also the share of samples the
   judge reads confidently (max probability >= 0.9 for shape, colour and size; real scenes give the reference).
   Floors: FSD of a second real set (seed 2), and of that set's autoencoder reconstructions (the best a latent
   model with that autoencoder can do);
3. sampling time at batch 64: DDIM 50 steps including decoding, median over the batches of step 2.

Ratios pixel / latent for step and sampling time, and whether latent training is at least 8x faster per step at
equal or better FSD (the case for latent diffusion). Only reported, never asserted. Training images are rendered and encoded once before any clock
starts (the latents are cached in the course too), so data loading costs the same for every space.

Command and time (2 CPU cores, quiet machine):

    .venv/bin/python benchmarks/latent_vs_pixel.py              # about 20-25 minutes: 5 min f8 autoencoder,
                                                                # 3 x 4 min training, ~4 min data, timing, sampling
    .venv/bin/python benchmarks/latent_vs_pixel.py --quick      # smoke test, about 1 minute
    .venv/bin/python benchmarks/latent_vs_pixel.py --f8-autoencoder build/benchmarks/autoencoder-course_f8.safetensors
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch.utils.data import Dataset

import _common as C
from tinyldm import Autoencoder, AutoencoderConfig, Scenes, UNet, UNetConfig, autoencoder_loss
from tinyldm.autoencoder import reconstruction_psnr
from tinyldm.config import BUILD_DIR
from tinyldm.metrics import fsd
from tinyldm.pretrained import COURSE_AUTOENCODER, COURSE_JUDGE, course_autoencoder, course_judge
from tinyldm.recipes import held_out_scenes, train_autoencoder
from tinyldm.sample import DDIM, sample
from tinyldm.schedule import NoiseSchedule, ScheduleConfig
from tinyldm.train import EpsLoss, TrainConfig, Trainer

F8_OUT = BUILD_DIR / "benchmarks" / "autoencoder-course_f8.safetensors"


class Tensors(Dataset):
    """Item i: {"x": x[i]} (images or cached latents)."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i]}


def render(n: int, seed: int) -> torch.Tensor:
    scenes = Scenes(size=64, length=n, seed=seed, max_objects=1)
    return torch.stack([scenes[i]["image"] for i in range(n)])


@torch.no_grad()
def encode(ae: Autoencoder, images: torch.Tensor, device, batch: int = 256) -> torch.Tensor:
    ae = ae.to(device).eval()
    return torch.cat([ae.to_latent(x.to(device)).cpu() for x in images.split(batch)])


@torch.no_grad()
def reconstruct(ae: Autoencoder, images: torch.Tensor, device, batch: int = 256) -> torch.Tensor:
    ae = ae.to(device).eval()
    return torch.cat([ae.from_latent(ae.to_latent(x.to(device))).cpu() for x in images.split(batch)])


def f8_autoencoder(args, device) -> tuple[Autoencoder, str]:
    """Load --f8-autoencoder, or train one for --f8-ae-minutes with train_autoencoder (a step count
    calibrated by timing a few steps first). Returns (the model, where it came from)."""
    if args.f8_autoencoder:
        return Autoencoder.load(args.f8_autoencoder), f"loaded {args.f8_autoencoder}"
    batch = 32
    # calibrate: a few training steps of a throwaway model, rendering included as in train_autoencoder
    torch.manual_seed(0)
    probe = Autoencoder(AutoencoderConfig.course_f8()).to(device)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-3)
    scenes = Scenes(size=64, length=10_000, seed=0, max_objects=2)
    crop = args.f8_crop or 64

    def step(k=[0]):
        x = torch.stack([scenes[(k[0] * batch + j) % len(scenes)]["image"][:, :crop, :crop]
                         for j in range(batch)]).to(device)
        k[0] += 1
        opt.zero_grad(set_to_none=True)
        autoencoder_loss(probe, x)[0].backward()
        opt.step()

    t_step = C.median(C.interleaved_medians({"ae": step}, device, repeats=3, warmup=1)["ae"])
    steps = max(2, int(args.f8_ae_minutes * 60 / (t_step * 1.05)))  # 5% for the EMA and the loader
    print(f"training the f = 8 autoencoder (course_f8, {crop} px crops of 64 px scenes, batch {batch}): "
          f"{t_step * 1e3:.0f} ms/step -> {steps} steps for {args.f8_ae_minutes} min", flush=True)
    tc = TrainConfig(steps=steps, batch_size=batch, lr=1e-3, warmup_steps=min(100, max(1, steps // 10)),
                     ema_decay=0.999, progress=False)
    start = time.perf_counter()
    ae, value = train_autoencoder(preset="course_f8", size=64, crop=args.f8_crop or None, train_config=tc,
                                  run_dir=None, device=device, n_eval=args.n_samples)
    out = F8_OUT.with_name(F8_OUT.stem + "-quick.safetensors") if args.quick else F8_OUT  # keep a real one
    out.parent.mkdir(parents=True, exist_ok=True)
    ae.save(out, psnr=round(value, 3), steps=steps, image_size=64, crop=args.f8_crop or None,
            command=C.command_line())
    return ae, (f"trained here: {steps} steps in {(time.perf_counter() - start) / 60:.1f} min, "
                f"saved to {out}")


def pixel_config(mult: tuple[int, ...]) -> UNetConfig:
    """The course preset on 64 px images: attention at the levels that run at 8x8 or below."""
    attn = tuple(level for level in range(len(mult)) if 64 // 2 ** level <= 8)
    return UNetConfig.course(in_channels=3, out_channels=3, channel_mult=mult, attention_levels=attn)


def readable_share(judge, images: torch.Tensor, threshold: float = 0.9) -> float:
    """Share of images whose shape, colour and size the judge reads with max probability >= threshold."""
    with torch.no_grad():
        judge.eval()
        ok = torch.ones(len(images), dtype=torch.bool)
        logits = [judge(x) for x in images.split(256)]
        for name in logits[0]:
            p = torch.cat([lg[name] for lg in logits]).softmax(1).amax(1)
            ok &= p >= threshold
    return ok.float().mean().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0, help="training wall-clock per space (default 4)")
    parser.add_argument("--f8-ae-minutes", type=float, default=5.0,
                        help="training wall-clock of the f = 8 autoencoder when --f8-autoencoder is not given")
    parser.add_argument("--f8-autoencoder", default=None, help="an f = 8 autoencoder file to use instead")
    parser.add_argument("--f8-crop", type=int, default=32,
                        help="crop side for training the f = 8 autoencoder (default 32 as the course's; 0: whole)")
    parser.add_argument("--spaces", default="pixel,f4,f8", help="comma-separated subset of pixel,f4,f8")
    parser.add_argument("--pixel-mult", default="1,1,1,2,4",
                        help="channel_mult of the pixel UNet (default 1,1,1,2,4: lowest level 4x4)")
    parser.add_argument("--n-train", type=int, default=5_000, help="training scenes, rendered once (seed 0)")
    parser.add_argument("--n-samples", type=int, default=256, help="generated and real images for the FSD")
    parser.add_argument("--batch", type=int, default=64, help="training and sampling batch (default 64)")
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps (default 50)")
    parser.add_argument("--warmup-steps", type=int, default=20, help="lr warm-up steps of the diffusion training")
    parser.add_argument("--repeats", type=int, default=5, help="timed training steps per space (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    C.add_common_args(parser)
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.f8_ae_minutes = min(args.minutes, 0.1), min(args.f8_ae_minutes, 0.1)
        args.n_train, args.n_samples, args.batch = 256, 16, 8
        args.sample_steps, args.repeats, args.warmup = 5, 2, 1
    device = C.setup(args)
    warnings.filterwarnings("ignore", category=FutureWarning)
    C.banner("latent vs. pixel space", device)
    spaces = args.spaces.split(",")
    notes = []

    # -- models that are not trained here --------------------------------------------------------
    for path, what in ((COURSE_AUTOENCODER, "course autoencoder"), (COURSE_JUDGE, "course judge")):
        if not path.exists():
            notes.append(f"{path.relative_to(C.REPO_ROOT) if path.is_relative_to(C.REPO_ROOT) else path} is "
                         f"missing: the {what} is a small stand-in trained just now (numbers not meaningful)")
            print("NOTE: " + notes[-1], flush=True)
    judge = course_judge()
    aes: dict[str, Autoencoder] = {}
    if "f4" in spaces:
        aes["f4"] = course_autoencoder().to(device).eval()
    if "f8" in spaces:
        aes["f8"], where = f8_autoencoder(args, device)
        aes["f8"] = aes["f8"].to(device).eval()
        notes.append(f"f = 8 autoencoder: {where}")

    # -- data, before any clock ------------------------------------------------------------------
    print(f"rendering {args.n_train} training scenes and 2 x {args.n_samples} real ones ...", flush=True)
    images = render(args.n_train, seed=0)
    real = held_out_scenes(64, args.n_samples, max_objects=1)  # seed 1: the FSD reference
    real2 = render(args.n_samples, seed=2)  # a second real set: the floor of the FSD
    data = {"pixel": images} if "pixel" in spaces else {}
    psnr = {}
    for name, ae in aes.items():
        data[name] = encode(ae, images, device)
        psnr[name] = reconstruction_psnr(ae, held_out_scenes(64, args.n_samples, max_objects=2).to(device))
    del images

    schedule = NoiseSchedule(ScheduleConfig.ddpm())
    mult = tuple(int(m) for m in args.pixel_mult.split(","))
    configs = {"pixel": pixel_config(mult), "f4": UNetConfig.course(), "f8": UNetConfig.course()}
    configs = {k: v for k, v in configs.items() if k in spaces}

    def new_trainer(name):
        torch.manual_seed(0)
        tc = TrainConfig(batch_size=args.batch, lr=1e-3, warmup_steps=args.warmup_steps, ema_decay=0.999,
                         progress=False, seed=0)
        return Trainer(UNet(configs[name]), EpsLoss(schedule, x_key="x"), Tensors(data[name]), tc, device=device)

    # -- 1. training step time, interleaved ------------------------------------------------------
    print(f"timing training steps (batch {args.batch}, {args.warmup} warm-up + {args.repeats} repeats) ...",
          flush=True)
    info = {}
    for name, cfg in configs.items():
        x = data[name][: args.batch].to(device)
        m = UNet(cfg).to(device).eval()
        t = torch.full((len(x),), 500, device=device)
        info[name] = {"shape": list(data[name].shape[1:]), "params": m.num_parameters(),
                      "fwd_flops": C.count_flops(lambda: m(x, t)),
                      "levels": " / ".join(f"{cfg.width(i)}@{x.shape[-1] // 2 ** i}"
                                           for i in range(len(cfg.channel_mult)))}
    timing_trainers = {name: new_trainer(name) for name in configs}
    step_times = C.interleaved_medians({n: (lambda tr=tr: tr.fit(steps=1)) for n, tr in timing_trainers.items()},
                                       device, args.repeats, args.warmup)
    del timing_trainers
    for name in configs:
        info[name]["step"] = C.median(step_times[name])
        print(f"  {name:5s} {info[name]['shape']} UNet {info[name]['levels']}: "
              f"{C.fmt_count(info[name]['params'])} params, {C.fmt_count(info[name]['fwd_flops'])}FLOP/forward, "
              f"step {C.spread(step_times[name])}", flush=True)

    # -- 2./3. equal wall-clock training, then sampling and FSD ----------------------------------
    for name in configs:
        trainer = new_trainer(name)
        budget = args.minutes * 60
        print(f"training {name} for {args.minutes} min ...", flush=True)
        start = time.perf_counter()
        while time.perf_counter() - start < budget:
            trainer.fit(steps=1)
        info[name]["train_s"] = time.perf_counter() - start
        info[name]["steps"] = trainer.step
        last = trainer.history[-20:]
        info[name]["loss"] = sum(h["loss"] for h in last) / len(last)
        model = trainer.ema.eval()
        ae = aes.get(name)
        out, batch_times = [], []
        for i in range(0, args.n_samples, args.batch):
            b = min(args.batch, args.n_samples - i)
            g = torch.Generator().manual_seed(1000 + i)
            sampler = DDIM(schedule, steps=args.sample_steps, eta=0.0)

            def run():
                x = sample(lambda x, t: model(x, t), sampler, (b, *data[name].shape[1:]), generator=g,
                           progress=False, device=device)
                return ae.from_latent(x) if ae is not None else x.clamp(-1, 1)

            C.sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                imgs = run()
            C.sync(device)
            if b == args.batch:
                batch_times.append(time.perf_counter() - t0)
            out.append(imgs.float().cpu())
        samples = torch.cat(out)
        info[name]["sample"] = C.median(batch_times) if batch_times else float("nan")
        info[name]["fsd"] = fsd(judge, samples, real)
        info[name]["readable"] = readable_share(judge, samples)
        print(f"  {name}: {trainer.step} steps, loss {info[name]['loss']:.4f}, sampling "
              f"{info[name]['sample']:.2f} s per batch of {args.batch}, FSD {info[name]['fsd']:.2f}", flush=True)
        del trainer, model

    floor = fsd(judge, real2, real)
    floors = {name: fsd(judge, reconstruct(ae, real2, device), real) for name, ae in aes.items()}

    # -- tables ------------------------------------------------------------------------------------
    print()
    rows = []
    for name in configs:
        r = info[name]
        rows.append([name, "x".join(map(str, r["shape"])), r["levels"], C.fmt_count(r["params"]),
                     f"{r['fwd_flops'] / 1e9:.2f}", f"{r['step'] * 1e3:.0f}",
                     f"{r['sample']:.2f}", r["steps"], f"{r['loss']:.4f}",
                     f"{psnr[name]:.2f}" if name in psnr else "-",
                     f"{floors[name]:.2f}" if name in floors else "-",
                     f"{r['fsd']:.2f}", f"{r['readable']:.0%}"])
    print(C.markdown_table(
        ["space", "x_0", "UNet width@res", "params", f"GFLOP/forward (b={args.batch})", "train step ms",
         f"sampling s (DDIM {args.sample_steps}, b={args.batch}, +decode)", f"steps in {args.minutes} min",
         "final loss", "AE PSNR dB", "FSD of AE reconstructions", "FSD", "read confidently"], rows))
    print(f"\nFSD floor (real seed 2 vs. real seed 1, {args.n_samples} each): {floor:.2f}; "
          f"real scenes read confidently: {readable_share(judge, real):.0%}")
    if "pixel" in configs:
        print()
        rows = []
        for name in configs:
            if name == "pixel":
                continue
            p, r = info["pixel"], info[name]
            rows.append([f"pixel / {name}", f"{p['step'] / r['step']:.1f}x", f"{p['sample'] / r['sample']:.1f}x",
                         f"{p['fsd']:.2f} vs. {r['fsd']:.2f}",
                         "yes" if p["step"] / r["step"] >= 8 and p["sample"] / r["sample"] >= 8
                         and r["fsd"] <= p["fsd"] else "no"])
        print(C.markdown_table(["ratio", "train step time", "sampling time", "FSD (pixel vs. latent)",
                                "latent >= 8x faster, FSD <= pixel's"], rows))
    print(f"\n{C.environment(device)}; pixel channel_mult {mult} (lowest level "
          f"{64 // 2 ** (len(mult) - 1)}x{64 // 2 ** (len(mult) - 1)}); equal wall-clock {args.minutes} min "
          f"per space; {args.n_samples} samples, DDIM {args.sample_steps} steps.")
    C.footer(notes, args.quick)


if __name__ == "__main__":
    main()
