"""The course's small pretrained models: where they live, how they are made, how notebooks get them.

Every file in ``data/`` is made by the project's own training code (the ``tinyldm`` command calls the
functions below), so anyone can make it again; ``data/README.md`` lists the command lines. A
notebook that needs a model calls ``course_autoencoder()``: it loads the shipped file, or, if the
file is missing, trains a small stand-in on the spot (with a warning) so the notebook still runs.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

from .autoencoder import Autoencoder, AutoencoderConfig, autoencoder_loss, reconstruction_psnr
from .config import DATA_DIR, pick
from .data import RandomCrops, Scenes
from .train import TrainConfig, Trainer

COURSE_AUTOENCODER = DATA_DIR / "autoencoder-course.safetensors"


def held_out_scenes(size: int = 64, n: int = 256, max_objects: int = 2) -> torch.Tensor:
    """``[n, 3, size, size]`` scenes from seed 1, never seen in training (which uses seed 0)."""
    scenes = Scenes(size=size, length=n, seed=1, max_objects=max_objects)
    return torch.stack([scenes[i]["image"] for i in range(n)])


def train_autoencoder(preset: str = "course", size: int = 64, crop: int | None = 32, max_objects: int = 2,
                      n_images: int = 50_000, train_config: TrainConfig | None = None,
                      run_dir: str | Path | None = None, resume: bool = True, device=None,
                      out: str | Path | None = None, n_eval: int = 256) -> tuple[Autoencoder, float]:
    """Train an autoencoder on procedural scenes (seed 0), on random ``crop`` x ``crop`` crops of
    ``size`` px images, then fit its scale factor and measure its PSNR on held-out whole scenes.

    Returns (the EMA model on the CPU, PSNR in dB); with ``out`` also saves it there.
    """
    train_config = train_config or TrainConfig(steps=6000, batch_size=32, lr=1e-3, warmup_steps=100)
    data = Scenes(size=size, length=n_images, seed=0, max_objects=max_objects)
    if crop:
        data = RandomCrops(data, crop, seed=train_config.seed)
    trainer = Trainer(Autoencoder(AutoencoderConfig.preset(preset)), autoencoder_loss, data, train_config,
                      out_dir=run_dir, resume=resume, device=device)
    if trainer.step:
        print(f"resuming {run_dir} at step {trainer.step}")
    trainer.fit()
    ae = (trainer.ema if trainer.ema is not None else trainer.model).cpu().eval()
    held_out = held_out_scenes(size, n_eval, max_objects)
    ae.fit_scale_factor(held_out)
    value = reconstruction_psnr(ae, held_out)
    if out is not None:
        ae.save(out, psnr=round(value, 3), steps=trainer.step, image_size=size, crop=crop,
                command=" ".join(["tinyldm", *sys.argv[1:]]))
    return ae, value


def course_autoencoder(path: str | Path = COURSE_AUTOENCODER) -> Autoencoder:
    """The course's autoencoder (f = 4, 64 px scenes -> [b, 4, 16, 16]), in eval mode on the CPU."""
    path = Path(path)
    if path.exists():
        return Autoencoder.load(path)
    warnings.warn(f"{path} is missing; training a small stand-in autoencoder now (blurrier results). "
                  f"Make the real one with: tinyldm train-autoencoder", stacklevel=2)
    ae, _ = train_autoencoder(train_config=TrainConfig(steps=pick(300, 3), batch_size=32, lr=1e-3, warmup_steps=30,
                                                       ema_decay=0.99), n_eval=pick(64, 8))
    return ae
