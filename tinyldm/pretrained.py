"""The course's small pretrained models: where they live, how they are made, how notebooks get them.

Every file in ``data/`` is made by the project's own training code (the ``tinyldm`` command calls the
functions below), so anyone can make it again; ``data/README.md`` lists the command lines. A
notebook that needs a model calls ``course_autoencoder()``: it loads the shipped file, or, if the
file is missing, trains a small stand-in on the spot (with a warning) so the notebook still runs.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset, Subset

from .autoencoder import Autoencoder, AutoencoderConfig, autoencoder_loss, reconstruction_psnr
from .config import BUILD_DIR, DATA_DIR, default_device, pick
from .conditioning import Guided, LabelCondition, TextCondition
from .data import NUM_CLASSES, RandomCrops, Scenes, class_name, label_of
from .latents import LatentDataset, fingerprint, load_or_encode
from .metrics import Judge, JudgeConfig, attribute_accuracy, judge_loss
from .sample import DDIM, sample
from .schedule import NoiseSchedule, ScheduleConfig
from .train import EpsLoss, TrainConfig, Trainer
from .text import SceneCLIP, SceneCLIPConfig, clip_loss
from .unet import UNet, UNetConfig
from .viz import image_grid

COURSE_AUTOENCODER = DATA_DIR / "autoencoder-course.safetensors"
COURSE_JUDGE = DATA_DIR / "judge-scenes64.safetensors"
COURSE_UNET = DATA_DIR / "unet-course.safetensors"
COURSE_TEXT_ENCODER = DATA_DIR / "text-scenes.safetensors"
COURSE_CLASS_UNET = DATA_DIR / "unet-class.safetensors"
COURSE_TEXT_UNET = DATA_DIR / "unet-text.safetensors"


def _load_or_stand_in(path: str | Path, model_class, what: str, command: str, make_stand_in):
    """Load ``path`` with ``model_class.load``; if the file is missing, warn and return ``make_stand_in()``."""
    path = Path(path)
    if path.exists():
        return model_class.load(path)
    warnings.warn(f"{path} is missing; training a small stand-in {what} now (poorer results). "
                  f"Make the real one with: {command}", stacklevel=3)
    return make_stand_in()


def held_out_scenes(size: int = 64, n: int = 256, max_objects: int = 2) -> torch.Tensor:
    """``[n, 3, size, size]`` scenes from seed 1, never seen in training (which uses seed 0)."""
    scenes = Scenes(size=size, length=n, seed=1, max_objects=max_objects)
    return torch.stack([scenes[i]["image"] for i in range(n)])


def train_autoencoder(preset: str = "course", size: int = 64, crop: int | None = 32, whole_image_steps: int = 400,
                      max_objects: int = 2, n_images: int = 50_000, train_config: TrainConfig | None = None,
                      run_dir: str | Path | None = None, resume: bool = True, device=None,
                      out: str | Path | None = None, n_eval: int = 256, init: str | Path | None = None,
                      kl_weight: float | None = None) -> tuple[Autoencoder, float]:
    """Train an autoencoder on procedural scenes (seed 0), then fit its scale factor and measure its
    PSNR on held-out whole scenes.

    ``init`` fine-tunes a saved autoencoder instead of starting from random weights (its file gives the
    architecture; ``preset`` is then not used). ``kl_weight`` overrides the config's weight of the KL term.

    With ``crop``, all but the last ``whole_image_steps`` steps train on random ``crop`` x ``crop``
    crops of ``size`` px images (a quarter of the cost at 32 of 64 px), and the last ones on whole
    images: GroupNorm normalises over the whole feature map, so its statistics on a crop differ from
    those on a whole image, and a model that only saw crops reconstructs whole images worse (seen
    here: 30.5 dB on crops, 23.2 dB on whole images after 4000 crop steps).

    Returns (the EMA model on the CPU, PSNR in dB); with ``out`` also saves it there.
    """
    train_config = train_config or TrainConfig(steps=4400, batch_size=32, lr=1e-3, warmup_steps=100)
    data = Scenes(size=size, length=n_images, seed=0, max_objects=max_objects)
    phases = [(data, train_config.steps)]
    if crop:
        phases.insert(0, (RandomCrops(data, crop, seed=train_config.seed), train_config.steps - whole_image_steps))
    model = Autoencoder.load(init) if init is not None else Autoencoder(AutoencoderConfig.preset(preset))
    if kl_weight is not None:
        model.config = dataclasses.replace(model.config, kl_weight=kl_weight)
    trainer = Trainer(model.train(), autoencoder_loss, phases[0][0], train_config,
                      out_dir=run_dir, resume=resume, device=device)
    if trainer.step:
        print(f"resuming {run_dir} at step {trainer.step}")
    for dataset, until in phases:
        if trainer.step < until:
            trainer.dataset = dataset
            trainer.fit(steps=until - trainer.step)
    ae = (trainer.ema if trainer.ema is not None else trainer.model).cpu().eval()
    held_out = held_out_scenes(size, n_eval, max_objects)
    ae.fit_scale_factor(held_out)
    value = reconstruction_psnr(ae, held_out)
    if out is not None:
        ae.save(out, psnr=round(value, 3), steps=trainer.step, image_size=size, crop=crop,
                whole_image_steps=whole_image_steps, init=str(init) if init is not None else None,
                command=" ".join(["tinyldm", *sys.argv[1:]]))
    return ae, value


def course_autoencoder(path: str | Path = COURSE_AUTOENCODER) -> Autoencoder:
    """The course's autoencoder (f = 4, 64 px scenes -> [b, 4, 16, 16]), in eval mode on the CPU."""
    return _load_or_stand_in(path, Autoencoder, "autoencoder", "tinyldm train-autoencoder", lambda: train_autoencoder(
        whole_image_steps=pick(100, 1), n_eval=pick(64, 8),
        train_config=TrainConfig(steps=pick(300, 3), batch_size=32, lr=1e-3, warmup_steps=30, ema_decay=0.99))[0])


