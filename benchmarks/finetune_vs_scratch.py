"""Finetune against from scratch, on the face stand-in: how many steps each needs to reach a face FSD.

Two runs of ``tinyldm train-diffusion --condition class`` on 64 px faces (the latents of the course's face
autoencoder; the 15 classes of hair colour x mouth, label dropout 0.1), with the same steps, lr, batch and cool-down,
each logging the FSD of 256 guided samples (s = 3, DDIM 20, the labels in turn) to 256 held-out faces every
``--every`` steps (``--fsd-every``):

* finetune: ``--init data/unet-class.safetensors`` (the course's class-conditional scene UNet; its 24-class table
  becomes a 15-class one whose rows start as its null label);
* scratch: the same network from random weights.

The runs are resumable and are skipped when their log is complete, so this script can be stopped and started again.
It prints both curves and the figure of merit: the share of the scratch run's steps the finetune needs to reach the
scratch run's final FSD. Then the resolution change: the finetuned face model sampled at
128 px before and after ``--res-steps`` steps of finetuning at 128 px (5000 faces, batch 32), against its FSD at
64 px.

    python benchmarks/finetune_vs_scratch.py --steps 2000 --every 250

One heavy job at a time: on a 2-core machine anything else running skews the step times (not the FSDs).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import banner

ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str]) -> float:
    print("$ " + " ".join(shlex.quote(c) for c in command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return time.perf_counter() - start


def curve(run_dir: Path) -> list[tuple[int, float]]:
    log = run_dir / "fsd.jsonl"
    if not log.is_file():
        return []
    points = {}
    for line in log.read_text().splitlines():
        point = json.loads(line)
        points[point["step"]] = point["fsd"]  # a step measured twice (a resumed run): the last one
    return sorted(points.items())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--cooldown", type=int, default=500)
    p.add_argument("--lr", default="1e-3", help="the peak lr of both runs")
    p.add_argument("--res-steps", type=int, default=500, help="steps of the 128 px finetune")
    p.add_argument("--runs", default=str(ROOT / "build" / "runs"), help="where the run folders go")
    args = p.parse_args()
    banner("finetune vs. scratch on the face stand-in (class-conditional, 64 px, batch 64)", torch.device("cpu"))
    tinyldm = str(Path(sys.executable).parent / "tinyldm")
    ae = "data/autoencoder-faces.safetensors"
    common = ["train-diffusion", "--data", "faces", "--condition", "class", "--autoencoder", ae, "--steps",
              str(args.steps), "--cooldown", str(args.cooldown), "--fsd-every", str(args.every), "--sample-every", "0",
              "--lr", args.lr]
    runs = {"finetune": ["--init", "data/unet-class.safetensors"], "scratch": []}
    folders = {name: Path(args.runs) / f"faces-class-{name}" for name in runs}
    for name, extra in runs.items():
        if not curve(folders[name]) or curve(folders[name])[-1][0] < args.steps:
            seconds = run([tinyldm, *common, *extra, "--run-dir", str(folders[name])])
            print(f"{name}: {seconds / 60:.1f} min")
    curves = {name: curve(folders[name]) for name in runs}
    print(f"\n{'step':>6} " + " ".join(f"{name:>10}" for name in runs))
    for i, (step, _) in enumerate(curves["scratch"]):
        print(f"{step:>6} " + " ".join(f"{curves[name][i][1]:>10.2f}" for name in runs))
    final = curves["scratch"][-1][1]
    reached = next((s for s, v in curves["finetune"] if v <= final), None)
    print(f"\nscratch: final FSD {final:.2f} after {curves['scratch'][-1][0]} steps")
    if reached is None:
        print("finetune: never reached it within the run")
    else:
        print(f"finetune: reached it at step {reached}, {reached / curves['scratch'][-1][0]:.2f} of the steps")

    print("\n## the resolution change: the finetuned face model at 128 px\n")
    model = folders["finetune"] / "model.safetensors"
    res_dir = Path(args.runs) / "faces-class-128"
    if not (res_dir / "model.safetensors").is_file():
        run([tinyldm, "train-diffusion", "--data", "faces", "--image-size", "128", "--autoencoder", ae, "--init",
             str(model), "--condition", "class", "--n-images", "5000", "--steps", str(args.res_steps), "--cooldown",
             str(args.res_steps // 4), "--batch-size", "32",
             "--sample-every", "0", "--run-dir", str(res_dir)])
    results = {}
    for label, unet, size in (("64 px model at 64 px", model, 64), ("64 px model at 128 px", model, 128),
                              (f"+ {args.res_steps} steps at 128 px", res_dir / "model.safetensors", 128)):
        out = subprocess.run([tinyldm, "evaluate", str(unet), "--autoencoder", ae, "--image-size", str(size)],
                             check=True, cwd=ROOT, capture_output=True, text=True).stdout
        results[label] = json.loads(out.strip().splitlines()[-1])["fsd"]
        print(f"{label:>28}: FSD {results[label]:.2f}")
    own, after = results["64 px model at 64 px"], results[f"+ {args.res_steps} steps at 128 px"]
    print(f"after the finetune at 128 px: {after / own:.2f}x the FSD at 64 px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
