"""Time to quality on the CPU: how soon a model gets good, tinyldm's course recipe against the Hugging Face diffusion
course's recipe, for equal wall-clock budgets on the same scenes and the same cores.

* baseline, the recipe a learner would pick today (the Hugging Face diffusion course, unit 2, "class-conditioned"):
  diffusers' ``UNet2DModel`` (widths 32/64/64, two res blocks per level, attention at the two lower levels) in pixel
  space, the class as a learned 4-channel embedding concatenated to the input, ``DDPMScheduler`` with the
  ``squaredcos_cap_v2`` betas, Adam at lr 1e-3, batch 128, MSE on the noise. Two changes, both in its favour or
  needed for the test: the scenes are shown at 32 px (the recipe's own size is MNIST's 28 px; at 64 px a step costs
  four times as much), and labels are dropped to an extra null class 10 % of the time, so that it can be guided at
  s = 3 like the course's models.
* tinyldm: the course recipe, ``train_diffusion(condition="class")`` from scratch: the course UNet on the course
  autoencoder's latents (cached once; the encoding time is reported apart), batch 64, lr 1e-3, EMA, the eps skip.

Each recipe trains for each of ``--minutes`` (default 5 and 20; a fresh run per budget, one after another, nothing
else running): a few timed steps first give its step rate, then the steps that fit the budget, the last fifth with
the lr cooled to 0. Then both are judged alike: 240 samples (10 per class, DDIM 50 steps, guidance s = 3, noise seed
1), read by the course judge: the share with shape and colour both right, and the FSD against 240 held-out course
scenes. The table (and ``--out``, markdown) gives the curve.

    .venv/bin/python benchmarks/time_to_quality.py                 # about 55 minutes: 2 x (5 + 20) min + sampling
    .venv/bin/python benchmarks/time_to_quality.py --quick         # smoke test, about a minute
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import _common as C
from tinyldm.conditioning import Guided, LabelCondition
from tinyldm.data import NUM_CLASSES
from tinyldm.metrics import attribute_accuracy, class_attributes, fsd
from tinyldm.pretrained import course_autoencoder, course_judge
from tinyldm.recipes import course_latents, course_scenes, train_diffusion
from tinyldm.sample import DDIM, sample
from tinyldm.schedule import NoiseSchedule, ScheduleConfig
from tinyldm.train import TrainConfig, Trainer


# -- the baseline: the Hugging Face diffusion course's class-conditioned UNet ----------------------------------------

class ClassConditionedUnet(nn.Module):
    """The Hugging Face diffusion course's model: the class as a learned embedding, broadcast over the image and
    concatenated to it as extra input channels of a diffusers UNet2DModel. Label NUM_CLASSES is the null class."""

    def __init__(self, size: int, num_classes: int = NUM_CLASSES, class_emb_size: int = 4):
        super().__init__()
        from diffusers import UNet2DModel

        self.class_emb = nn.Embedding(num_classes + 1, class_emb_size)
        self.model = UNet2DModel(sample_size=size, in_channels=3 + class_emb_size, out_channels=3, layers_per_block=2,
                                 block_out_channels=(32, 64, 64),
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))

    def forward(self, x, t, y):
        b, _, h, w = x.shape
        cond = self.class_emb(y).view(b, -1, 1, 1).expand(b, -1, h, w)
        # diffusers' timestep k = t - 1 (tinyldm's t counts 1..T)
        return self.model(torch.cat([x, cond], dim=1), t - 1).sample


class Pixels(Dataset):
    """The course scenes as images at ``size`` px (rendered once, kept in memory) with their labels."""

    def __init__(self, n: int, size: int):
        scenes = course_scenes(n)
        images = torch.stack([scenes[i]["image"] for i in range(n)])
        self.x = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        self.y = torch.tensor([scenes[i]["label"] for i in range(n)])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": int(self.y[i])}


def baseline_loss(schedule: NoiseSchedule, p_uncond: float = 0.1):
    """The recipe's loss (MSE on the noise, t uniform), with labels dropped to the null class with p_uncond."""
    def loss(model, batch, generator):
        x_0, y = batch["image"], batch["label"]
        t = schedule.sample_t(len(x_0), generator=generator)
        eps = torch.randn(x_0.shape, generator=generator)
        drop = torch.rand(len(y), generator=generator) < p_uncond
        y = torch.where(drop, torch.full_like(y, NUM_CLASSES), y)
        return F.mse_loss(model(schedule.q_sample(x_0, t, eps), t, y), eps), {}
    return loss


# -- equal wall clock ----------------------------------------------------------------------------------------------

def steps_for(minutes: float, seconds_per_step: float) -> int:
    return max(10, int(minutes * 60 / seconds_per_step))


class StepClock:
    """Trainer callback: the time of every step, for the seconds per step of a run (the set-up not counted)."""

    def __init__(self):
        self.times = []

    def __call__(self, trainer, step):
        self.times.append(time.perf_counter())

    @property
    def seconds_per_step(self) -> float:
        return (self.times[-1] - self.times[0]) / (len(self.times) - 1)

    @property
    def seconds(self) -> float:
        return self.times[-1] - self.times[0]