def train_judge(train_config: TrainConfig | None = None, n_images: int = 50_000, device=None,
                out: str | Path | None = None, n_eval: int = 1000) -> tuple[Judge, float]:
    """Train the judge of ``tinyldm.metrics`` on one-object 64 px scenes (seed 0) and measure its
    accuracy (all attributes right) on held-out scenes (seed 1). Returns (judge, accuracy)."""
    train_config = train_config or TrainConfig(steps=3000, batch_size=64, lr=2e-3, warmup_steps=50,
                                               ema_decay=None, grad_clip=None)
    data = Scenes(size=64, length=n_images, seed=0, max_objects=1)
    trainer = Trainer(Judge(JudgeConfig()), judge_loss, data, train_config, device=device)
    trainer.fit()
    judge = trainer.model.cpu().eval()
    held_out = Scenes(size=64, length=n_eval, seed=1, max_objects=1)
    items = [held_out[i] for i in range(n_eval)]
    acc = attribute_accuracy(judge, torch.stack([it["image"] for it in items]),
                             torch.stack([it["attributes"][0] for it in items]))
    if out is not None:
        judge.save(out, accuracy=acc, steps=trainer.step, command=" ".join(["tinyldm", *sys.argv[1:]]))
    return judge, acc["all"]


def course_judge(path: str | Path = COURSE_JUDGE) -> Judge:
    """The course's judge (reads shape, colour and size; features for the FSD), in eval mode."""
    return _load_or_stand_in(path, Judge, "judge", "tinyldm train-judge", lambda: train_judge(
        TrainConfig(steps=pick(300, 3), batch_size=64, lr=2e-3, warmup_steps=20, ema_decay=None, grad_clip=None),
        n_eval=pick(200, 10))[0])


def train_text_encoder(train_config: TrainConfig | None = None, n_images: int = 50_000, max_objects: int = 2,
                       config: SceneCLIPConfig | None = None, device=None, out: str | Path | None = None,
                       n_eval: int = 512) -> tuple[SceneCLIP, float]:
    """Train the offline text encoder (:class:`tinyldm.text.SceneCLIP`) contrastively on (scene, caption)
    pairs (seed 0; 1 to ``max_objects`` objects). Returns (the model, its zero-shot accuracy: how often a
    held-out one-object scene is closest to the right one of the 24 prompts "a {colour} {shape}", chance 1/24)."""
    train_config = train_config or TrainConfig(steps=1000, batch_size=64, lr=1e-3, warmup_steps=50, ema_decay=None)
    data = Scenes(size=64, length=n_images, seed=0, max_objects=max_objects)
    trainer = Trainer(SceneCLIP(config), clip_loss, data, train_config, device=device)
    trainer.fit()
    model = trainer.model.cpu().eval()
    acc = zero_shot_accuracy(model, n_eval)
    if out is not None:
        model.save(out, zero_shot_accuracy=acc, n_eval=n_eval, steps=trainer.step,
                   command=" ".join(["tinyldm", *sys.argv[1:]]))
    return model, acc


