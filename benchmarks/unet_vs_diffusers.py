"""tinyldm's UNet vs. diffusers' at a matched configuration: training step and sampling throughput.

Two pairs, both on latents ``[b, 4, 16, 16]`` with the course widths (16/32/64 at 16x16, 8x8, 4x4, one res block
per level, attention at 8x8 and 4x4, 32 channels per head):

* unconditional: tinyldm ``UNet(UNetConfig.course())`` vs. diffusers ``UNet2DModel`` with
  DownBlock2D / AttnDownBlock2D / AttnDownBlock2D (and the mirrored up blocks). diffusers' attention block
  is self-attention only, tinyldm's is LDM's transformer block (self-attention + GEGLU feed-forward), so the
  two do different amounts of work: compare the "at equal FLOPs" column, not the raw times.
* cross-attention: tinyldm ``UNetConfig.course(context_dim=64)`` vs. diffusers ``UNet2DConditionModel`` with
  CrossAttnDownBlock2D / UNetMidBlock2DCrossAttn / CrossAttnUpBlock2D, ``cross_attention_dim=64``, a context
  ``[b, 8, 64]``. Both are LDM's transformer block, so this is the like-for-like pair.

Both use the course's 8 GroupNorm groups and ADM's scale-shift norm for the time embedding
(diffusers' ``resnet_time_scale_shift="scale_shift"``), as ``UNetConfig.course()`` does.

For each model: parameters, FLOPs per forward and per training step (forward + backward, counted with
``torch.utils.flop_counter.FlopCounterMode``, attention included), then, interleaved in one process:

* training step: forward + MSE against a random target + backward + ``torch.optim.AdamW`` step, batch 64;
* sampling: one forward under ``torch.no_grad()`` in eval mode, batch 64, reported as samples/s (model
  evaluations x batch per second; a sampler runs this once per step).

Ratios: time tinyldm / diffusers (< 1: tinyldm faster), and "at equal FLOPs"
(t_diffusers / FLOPs_diffusers) / (t_tinyldm / FLOPs_tinyldm) (> 1: tinyldm does more FLOPs per second).
This script only reports. Eager mode and contiguous (NCHW) tensors
for both by default; ``--channels-last`` and ``--compile`` apply the same treatment to both models (FLOPs are
counted on the eager models), to see whether either library profits more from it.

Command and time (2 CPU cores, quiet machine; defaults batch 64, 2 warm-up + 7 timed repeats):

    .venv/bin/python benchmarks/unet_vs_diffusers.py            # about 1-2 minutes
    .venv/bin/python benchmarks/unet_vs_diffusers.py --quick    # smoke test, batch 8, about 10 s
    .venv/bin/python benchmarks/unet_vs_diffusers.py --device cuda --batch 256
    .venv/bin/python benchmarks/unet_vs_diffusers.py --channels-last   # both models in NHWC memory layout
    .venv/bin/python benchmarks/unet_vs_diffusers.py --compile         # both under torch.compile (minutes to compile)
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn.functional as F

import _common as C
from tinyldm import UNet, UNetConfig

LATENT = (4, 16, 16)
CONTEXT_LEN, CONTEXT_DIM = 8, 64


def diffusers_unconditional(cfg: UNetConfig):
    from diffusers import UNet2DModel

    levels = range(len(cfg.channel_mult))
    attn = set(cfg.attention_levels)
    return UNet2DModel(
        sample_size=LATENT[1], in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        block_out_channels=tuple(cfg.width(i) for i in levels), layers_per_block=cfg.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if i in attn else "DownBlock2D" for i in levels),
        up_block_types=tuple("AttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(levels)),
        attention_head_dim=cfg.head_dim,  # UNet2DModel: channels per head, as tinyldm's head_dim
        norm_num_groups=cfg.norm_groups, norm_eps=1e-6, flip_sin_to_cos=True, freq_shift=0,
        resnet_time_scale_shift="scale_shift" if cfg.scale_shift else "default")


def diffusers_cross_attention(cfg: UNetConfig):
    from diffusers import UNet2DConditionModel

    levels = range(len(cfg.channel_mult))
    attn = set(cfg.attention_levels)
    return UNet2DConditionModel(
        sample_size=LATENT[1], in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        block_out_channels=tuple(cfg.width(i) for i in levels), layers_per_block=cfg.num_res_blocks,
        down_block_types=tuple("CrossAttnDownBlock2D" if i in attn else "DownBlock2D" for i in levels),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=tuple("CrossAttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(levels)),
        # UNet2DConditionModel's attention_head_dim is the number of heads (diffusers issue 2011)
        attention_head_dim=tuple(cfg.heads(cfg.width(i)) for i in levels),
        cross_attention_dim=cfg.context_dim, norm_num_groups=cfg.norm_groups, norm_eps=1e-6,
        flip_sin_to_cos=True, freq_shift=0, resnet_time_scale_shift="scale_shift" if cfg.scale_shift else "default")


def build_pair(kind: str):
    """(tinyldm model, diffusers model, tinyldm forward(x, t, ctx), diffusers forward(x, t, ctx))."""
    torch.manual_seed(0)
    if kind == "unconditional":
        cfg = UNetConfig.course()
        ours, theirs = UNet(cfg), diffusers_unconditional(cfg)
        return (ours, theirs, lambda m, x, t, ctx: m(x, t),
                lambda m, x, t, ctx: m(x, t - 1).sample)  # diffusers counts time 0..T-1
    cfg = UNetConfig.course(context_dim=CONTEXT_DIM)
    ours, theirs = UNet(cfg), diffusers_cross_attention(cfg)
    return (ours, theirs, lambda m, x, t, ctx: m(x, t, context=ctx),
            lambda m, x, t, ctx: m(x, t - 1, encoder_hidden_states=ctx).sample)


def measure_pair(kind: str, args, device) -> dict:
    ours, theirs, fwd_ours, fwd_theirs = build_pair(kind)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    models = {"tinyldm": ours.to(device, memory_format=layout), "diffusers": theirs.to(device, memory_format=layout)}
    fwds = {"tinyldm": fwd_ours, "diffusers": fwd_theirs}
    g = torch.Generator().manual_seed(1)
    b = args.batch
    x = torch.randn(b, *LATENT, generator=g).to(device).contiguous(memory_format=layout)
    t = torch.randint(1, 1001, (b,), generator=g).to(device)
    ctx = torch.randn(b, CONTEXT_LEN, CONTEXT_DIM, generator=g).to(device) if kind != "unconditional" else None
    target = torch.randn(b, *LATENT, generator=g).to(device)
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}

    def train_step(name):
        m, opt = models[name], opts[name]

        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.mse_loss(fwds[name](m, x, t, ctx), target)
            loss.backward()
            opt.step()
        return step

    def forward_no_grad(name):
        m = models[name]

        def fwd():
            with torch.no_grad():
                return fwds[name](m, x, t, ctx)
        return fwd

    out = {name: {"params": sum(p.numel() for p in m.parameters())} for name, m in models.items()}
    for name, m in models.items():
        m.train()
        out[name]["train_flops"] = C.count_flops(lambda: F.mse_loss(fwds[name](m, x, t, ctx), target).backward())
        m.zero_grad(set_to_none=True)
        m.eval()
        out[name]["fwd_flops"] = C.count_flops(forward_no_grad(name))

    if args.compile:  # one compiled wrapper per model, sharing its parameters (and optimizer)
        models = {name: torch.compile(m) for name, m in models.items()}
    for m in models.values():
        m.train()
    train = C.interleaved_medians({n: train_step(n) for n in models}, device, args.repeats, args.warmup)
    for m in models.values():
        m.eval()
    sample = C.interleaved_medians({n: forward_no_grad(n) for n in models}, device, args.repeats, args.warmup)
    for name in models:
        out[name]["train"], out[name]["sample"] = train[name], sample[name]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="batch size (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument("--channels-last", action="store_true", help="both models and inputs in channels_last")
    parser.add_argument("--compile", action="store_true", help="both models under torch.compile")
    parser.add_argument("--configs", default="unconditional,cross-attention",
                        help="comma-separated: unconditional, cross-attention (default both)")
    C.add_common_args(parser)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats, args.warmup = 8, 2, 1
    device = C.setup(args)
    warnings.filterwarnings("ignore", category=FutureWarning)
    C.banner("tinyldm UNet vs. diffusers", device)
    b = args.batch

    results = {}
    for kind in args.configs.split(","):
        print(f"measuring {kind} (batch {b}, {args.warmup} warm-up + {args.repeats} timed repeats each) ...",
              flush=True)
        results[kind] = measure_pair(kind, args, device)
        for name, r in results[kind].items():
            print(f"  {name:9s} params {C.fmt_count(r['params'])}  forward {C.fmt_count(r['fwd_flops'])}FLOP  "
                  f"train step {C.fmt_count(r['train_flops'])}FLOP (fwd+bwd)  "
                  f"train {C.spread(r['train'])}  forward {C.spread(r['sample'])}", flush=True)

    print()
    rows = []
    for kind, res in results.items():
        for name, r in res.items():
            t_train, t_fwd = C.median(r["train"]), C.median(r["sample"])
            rows.append([kind, name, C.fmt_count(r["params"]), f"{r['fwd_flops'] / 1e9:.2f}",
                         f"{r['train_flops'] / 1e9:.2f}", f"{t_train * 1e3:.0f}",
                         f"{r['train_flops'] / t_train / 1e9:.1f}", f"{t_fwd * 1e3:.0f}", f"{b / t_fwd:.0f}",
                         f"{r['fwd_flops'] / t_fwd / 1e9:.1f}"])
    print(C.markdown_table(
        ["config", "model", "params", f"GFLOP/forward (b={b})", "GFLOP/train step (fwd+bwd)",
         "train step ms", "train GFLOP/s", "forward ms (no_grad)", "samples/s", "forward GFLOP/s"], rows))
    print()
    rows = []
    for kind, res in results.items():
        o, d = res["tinyldm"], res["diffusers"]
        tr_o, tr_d = C.median(o["train"]), C.median(d["train"])
        fw_o, fw_d = C.median(o["sample"]), C.median(d["sample"])
        rows.append([kind,
                     f"{tr_o / tr_d:.2f}", f"{(tr_d / d['train_flops']) / (tr_o / o['train_flops']):.2f}",
                     f"{fw_o / fw_d:.2f}", f"{(fw_d / d['fwd_flops']) / (fw_o / o['fwd_flops']):.2f}"])
    print(C.markdown_table(
        ["config", "train time tinyldm/diffusers", "train speed at equal FLOPs",
         "sampling time tinyldm/diffusers", "sampling speed at equal FLOPs"], rows))
    mode = ", ".join(["eager" if not args.compile else "torch.compile",
                      "channels_last" if args.channels_last else "NCHW"])
    print(f"\nbatch {b} ({mode}, both models), median of {args.repeats} interleaved repeats after {args.warmup} warm-up; "
          f"{C.environment(device)}. Time ratios < 1 and equal-FLOP ratios > 1 favour tinyldm."
          + ("\n--quick: smoke-test sizes, not a measurement." if args.quick else ""))


if __name__ == "__main__":
    main()