@torch.no_grad()
def judge_samples(eps_model_for, decode, shape, judge, reference, n_per_class: int, steps: int, schedule,
                  clip_x0=None):
    labels = torch.arange(NUM_CLASSES).repeat_interleave(n_per_class)
    condition = LabelCondition(NUM_CLASSES)
    images = []
    for k, part in enumerate(labels.split(120)):
        guided = Guided(eps_model_for, condition.given(part), condition.null(len(part)), s=3.0)
        z = sample(guided, DDIM(schedule, steps, clip_x0=clip_x0), (len(part), *shape),
                   generator=torch.Generator().manual_seed(1 + k), progress=False)
        images.append(decode(z))
    images = torch.cat(images).clamp(-1, 1)
    both = attribute_accuracy(judge, images, class_attributes(labels))["all"]
    return both, fsd(judge, images, reference)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(parser)
    parser.add_argument("--minutes", default="5,20", help="wall-clock budgets, comma-separated (default 5,20)")
    parser.add_argument("--size", type=int, default=32, help="the baseline's image size in pixels (default 32)")
    parser.add_argument("--n-images", type=int, default=20_000)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--out", default=str(Path(C.REPO_ROOT) / "build" / "benchmarks" / "time_to_quality.md"))
    args = parser.parse_args(argv)
    device = C.setup(args)
    warnings.filterwarnings("ignore", category=FutureWarning)
    budgets = [float(m) for m in args.minutes.split(",")]
    if args.quick:
        budgets, args.n_images, args.per_class, args.sample_steps = [0.1], 256, 1, 5
    C.banner("Time to quality: tinyldm's course recipe against the Hugging Face diffusion course's", device)
    ae, judge = course_autoencoder(), course_judge()
    held = course_scenes(NUM_CLASSES * args.per_class, seed=1)
    reference = torch.stack([held[i]["image"] for i in range(len(held))])
    start = time.perf_counter()
    latents = course_latents(ae, args.n_images)
    print(f"tinyldm: latents of {len(latents)} scenes ready in {time.perf_counter() - start:.0f} s (encoded once, "
          f"cached; not in the budgets)")
    pixels = Pixels(args.n_images, args.size)
    hf_schedule = NoiseSchedule(ScheduleConfig.cosine())

    def tinyldm_run(steps, cooldown, clock):
        tc = TrainConfig(steps=steps, batch_size=64, lr=1e-3, warmup_steps=min(200, steps // 5), ema_decay=0.999,
                         cooldown_steps=cooldown, progress=not args.quick)
        return train_diffusion(ae, condition="class", n_images=args.n_images, train_config=tc, device=device,
                               resume=False, callbacks=[clock])[0]

    def baseline_run(steps, cooldown, clock):
        torch.manual_seed(0)
        tc = TrainConfig(steps=steps, batch_size=128, lr=1e-3, warmup_steps=0, ema_decay=None, grad_clip=None,
                         cooldown_steps=cooldown, progress=not args.quick)
        trainer = Trainer(ClassConditionedUnet(args.size), baseline_loss(hf_schedule), pixels, tc, device=device,
                          callbacks=[clock])
        trainer.fit()
        return trainer.model

    runs = {"baseline": baseline_run, "tinyldm": tinyldm_run}
    sec = {}
    for name, run in runs.items():  # a short throwaway run of each gives its step rate
        clock = StepClock()
        run(6 if args.quick else 30, 0, clock)
        sec[name] = clock.seconds_per_step
    print(f"seconds per step: tinyldm {sec['tinyldm']:.3f} (batch 64), baseline {sec['baseline']:.3f} (batch 128)")
    rows = []
    for minutes in budgets:
        for name, run in runs.items():
            steps, clock = steps_for(minutes, sec[name]), StepClock()
            model = run(steps, steps // 5, clock).eval()
            if name == "tinyldm":
                result = judge_samples(lambda x, t, y=None: model(x, t, y), ae.from_latent, (4, 16, 16), judge,
                                       reference, args.per_class, args.sample_steps, model.schedule)
            else:
                result = judge_samples(lambda x, t, y=None: model(x, t, y), lambda z: z, (3, args.size, args.size),
                                       judge, reference, args.per_class, args.sample_steps, hf_schedule, clip_x0=1.0)
            rows.append([f"{minutes:g} min", name, steps, f"{clock.seconds / 60:.1f} min", f"{result[0]:.1%}",
                         f"{result[1]:.1f}"])
            print(" | ".join(map(str, rows[-1])), flush=True)
    table = C.markdown_table(["budget", "recipe", "steps", "training time",
                              "both right at s = 3", "FSD"], rows)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(f"command: {C.command_line()}\n\nenvironment: {C.environment(device)}\n\n{table}\n")
    C.footer([], args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