@torch.no_grad()
def zero_shot_accuracy(model: SceneCLIP, n: int = 512) -> float:
    """CLIP's zero-shot classification on ``n`` held-out one-object scenes (seed 1): the share whose image
    embedding is closest to the text embedding of their own class prompt "a {colour} {shape}"."""
    held_out = Scenes(size=64, length=n, seed=1, max_objects=1)
    items = [held_out[i] for i in range(n)]
    img = model.image_embeds(torch.stack([it["image"] for it in items]))
    txt = model.text_embeds([f"a {class_name(c)}" for c in range(NUM_CLASSES)])
    labels = torch.tensor([it["label"] for it in items])
    return (img @ txt.T).argmax(1).eq(labels).float().mean().item()


def course_text_encoder(path: str | Path = COURSE_TEXT_ENCODER) -> SceneCLIP:
    """The course's offline text encoder (prompts -> ``[b, 40, 128]``), frozen, in eval mode on the CPU."""
    def stand_in():
        tc = TrainConfig(steps=pick(200, 3), batch_size=64, lr=1e-3, warmup_steps=20, ema_decay=None)
        return train_text_encoder(tc, n_eval=pick(128, 8))[0]
    model = _load_or_stand_in(path, SceneCLIP, "text encoder", "tinyldm train-text-encoder", stand_in)
    return model.requires_grad_(False)


def course_latents(ae: Autoencoder, n: int = 20_000, max_objects: int = 1, size: int = 64) -> LatentDataset:
    """Cached latents of the first ``n`` training scenes (seed 0), under ``build/latents/``."""
    scenes = Scenes(size=size, length=n, seed=0, max_objects=max_objects)
    path = BUILD_DIR / "latents" / f"scenes{size}-{n}-obj{max_objects}-{fingerprint(ae)}.safetensors"
    return load_or_encode(ae, scenes, path)


class SampleGrids:
    """Trainer callback: every ``every`` steps, sample ``n`` images with the EMA weights (DDIM, 20
    steps, fixed noise so grids are comparable across steps) and save a PNG grid in ``folder``.

    For a conditional model pass ``cond`` (model inputs for n samples, e.g. ``condition.given(labels)``) and
    ``null`` (``condition.null(n)``): the grid is then guided with scale ``s``."""

    def __init__(self, ae: Autoencoder, schedule: NoiseSchedule, folder: str | Path, every: int,
                 latent_shape: tuple[int, int, int] = (4, 16, 16), n: int = 16, steps: int = 20,
                 cond: dict | None = None, null: dict | None = None, s: float = 3.0):
        self.ae, self.schedule, self.folder, self.every = ae, schedule, Path(folder), every
        self.n, self.latent_shape, self.steps = n, latent_shape, steps
        self.cond, self.null, self.s = cond, null, s

    def __call__(self, trainer: Trainer, step: int) -> None:
        if step % self.every:
            return
        import matplotlib.pyplot as plt

        images = generate((trainer.ema or trainer.model).eval(), self.ae, self.cond, self.null, self.s, n=self.n,
                          sampler=DDIM(self.schedule, steps=self.steps), latent_shape=self.latent_shape,
                          device=trainer.device)
        self.folder.mkdir(parents=True, exist_ok=True)
        plt.imsave(self.folder / f"step_{step:07d}.png", image_grid(images, nrow=int(len(images) ** 0.5)))


def without_labels(dataset: LatentDataset, labels: Sequence[int]) -> Dataset:
    """The items of ``dataset`` whose class label is not in ``labels`` (to hold combinations out of training)."""
    keep = ~torch.isin(dataset.labels, torch.as_tensor(list(labels), dtype=torch.long))
    return Subset(dataset, keep.nonzero().flatten().tolist())


