"""One GPU check, in a few minutes: does the CUDA path work, and how fast is it against diffusers.

Sections, in this order, each under the time budget (a section that would not fit is reported as skipped):

1. CUDA tests: the tests that need a GPU (`pytest -k cuda`).
2. Course training in bf16: the course's class-conditional UNet, `train_diffusion` with `--precision bf16` at a GPU
   batch: steps per second and images per second.
3. Course-sized UNet throughput: a training step (forward, MSE, backward, fused AdamW) of tinyldm's course UNet with
   cross-attention against diffusers' UNet2DConditionModel of the same shape, bf16 autocast, eager and compiled:
   images per second.
4. Stable Diffusion v1's UNet training throughput at 256 and 512 px (latents 32x32 and 64x64, context [b, 77, 768]):
   tinyldm's UNet(UNetConfig.sd_v1()) against diffusers' UNet2DConditionModel of SD v1's config, bf16 autocast, eager
   and compiled: images per second and model FLOP utilisation (FLOPs counted by torch's FlopCounterMode on the eager
   step, against the chip's dense bf16 peak).
5. 50-step guided sampling at 512 px (DDIM, s = 6.5, SD v1's UNet and autoencoder with random weights): tinyldm's
   `generate` against the same loop on diffusers' UNet2DConditionModel, DDIMScheduler and AutoencoderKL: seconds per
   image, decoding included.

Every row records the peak GPU memory of its section. The table goes to stdout and to ``--out`` (markdown).

    python benchmarks/gpu_check.py --device cuda                 # on one H100 / H200: about 4 minutes
    python benchmarks/gpu_check.py --tiny                        # the same code at tiny sizes on the CPU (a test)
    make gpu-check                                               # the first line, writing build/gpu_check.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import _common as C
from tinyldm import UNet, UNetConfig
from tinyldm.autoencoder import Autoencoder, AutoencoderConfig
from tinyldm.config import autocast
from tinyldm.conditioning import Guided
from tinyldm.pipeline import generate
from tinyldm.sample import DDIM

# dense bf16 peak of the chips this is meant for (tensor cores, without sparsity), in FLOP/s
PEAK_BF16 = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100": 989e12,
             "A100": 312e12, "L40S": 362e12, "RTX 4090": 165e12}


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


class Budget:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def reset_memory(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else "n/a"


# -- the models --------------------------------------------------------------------------------------------------------

def sd_config(tiny: bool) -> UNetConfig:
    if tiny:
        return UNetConfig.sd_v1(base_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(0,),
                                num_heads=2, context_dim=32, norm_groups=8)
    return UNetConfig.sd_v1()


def diffusers_unet(cfg: UNetConfig):
    from diffusers import UNet2DConditionModel

    from tinyldm.convert import _diffusers_unet_config  # the config that computes what tinyldm's UNet of cfg does

    config = {k: v for k, v in _diffusers_unet_config(cfg).items() if not k.startswith("_")}
    return UNet2DConditionModel(**config)


def course_config() -> UNetConfig:
    return UNetConfig.course(context_dim=64)


# -- measurements ------------------------------------------------------------------------------------------------------

def train_step_fn(model, diffusers: bool, batch: int, latent, context, device, compile_: bool):
    """A closure doing one bf16 training step on random inputs (fused AdamW on CUDA); the eager model, for FLOPs."""
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    net = torch.compile(model) if compile_ else model
    x = torch.randn(batch, *latent, device=device)
    t = torch.randint(1, 1000, (batch,), device=device)
    ctx = torch.randn(batch, *context, device=device)
    target = torch.randn_like(x)

    def forward(m):
        with autocast(device, "bf16"):
            out = m(x, t - 1, encoder_hidden_states=ctx).sample if diffusers else m(x, t, context=ctx)
        return F.mse_loss(out.float(), target)

    def step():
        forward(net).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, lambda: forward(model).backward()


def images_per_second(step, batch, device, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    return batch * steps / C.time_once(lambda: [step() for _ in range(steps)], device)


def throughput_rows(name, cfg, batch, latent, context, device, args, budget, peak) -> list[list]:
    rows = []
    for library in ("tinyldm", "diffusers"):
        for compiled in (False, True):
            label = f"{name}: {library}, {'compiled' if compiled else 'eager'}, batch {batch}"
            if compiled and (args.no_compile or budget.left() < args.compile_budget):
                rows.append([label, "skipped (no time left to compile)" if not args.no_compile else "skipped", "",
                             ""])
                continue
            reset_memory(device)
            try:
                torch.manual_seed(0)
                model = diffusers_unet(cfg) if library == "diffusers" else UNet(cfg)
                step, eager_step = train_step_fn(model, library == "diffusers", batch, latent, context, device,
                                                 compiled)
                ips = images_per_second(step, batch, device, args.steps, args.warmup + (2 if compiled else 0))
                flops = C.count_flops(eager_step) / batch
                mfu = f"{ips * flops / peak:.1%}" if peak else "n/a"
                rows.append([label, f"{ips:,.1f} images/s", f"MFU {mfu} ({C.fmt_count(flops)}FLOP per image)",
                             peak_memory(device)])
            except Exception as e:  # noqa: BLE001 - one failing row must not hide the others
                rows.append([label, f"FAILED: {type(e).__name__}: {str(e)[:120]}", "", peak_memory(device)])
            del model
    return rows


@torch.no_grad()
def sampling_rows(cfg, ae_cfg, size, n, device, args) -> list[list]:
    """50-step guided sampling of n images at ``size`` px: tinyldm's generate against diffusers' components."""
    from diffusers import AutoencoderKL, DDIMScheduler

    from tinyldm.convert import _diffusers_vae_config

    steps, s = args.sample_steps, 6.5
    latent = (4, size // 8, size // 8) if not args.tiny else (4, size // 2, size // 2)
    ctx = torch.randn(n, 77, cfg.context_dim, device=device)
    null = torch.randn(n, 77, cfg.context_dim, device=device)
    rows = []
    torch.manual_seed(0)
    unet = UNet(cfg).to(device, torch.bfloat16).eval()
    ae = Autoencoder(ae_cfg).to(device, torch.bfloat16).eval()
    reset_memory(device)

    def ours():
        generate(unet, ae, {"context": ctx}, {"context": null}, s=s, sampler=DDIM(unet.schedule, steps),
                 latent_shape=latent, device=device, batch_size=n, precision="bf16", allow_other_autoencoder=True)

    seconds = C.median([C.time_once(ours, device) for _ in range(args.sample_repeats)])
    rows.append([f"sampling {size} px: tinyldm generate, {steps} DDIM steps, s = {s}",
                 f"{seconds / n:.3f} s per image", f"{n} images per batch", peak_memory(device)])
    del unet, ae
    theirs_unet = diffusers_unet(cfg).to(device, torch.bfloat16).eval()
    vae_config = {k: v for k, v in _diffusers_vae_config(ae_cfg, 0.18215).items() if not k.startswith("_")}
    vae = AutoencoderKL(**vae_config).to(device, torch.bfloat16).eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=True, timestep_spacing="trailing")
    reset_memory(device)

    def diffusers_loop():
        scheduler.set_timesteps(steps, device=device)
        x = torch.randn(n, *latent, device=device, dtype=torch.bfloat16)
        both = torch.cat([null, ctx]).to(torch.bfloat16)
        for t in scheduler.timesteps:
            eps_null, eps_cond = theirs_unet(torch.cat([x, x]), t, encoder_hidden_states=both).sample.chunk(2)
            x = scheduler.step(eps_null + (1 + s) * (eps_cond - eps_null), t, x).prev_sample
        vae.decode(x / 0.18215).sample.float().cpu()

    seconds = C.median([C.time_once(diffusers_loop, device) for _ in range(args.sample_repeats)])
    rows.append([f"sampling {size} px: diffusers UNet2DConditionModel + DDIMScheduler + AutoencoderKL, same loop",
                 f"{seconds / n:.3f} s per image", f"{n} images per batch", peak_memory(device)])
    return rows


def cuda_tests(device) -> list[list]:
    if device.type != "cuda":
        return [["CUDA tests", "skipped (no CUDA device)", "", ""]]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-k", "cuda", "tests"], cwd=C.REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    return [["CUDA tests (pytest -k cuda)", "passed" if done.returncode == 0 else "FAILED", last, ""]]


def course_training(device, args) -> list[list]:
    from tinyldm.pretrained import course_autoencoder
    from tinyldm.recipes import train_diffusion
    from tinyldm.train import TrainConfig

    reset_memory(device)
    steps, batch = (3, 8) if args.tiny else (args.course_steps, 256)
    tc = TrainConfig(steps=steps, batch_size=batch, lr=1e-3, warmup_steps=1, precision="bf16", log_every=25,
                     progress=False)
    start = time.perf_counter()
    _, trainer = train_diffusion(course_autoencoder(), condition="class", n_images=64 if args.tiny else 20_000,
                                 train_config=tc, device=device, resume=False)
    seconds = time.perf_counter() - start
    return [[f"course class UNet, train_diffusion bf16, batch {batch}, {steps} steps (encoding included)",
             f"{steps / seconds:.1f} steps/s, {steps * batch / seconds:,.0f} images/s",
             f"final loss {trainer.history[-1]['loss']:.4f}", peak_memory(device)]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(parser)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU: the code path, not a measurement")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for the whole check (default 240)")
    parser.add_argument("--compile-budget", type=float, default=60.0,
                        help="skip a compiled row when fewer seconds than this are left")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per row")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--course-steps", type=int, default=300)
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--sample-repeats", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the chip's dense bf16 peak, if not known")
    parser.add_argument("--out", default=os.path.join(C.REPO_ROOT, "build", "gpu_check.md"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.device, args.steps, args.warmup, args.sample_steps, args.sample_repeats = "cpu", 1, 1, 3, 1
        os.environ.setdefault("TINYLDM_FAST", "1")
    device = C.setup(args)
    budget = Budget(args.budget)
    peak = peak_flops(device, args.peak_tflops)
    C.banner("GPU check" + (" (tiny, CPU)" if args.tiny else ""), device)
    warnings.filterwarnings("ignore", category=FutureWarning)
    rows = cuda_tests(device) + course_training(device, args)
    course = course_config()
    rows += throughput_rows("course UNet", course, 8 if args.tiny else 1024, (4, 16, 16), (8, course.context_dim),
                            device, args, budget, peak)
    sd = sd_config(args.tiny)
    for size, batch in ((256, 32), (512, 8)):
        latent = (4, 8, 8) if args.tiny else (4, size // 8, size // 8)
        rows += throughput_rows(f"SD v1 UNet {size} px", sd, 2 if args.tiny else batch, latent,
                                (77, sd.context_dim), device, args, budget, peak)
    ae_cfg = AutoencoderConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4,
                               downsample_padding="asymmetric") if args.tiny else AutoencoderConfig.sd()
    if budget.left() > 20 or args.tiny:
        rows += sampling_rows(sd, ae_cfg, 32 if args.tiny else 512, 2 if args.tiny else 8, device, args)
    else:
        rows.append(["sampling 512 px", "skipped (no time left)", "", ""])
    table = C.markdown_table(["what", "result", "detail", "peak memory"], rows)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(f"# GPU check\n\ncommand: {C.command_line()}\n\nenvironment: {C.environment(device)}\n\n"
                              f"{table}\n")
    print(f"\nwritten to {args.out}; {max(0.0, args.budget - budget.left()):.0f} s")
    C.footer([], args.tiny)
    return 1 if any("FAILED" in str(r[1]) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