def train_diffusion(ae: Autoencoder, preset: str = "course", n_images: int = 20_000, max_objects: int = 1,
                    train_config: TrainConfig | None = None, schedule: ScheduleConfig | None = None,
                    run_dir: str | Path | None = None, resume: bool = True, device=None,
                    out: str | Path | None = None, sample_every: int = 0, condition: str = "none",
                    text_encoder=None, p_uncond: float = 0.1, hold_out: Sequence[int] = (),
                    snr_gamma: float | None = None, init: str | Path | None = None) -> tuple[UNet, Trainer]:
    """Train an eps-prediction UNet (Algorithm 1) on cached latents of ``ae``.

    ``condition``: "none" (unconditional, ``model(x_t, t)``), "class" (class labels y, with a null label) or
    "text" (captions through the frozen ``text_encoder``, by cross-attention). Conditional models drop y to
    null with probability ``p_uncond`` so they can be guided. ``snr_gamma``: Min-SNR loss weighting (see
    EpsLoss). ``hold_out``: class labels (shape-colour pairs)
    left out of training, to test generalisation to new combinations. ``init``: go on training a saved UNet
    (its file gives the network; ``preset`` is then not used) with a fresh optimizer and lr schedule.

    Returns (the EMA model on the CPU, the trainer); with ``out`` also saves the EMA model there,
    together with the schedule and the fingerprint of the autoencoder whose latents it learned.
    """
    train_config = train_config or TrainConfig(steps=8000, batch_size=64, lr=1e-3, warmup_steps=200,
                                               ema_decay=0.999)
    schedule = NoiseSchedule(schedule or ScheduleConfig.ddpm())
    latents = course_latents(ae, n_images, max_objects)
    data = without_labels(latents, hold_out) if hold_out else latents
    shape = tuple(latents.latents.shape[1:])
    overrides, cond, null, n_grid = {}, None, None, 16
    if condition == "class":
        overrides["num_classes"] = NUM_CLASSES
        condition_ = LabelCondition(NUM_CLASSES, p_uncond)
        cond, null = condition_.given(torch.arange(n_grid) % NUM_CLASSES), condition_.null(n_grid)
    elif condition == "text":
        if text_encoder is None:
            raise ValueError("condition='text' needs a text_encoder (see tinyldm.text)")
        overrides["context_dim"] = text_encoder.dim
        text_encoder.to(torch.device(device) if device is not None else default_device())  # where the UNet trains
        condition_ = TextCondition(text_encoder, p_uncond)
        prompts = [f"a {class_name(c % NUM_CLASSES)}" for c in range(n_grid)]
        cond, null = condition_.given(prompts), condition_.null(n_grid)
    elif condition == "none":
        condition_ = None
    else:
        raise ValueError(f"expected condition 'none', 'class' or 'text', got {condition!r}")
    wanted = UNetConfig.preset(preset, in_channels=shape[0], out_channels=shape[0],
                               eps_skip_schedule=schedule.config.to_dict(), **overrides)
    unet = UNet.load(init) if init is not None else UNet(wanted)
    if init is not None:
        for name in ("in_channels", "out_channels", "num_classes", "context_dim", "eps_skip_schedule"):
            if getattr(unet.config, name) != getattr(wanted, name):
                raise ValueError(f"{init} does not fit this run: {name} is {getattr(unet.config, name)!r} there, "
                                 f"this run needs {getattr(wanted, name)!r}")
    callbacks = [SampleGrids(ae, schedule, Path(run_dir) / "samples", sample_every, shape, n_grid, cond=cond,
                             null=null)] if sample_every and run_dir is not None else []
    trainer = Trainer(unet, EpsLoss(schedule, condition=condition_, snr_gamma=snr_gamma), data, train_config,
                      out_dir=run_dir,
                      resume=resume, device=device, callbacks=callbacks)
    if trainer.step:
        print(f"resuming {run_dir} at step {trainer.step}")
    trainer.fit()
    model = (trainer.ema if trainer.ema is not None else trainer.model).cpu().eval()
    if out is not None:
        model.save(out, schedule=schedule.config.to_dict(), autoencoder=fingerprint(ae), steps=trainer.step,
                   data=repr(latents), condition=condition, p_uncond=p_uncond, hold_out=list(hold_out),
                   snr_gamma=snr_gamma, init=str(init) if init is not None else None,
                   text_encoder=fingerprint(text_encoder) if text_encoder is not None else None,
                   final_loss=sum(h["loss"] for h in trainer.history[-100:]) / max(1, len(trainer.history[-100:])),
                   command=" ".join(["tinyldm", *sys.argv[1:]]))
    return model, trainer


@torch.no_grad()
def generate(model: UNet, ae: Autoencoder, cond: dict | None = None, null: dict | None = None, s: float = 0.0,
             n: int | None = None, sampler=None, seed: int = 0, batch_size: int = 128, progress: bool = False,
             latent_shape: tuple[int, int, int] = (4, 16, 16), device=None) -> torch.Tensor:
    """Images ``[n, 3, H, W]`` from ``model``: the sampling loop (DDIM, 20 steps, unless ``sampler``) with
    classifier-free guidance of scale s when ``cond`` is given, in chunks of ``batch_size``, then decoded.

    ``cond``/``null``: model inputs for all n samples, e.g. ``LabelCondition(24).given(labels)`` and
    ``.null(n)``. The noise of chunk k comes from ``seed + k``, so the same seed gives the same images.
    The loop runs on ``device`` (default: the CPU; the model must be there); the images come back on the CPU.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    n = n if cond is None else len(next(iter(cond.values())))
    if n is None:
        raise ValueError("give n (the number of images) or cond")
    sampler = sampler or DDIM(NoiseSchedule(ScheduleConfig(**model.config.eps_skip_schedule))
                              if model.config.eps_skip_schedule else NoiseSchedule(), steps=20)
    images = []
    for k, start in enumerate(range(0, n, batch_size)):
        part = slice(start, min(n, start + batch_size))
        eps_model = model
        if cond is not None:
            eps_model = Guided(model, {key: v[part].to(device) for key, v in cond.items()},
                               {key: v[part].to(device) for key, v in null.items()} if null is not None else None, s)
        z = sample(eps_model, sampler, (part.stop - part.start, *latent_shape),
                   generator=torch.Generator(device).manual_seed(seed + k), progress=progress, device=device)
        images.append(ae.from_latent(z.float().cpu()))
    return torch.cat(images)


def course_class_unet(ae: Autoencoder | None = None, path: str | Path = COURSE_CLASS_UNET) -> UNet:
    """The course's class-conditional latent UNet (24 classes + the null label, trained with label dropout 0.1)."""
    def stand_in():
        tc = TrainConfig(steps=pick(400, 3), batch_size=64, lr=1e-3, warmup_steps=40, ema_decay=0.99)
        return train_diffusion(ae or course_autoencoder(), n_images=pick(5000, 64), train_config=tc,
                               condition="class")[0]
    return _load_or_stand_in(path, UNet, "class-conditional UNet", "tinyldm train-diffusion --condition class "
                             "--run-dir build/runs/diffusion-class --out data/unet-class.safetensors", stand_in)


# (shape, colour) pairs the text model never saw together in training: "a yellow triangle", "a blue star"
TEXT_HOLD_OUT = (label_of("triangle", "yellow"), label_of("star", "blue"))


def course_text_unet(ae: Autoencoder | None = None, text_encoder: SceneCLIP | None = None,
                     path: str | Path = COURSE_TEXT_UNET) -> UNet:
    """The course's text-conditional latent UNet: cross-attention to :func:`course_text_encoder`'s hidden
    states, caption dropout 0.1, trained without the pairs in ``TEXT_HOLD_OUT``."""
    def stand_in():
        tc = TrainConfig(steps=pick(400, 3), batch_size=64, lr=1e-3, warmup_steps=40, ema_decay=0.99)
        return train_diffusion(ae or course_autoencoder(), n_images=pick(5000, 64), train_config=tc,
                               condition="text", text_encoder=text_encoder or course_text_encoder(),
                               hold_out=TEXT_HOLD_OUT)[0]
    return _load_or_stand_in(path, UNet, "text-conditional UNet", "tinyldm train-diffusion --condition text "
                             "--hold-out 14,22 --run-dir build/runs/diffusion-text --out data/unet-text.safetensors",
                             stand_in)


def course_unet(ae: Autoencoder | None = None, path: str | Path = COURSE_UNET) -> UNet:
    """The course's unconditional latent UNet (trained on one-object 64 px scenes), in eval mode."""
    def stand_in():
        tc = TrainConfig(steps=pick(400, 3), batch_size=64, lr=1e-3, warmup_steps=40, ema_decay=0.99)
        return train_diffusion(ae or course_autoencoder(), n_images=pick(5000, 64), train_config=tc)[0]
    return _load_or_stand_in(path, UNet, "UNet", "tinyldm train-diffusion", stand_in)
