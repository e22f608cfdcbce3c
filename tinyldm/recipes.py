"""The training recipes behind the ``tinyldm train-*`` commands: data, model, trainer and evaluation, in one call each.

Each function trains one network of the course on the procedural scenes with the project's Trainer and returns it
(with a figure of merit); with ``out`` it also writes a model file. The course checkpoints in ``data/`` are made by
exactly these functions (``data/README.md`` lists the command lines), so anyone can make them again. A run is a
function of its arguments: the initial weights come from ``train_config.seed``, and every random draw of a training
step from (seed, step), so the same command gives the same weights, fresh or resumed after a kill.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, default_collate

from . import distributed
from .autoencoder import Autoencoder, AutoencoderConfig, autoencoder_loss, reconstruction_psnr
from .checkpoint import CheckpointError, fingerprint
from .conditioning import ConcatCondition, Conditions, LabelCondition, TextCondition
from .config import BUILD_DIR, DATA_DIR, default_device, seeded
from .data import (FACE_ATTRIBUTES, NUM_CLASSES, NUM_FACE_CLASSES, SHAPES, SIZES, Faces, ImageFolder, Scenes, class_name, label_of,
                   random_crops)
from .data.masks import MaskConfig, MaskGenerator
from .inpaint import (CONCAT_KINDS, METHODS, InpaintingLatents, MaskedImages, ParsingMaps, concat_channels,
                      concat_kind, inpaint, inpainting_scores, inpainting_unet, parsing_map, parsing_unet)
from .latents import LatentDataset, load_or_encode
from .metrics import (Judge, JudgeConfig, Segmenter, SegmenterConfig, attribute_accuracy, class_attributes, fsd,
                      judge_loss, judged_attributes, mean_iou, segmenter_loss)
from .pipeline import generate
from .retrieval import Database, ImageEncoder, RetrievalCondition, WithNeighbours, load_or_compute_neighbours
from .sample import DDIM
from .schedule import NoiseSchedule, ScheduleConfig
from .text import CLIPTextEncoder, SceneCLIP, SceneCLIPConfig, clip_loss
from .train import EpsLoss, TrainConfig, Trainer
from .unet import UNet, UNetConfig
from .viz import image_grid

__all__ = ["train_autoencoder", "train_judge", "train_text_encoder", "train_diffusion", "zero_shot_accuracy",
           "held_out_scenes", "course_scenes", "course_latents", "without_labels", "unet_needs", "SampleGrids",
           "sample_test", "TEXT_HOLD_OUT", "COURSE_SCENES", "CONDITIONS", "COURSE_DATABASE", "course_database",
           "course_neighbours", "retrieval_queries", "image_data", "cached_latents", "num_classes_of",
           "freeze_parameters", "Part", "FINETUNE_LR", "FSDCurve", "face_test", "train_segmenter", "INPAINT_TEST_MASKS",
           "inpainting_test", "parsing_test"]

CONDITIONS = ("none", "class", "text", "retrieval")

# The scenes the course's diffusion models learn: one object, large and upright. The autoencoder, the judge and the
# text encoder learn every size and rotation; the generators get the slice that a 1M-parameter UNet learns on a
# laptop. At f = 4 a small object spans about 5x5 latent cells, too few for its corners, and every rotation is one
# more outline to learn (docs/experiments.md measures what each simplification buys).
COURSE_SCENES = {"sizes": ("large",), "upright": True}

# The course's retrieval database: course scenes of their own seed, disjoint from the training scenes (seed 0) and
# from the held-out ones (seed 1), as RDM keeps its database apart from its training set. 20k scenes embed in seconds.
COURSE_DATABASE = {"n": 20_000, "seed": 2}

# The peak lr of a finetune (``--init``) unless --lr says otherwise: a fifth of training from scratch, so the first
# steps do not wreck what the model knows; meant for a finetune in the same latent space (a new image size, more of
# the same data). A new domain in another autoencoder's latents is a larger move: there the course models learned
# faster at the from-scratch lr, 1e-3 (docs/experiments.md). Stable Diffusion's own finetunes use 1e-5 at batch 32
# to 128, a tenth of its pretraining lr.
FINETUNE_LR = 2e-4

# (shape, colour) pairs the text model never sees together in training: "a yellow triangle", "a blue star"
TEXT_HOLD_OUT = (label_of("triangle", "yellow"), label_of("star", "blue"))


def _command() -> str:
    return " ".join(["tinyldm", *sys.argv[1:]])


def held_out_scenes(size: int = 64, n: int = 256, max_objects: int = 2) -> torch.Tensor:
    """``[n, 3, size, size]`` scenes from seed 1, never seen in training (which uses seed 0)."""
    scenes = Scenes(size=size, length=n, seed=1, max_objects=max_objects)
    return torch.stack([scenes[i]["image"] for i in range(n)])


def _cropped(size: int):
    """autoencoder_loss on random ``size`` x ``size`` crops, drawn afresh every step from the step's generator."""
    def loss(model, batch, generator):
        return autoencoder_loss(model, random_crops(batch, size, generator), generator)
    return loss


def train_autoencoder(preset: str = "course", size: int = 64, crop: int | None = 32, whole_image_steps: int = 400,
                      max_objects: int = 2, n_images: int = 50_000, train_config: TrainConfig | None = None,
                      run_dir: str | Path | None = None, resume: bool = True, device=None,
                      out: str | Path | None = None, n_eval: int = 256, init: str | Path | None = None,
                      kl_weight: float | None = None, data: str = "scenes") -> tuple[Autoencoder, float]:
    """Train an autoencoder on procedural scenes (seed 0; or ``data``: "faces" or a folder of images, see
    :func:`image_data`), then fit its scale factor and measure its PSNR on held-out whole images.

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
    every = dict(max_objects=max_objects, sizes=SIZES, upright=False)  # the autoencoder sees every kind of scene
    train_set = image_data(data, size, n_images, **every)
    phases = [(autoencoder_loss, train_config.steps)]  # (loss, train until this step)
    if crop:
        phases.insert(0, (_cropped(crop), train_config.steps - whole_image_steps))
    with seeded(train_config.seed):
        model = Autoencoder.load(init) if init is not None else Autoencoder(AutoencoderConfig.preset(preset))
    if kl_weight is not None:
        model.config = dataclasses.replace(model.config, kl_weight=kl_weight)
    trainer = Trainer(model.train(), phases[0][0], train_set, train_config, out_dir=run_dir, resume=resume,
                      device=device)
    if trainer.step:
        print(f"resuming {run_dir} at step {trainer.step}")
    for loss_fn, until in phases:
        if trainer.step < until:
            trainer.loss_fn = loss_fn
            trainer.fit(steps=until - trainer.step)
    ae = (trainer.ema if trainer.ema is not None else trainer.model).cpu().eval()
    held = image_data(data, size, n_eval, split="held_out", **every)
    held_out = torch.stack([held[i]["image"] for i in range(len(held))])
    ae.fit_scale_factor(held_out)
    value = reconstruction_psnr(ae, held_out)
    if out is not None:
        ae.save(out, psnr=round(value, 3), steps=trainer.step, data=repr(train_set), image_size=size, crop=crop,
                whole_image_steps=whole_image_steps, init=str(init) if init is not None else None,
                seed=train_config.seed, command=_command())
    return ae, value


def train_judge(train_config: TrainConfig | None = None, n_images: int = 50_000, device=None,
                out: str | Path | None = None, n_eval: int = 1000, data: str = "scenes",
                init: str | Path | None = None) -> tuple[Judge, float]:
    """Train the judge of ``tinyldm.metrics`` on one-object 64 px scenes (seed 0; or ``data="faces"``: the face
    stand-in) and measure its accuracy (all attributes right) on held-out ones (seed 1); ``init`` goes on training a
    saved judge. Returns (judge, accuracy)."""
    if data not in ("scenes", "faces"):
        raise ValueError(f"the judge reads the procedural data's attributes: data must be 'scenes' or 'faces', "
                         f"got {data!r}")
    train_config = train_config or TrainConfig(steps=3000, batch_size=64, lr=2e-3, warmup_steps=50,
                                               ema_decay=None, grad_clip=None)
    one = dict(max_objects=1, sizes=SIZES, upright=False)  # a scene judge reads any one object
    train_set = image_data(data, 64, n_images, **one)
    with seeded(train_config.seed):
        judge = Judge.load(init) if init is not None else Judge(JudgeConfig() if data == "scenes"
                                                                 else JudgeConfig.faces())
    trainer = Trainer(judge, judge_loss, train_set, train_config, device=device)
    trainer.fit()
    judge = trainer.model.cpu().eval()
    held_out = image_data(data, 64, n_eval, split="held_out", **one)
    batch = default_collate([held_out[i] for i in range(n_eval)])
    acc = attribute_accuracy(judge, batch["image"], judged_attributes(batch))
    if out is not None:
        judge.save(out, accuracy=acc, steps=trainer.step, data=data, init=str(init) if init else None,
                   seed=train_config.seed, command=_command())
    return judge, acc["all"]


def train_text_encoder(train_config: TrainConfig | None = None, n_images: int = 50_000, max_objects: int = 2,
                       config: SceneCLIPConfig | None = None, device=None, out: str | Path | None = None,
                       n_eval: int = 512) -> tuple[SceneCLIP, float]:
    """Train the offline text encoder (:class:`tinyldm.text.SceneCLIP`) contrastively on (scene, caption)
    pairs (seed 0; 1 to ``max_objects`` objects). Returns (the model, its zero-shot accuracy: how often a
    held-out one-object scene is closest to the right one of the 24 prompts "a {colour} {shape}", chance 1/24)."""
    train_config = train_config or TrainConfig(steps=1000, batch_size=64, lr=1e-3, warmup_steps=50, ema_decay=None)
    data = Scenes(size=64, length=n_images, seed=0, max_objects=max_objects)
    with seeded(train_config.seed):
        model = SceneCLIP(config)
    trainer = Trainer(model, clip_loss, data, train_config, device=device)
    trainer.fit()
    model = trainer.model.cpu().eval()
    acc = zero_shot_accuracy(model, n_eval)
    if out is not None:
        model.save(out, zero_shot_accuracy=acc, n_eval=n_eval, steps=trainer.step, seed=train_config.seed,
                   command=_command())
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


def course_scenes(n: int, seed: int = 0, size: int = 64, max_objects: int = 1) -> Scenes:
    """The scenes the course's diffusion models learn (``COURSE_SCENES``): seed 0 is their training set, other seeds
    give real scenes of the same kind to compare samples with."""
    return Scenes(size=size, length=n, seed=seed, max_objects=max_objects, **COURSE_SCENES)


def _scenes_tag(scenes: Scenes) -> str:
    return (f"scenes{scenes.size}-{len(scenes)}-obj{scenes.max_objects}"
            + ("-" + "+".join(scenes.sizes) if scenes.sizes != SIZES else "") + ("-upright" if scenes.upright else ""))


def course_latents(ae: Autoencoder, n: int = 20_000, max_objects: int = 1, size: int = 64,
                   sizes: Sequence[str] = COURSE_SCENES["sizes"],
                   upright: bool = COURSE_SCENES["upright"]) -> LatentDataset:
    """Cached latents of the first ``n`` training scenes (seed 0), under ``build/latents/``; ``sizes`` and
    ``upright`` as in :class:`tinyldm.data.Scenes` (default: ``COURSE_SCENES``)."""
    scenes = Scenes(size=size, length=n, seed=0, max_objects=max_objects, sizes=sizes, upright=upright)
    return load_or_encode(ae, scenes, BUILD_DIR / "latents" / f"{_scenes_tag(scenes)}-{fingerprint(ae)}")


class Part(Subset):
    """Some items of a dataset, with a repr that names them: ``what`` says which (the cache key of their latents)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], what: str):
        super().__init__(dataset, list(indices))
        self.what = what

    def __repr__(self) -> str:
        return f"{self.dataset!r}[{self.what}]"


def _folder_split(folder: ImageFolder, split: str) -> Part:
    """A folder's training images or its held-out ones: the last tenth in sorted order (of each class subfolder, with
    labels from folders) is held out; for FFHQ that is its own split (images 60000-69999 validate)."""
    groups: dict[int, list[int]] = {}
    for i, path in enumerate(folder.paths):
        label = folder.classes.index(path.relative_to(folder.root).parts[0]) if folder.labels_from_folders else 0
        groups.setdefault(label, []).append(i)
    train, held = [], []
    for members in groups.values():
        cut = len(members) - len(members) // 10
        train += members[:cut]
        held += members[cut:]
    if split == "held_out" and not held:
        raise ValueError(f"{folder.root} has {len(folder)} images, too few to hold a tenth out for evaluation")
    return Part(folder, sorted(train if split == "train" else held), f"{split} split")


def image_data(data: str = "scenes", size: int = 64, n: int | None = 20_000, split: str = "train",
               max_objects: int = 1, sizes: Sequence[str] = COURSE_SCENES["sizes"],
               upright: bool = COURSE_SCENES["upright"], caption: str = "", labels_from_folders: bool = False,
               parsing: str | Path | None = None) -> Dataset:
    """The images a run learns from (``split="train"``) or is measured on (``"held_out"``), at ``size`` px:

    * ``"scenes"``: the course scenes (seed 0 to train, seed 1 held out; ``max_objects``, ``sizes``, ``upright`` as
      in :class:`tinyldm.data.Scenes`);
    * ``"faces"``: the procedural face stand-in (:class:`tinyldm.data.Faces`, seed 0 / seed 1);
    * a folder of images (FFHQ, CelebA-HQ, yours: :class:`tinyldm.data.ImageFolder`, resized and centre-cropped),
      whose last tenth is held out; ``caption`` for images without a ``.txt`` beside them, and with
      ``labels_from_folders`` each image's subfolder is its class.

    ``n``: at most this many images (the first n, or n spread evenly over a folder; None: all of a folder)."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    seed = 0 if split == "train" else 1
    if data == "scenes":
        return Scenes(size=size, length=n or 20_000, seed=seed, max_objects=max_objects, sizes=sizes, upright=upright)
    if data == "faces":
        return Faces(size=size, length=n or 20_000, seed=seed)
    if not Path(data).is_dir():
        raise ValueError(f"data must be 'scenes', 'faces' or a folder of images, got {data!r} (no such folder)")
    images = _folder_split(ImageFolder(data, size, caption=caption, labels_from_folders=labels_from_folders,
                                       parsing=parsing), split)
    if n is None or n >= len(images):
        return images
    # n spread evenly over the split, so that every class subfolder (and every part of FFHQ) is in it
    keep = np.linspace(0, len(images) - 1, n).round().astype(int)
    return Part(images.dataset, [images.indices[i] for i in keep], f"{n} evenly spaced of the {split} split")


def _base(images: Dataset) -> Dataset:
    """The dataset a (nested) Subset, or the masked copies or parsing maps of :mod:`tinyldm.inpaint`, takes its items
    from."""
    while isinstance(images, (Subset, MaskedImages, ParsingMaps)):
        images = images.dataset if isinstance(images, Subset) else images.images
    return images


def num_classes_of(images: Dataset) -> int:
    """How many class labels a dataset of :func:`image_data` has (24 scenes classes, the face classes, or a folder's
    subfolders)."""
    images = _base(images)
    if isinstance(images, Scenes):
        return NUM_CLASSES
    if isinstance(images, Faces):
        return NUM_FACE_CLASSES
    if isinstance(images, ImageFolder) and images.labels_from_folders:
        return len(images.classes)
    raise ValueError(f"{images!r} has no class labels (a folder needs labels_from_folders=True: one subfolder per "
                     f"class)")


def cached_latents(ae: Autoencoder, images: Dataset, flip: bool = False, progress: bool = True,
                   keep: tuple[str, ...] = ()) -> LatentDataset:
    """The latents of ``images`` (from :func:`image_data`, or its masked copies or parsing maps) encoded once by
    ``ae`` and cached under ``build/latents/`` (a folder per dataset and autoencoder; an interrupted encoding
    resumes), with the items' tensors named in ``keep``. Folders of real images are kept in float16 (FFHQ at 512 px:
    2.3 GB), the procedural data in float32."""
    base = _base(images)
    wrapper = {MaskedImages: "masked-", ParsingMaps: "parsing-"}.get(type(images), "")
    tag = f"{wrapper}{type(base).__name__.lower()}-{hashlib.sha256(repr(images).encode()).hexdigest()[:12]}"
    real = not isinstance(base, (Scenes, Faces))
    return load_or_encode(ae, images, BUILD_DIR / "latents" / f"{tag}{'-flip' if flip else ''}-{fingerprint(ae)}",
                          flip=flip, keep=keep,
                          dtype=torch.float16 if real else torch.float32, progress=progress,
                          num_workers=2 if real else 0)


def course_database(encoder: ImageEncoder, n: int = COURSE_DATABASE["n"], seed: int = COURSE_DATABASE["seed"],
                    progress: bool = True, **scenes) -> Database:
    """The retrieval database of the course: ``n`` course scenes of ``seed`` (keyword arguments as
    :func:`course_scenes`) embedded by ``encoder``, cached under ``build/retrieval/``."""
    data = course_scenes(n, seed, **scenes)
    path = BUILD_DIR / "retrieval" / f"db-{_scenes_tag(data)}-seed{seed}-{encoder.fingerprint}.safetensors"
    with distributed.main_first():  # in a distributed run process 0 builds it, the others load it
        return _load_or_build(encoder, data, path, progress)


def _load_or_build(encoder: ImageEncoder, data: Scenes, path: Path, progress: bool) -> Database:
    if path.exists():
        try:
            db = Database.load(path)
            if db.info.get("dataset") == repr(data) and db.info.get("encoder_fingerprint") == encoder.fingerprint:
                return db
        except CheckpointError:
            pass  # damaged: build it again
    db = Database.build(encoder, data, progress=progress)
    db.save(path)
    return db


def course_neighbours(encoder: ImageEncoder, scenes: Scenes, db: Database, k: int = 20, exclude_self: bool = False,
                      max_similarity: float | None = None) -> torch.Tensor:
    """The ``k`` nearest rows of ``db`` for each of ``scenes`` ``[n, k]``, computed once and cached beside the
    latents (``build/latents/``)."""
    tag = f"{_scenes_tag(scenes)}-seed{scenes.seed}-db{db.fingerprint}-k{k}" + ("-noself" if exclude_self else "") + (
        f"-max{max_similarity}" if max_similarity is not None else "")
    with distributed.main_first():
        return load_or_compute_neighbours(encoder, scenes, db, BUILD_DIR / "latents" / f"neighbours-{tag}.safetensors",
                                          k, exclude_self, max_similarity)[1]


def retrieval_queries(encoder: ImageEncoder, db: Database, labels: torch.Tensor, k: int = 4, seed: int = 1
                      ) -> torch.Tensor:
    """Neighbours ``[n, k, d]`` in ``db`` of held-out course scenes of the given classes, one fresh scene per label
    (scenes of ``seed``, in order, the first of each class not yet used): the condition "something like this
    scene", whose class the samples should show."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    want = {int(c): int((labels == c).sum()) for c in labels.unique()}
    found: dict[int, list[int]] = {c: [] for c in want}
    scenes, i = course_scenes(100 * max(1, len(labels)), seed), 0
    while any(len(found[c]) < want[c] for c in want):
        first = scenes.objects(i)[0][0]  # the scene's first object gives its label, without rendering it
        label = label_of(first.shape, first.color)
        if label in want and len(found[label]) < want[label]:
            found[label].append(i)
        i += 1
    take = {c: iter(v) for c, v in found.items()}
    images = torch.stack([scenes[next(take[int(c)])]["image"] for c in labels])
    _, rows = db.search(encoder.embed(images), k, encoder=encoder)
    return db.neighbours(rows)


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


class FSDCurve:
    """Trainer callback: every ``every`` steps, the FSD of ``n`` samples of the EMA model (DDIM, ``steps`` steps,
    fixed noise; a class model's guided with s = 3, its labels in turn) to ``reference`` images ``[m, 3, H, W]`` (their size is the samples' size), in ``judge``'s feature
    space. ``curve`` holds (step, FSD) pairs: how fast a run gets good, in the measure that counts. With ``log`` (a
    .jsonl file) every point is also appended there, so the curve of a resumed run is whole."""

    def __init__(self, ae: Autoencoder, judge: Judge, reference: torch.Tensor, every: int, n: int = 256,
                 steps: int = 20, seed: int = 1, log: str | Path | None = None):
        self.ae, self.judge, self.reference, self.every = ae, judge, reference, every
        self.n, self.steps, self.seed, self.curve = n, steps, seed, []
        self.log = Path(log) if log is not None else None

    def measure(self, model: UNet, step: int, device=None) -> float:
        size = self.reference.shape[-1]
        cond = null = None
        if model.config.num_classes is not None:  # a class model: labels in turn, guided with s = 3
            condition = LabelCondition(model.config.num_classes)
            cond, null = condition.given(torch.arange(self.n) % model.config.num_classes), condition.null(self.n)
        images = generate(model.eval(), self.ae, cond, null, s=3.0, n=self.n,
                          sampler=DDIM(model.schedule, steps=self.steps), seed=self.seed,
                          latent_shape=self.ae.latent_shape((1, 3, size, size))[1:], device=device)
        value = fsd(self.judge, images, self.reference)
        self.curve.append((step, value))
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "a") as f:
                f.write(json.dumps({"step": step, "fsd": round(value, 4), "n": self.n}) + "\n")
        return value

    def __call__(self, trainer: Trainer, step: int) -> None:
        if step % self.every == 0:
            self.measure(trainer.ema or trainer.model, step, trainer.device)


@torch.no_grad()
def sample_test(model: UNet, ae: Autoencoder, judge: Judge, text_encoder: SceneCLIP | None = None,
                per_class: int = 10, s: float = 3.0, steps: int = 20, seed: int = 1, device=None,
                image_encoder: ImageEncoder | None = None, database: Database | None = None) -> dict:
    """The course's test of a trained UNet: ``per_class`` samples for each of the 24 classes (DDIM with ``steps``,
    guided with scale ``s``), read by the judge. The same call, seed and size give the same samples.

    Class model: label y; text model: the prompt "a {colour} {shape}" (needs ``text_encoder``); retrieval model:
    the k neighbours in ``database`` (made by ``image_encoder``) of a held-out scene of the class; unconditional
    model: as many samples, unguided. Returns ``{"n", "all", "shape", "color"}`` (shares; "all" = shape and colour
    both right) for a conditional model, and for a text model with held-out labels the same over them as
    ``"held_out"``; for an unconditional model ``{"n", "shapes"}``: the share of samples the judge reads as each
    shape (the data has each in a quarter of its scenes)."""
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    n, sampler = len(labels), DDIM(model.schedule, steps=steps)
    shape = ae.latent_shape((1, 3, judge.config.image_size, judge.config.image_size))[1:]  # the judge's scenes
    if model.config.num_classes is not None:
        condition = LabelCondition(model.config.num_classes)
        cond, null = condition.given(labels), condition.null(n)
    elif getattr(model, "info", {}).get("condition") == "retrieval":
        if image_encoder is None or database is None:
            raise ValueError("this UNet is retrieval-conditional: pass the image_encoder its file was trained with "
                             "and a database made by it")
        condition = RetrievalCondition(database.dim, model.info.get("k", 4))
        cond = condition.given(retrieval_queries(image_encoder, database, labels, condition.k))
        null = condition.null(n)
    elif model.config.context_dim is not None:
        if text_encoder is None:
            raise ValueError("this UNet is text-conditional: pass the text_encoder its file was trained with")
        condition = TextCondition(text_encoder)
        cond, null = condition.given([f"a {class_name(int(y))}" for y in labels]), condition.null(n)
    else:
        images = generate(model, ae, n=n, sampler=sampler, seed=seed, latent_shape=shape, device=device)
        read = judge.predict(images)["shape"]
        return {"n": n, "shapes": {name: (read == i).float().mean().item() for i, name in enumerate(SHAPES)}}
    images = generate(model, ae, cond, null, s=s, sampler=sampler, seed=seed, latent_shape=shape, device=device)
    truth = class_attributes(labels)
    result = {"n": n, **attribute_accuracy(judge, images, truth)}
    held = torch.isin(labels, torch.as_tensor(getattr(model, "info", {}).get("hold_out") or [], dtype=torch.long))
    if held.any():
        result["held_out"] = {"n": int(held.sum()), **attribute_accuracy(judge, images[held], truth[held])}
    return result


@torch.no_grad()
def face_test(model: UNet, ae: Autoencoder, judge: Judge, n: int = 256, image_size: int | None = None,
              s: float = 3.0, steps: int = 20, seed: int = 1, device=None, reference: torch.Tensor | None = None
              ) -> dict:
    """The test of a UNet trained on the face stand-in: ``n`` samples (DDIM with ``steps``; a class model guided
    with scale ``s``, labels cycling through the classes) at ``image_size`` px (default: the size it was trained
    at), and their Frechet distance in the face judge's feature space (FSD) to ``n`` held-out faces (seed 1) of that
    size (or to ``reference`` images). Class models also get the judge's reading of the asked attributes.
    Returns ``{"n", "image_size", "fsd"}`` (+ ``"class"``: shares right)."""
    size = image_size or getattr(model, "info", {}).get("image_size", 64)
    if reference is None:
        held = Faces(size=size, length=n, seed=1)
        reference = torch.stack([held[i]["image"] for i in range(n)])
    shape = ae.latent_shape((1, 3, size, size))[1:]
    sampler, result = DDIM(model.schedule, steps=steps), {"n": n, "image_size": size}
    if model.config.num_classes is not None:
        condition = LabelCondition(model.config.num_classes)
        labels = torch.arange(n) % model.config.num_classes
        images = generate(model, ae, condition.given(labels), condition.null(n), s=s, sampler=sampler, seed=seed,
                          latent_shape=shape, device=device)
        # a face class is (hair colour, mouth): label = hair_color * len(mouths) + mouth
        hair, mouth = labels.div(len(FACE_ATTRIBUTES["mouth"]), rounding_mode="floor"), labels % len(
            FACE_ATTRIBUTES["mouth"])
        wanted = torch.full((n, len(judge.config.names)), -1, dtype=torch.long)
        wanted[:, judge.config.names.index("hair_color")] = hair
        wanted[:, judge.config.names.index("mouth")] = mouth
        result["class"] = attribute_accuracy(judge, images, wanted)
    else:
        images = generate(model, ae, n=n, sampler=sampler, seed=seed, latent_shape=shape, device=device)
    result["fsd"] = fsd(judge, images, reference)
    return result


def without_labels(dataset: LatentDataset | WithNeighbours, labels: Sequence[int]) -> Dataset:
    """The items of ``dataset`` whose class label is not in ``labels`` (to hold combinations out of training)."""
    keep = ~torch.isin(dataset.labels, torch.as_tensor(list(labels), dtype=torch.long))
    return Subset(dataset, keep.nonzero().flatten().tolist())


def _check_condition(condition: str) -> None:
    if condition not in CONDITIONS:
        raise ValueError(f"expected condition one of {', '.join(map(repr, CONDITIONS))}, got {condition!r}")


def freeze_parameters(model: torch.nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Keep the parameters whose names start with one of ``prefixes`` (e.g. ``("down", "mid")``) fixed in training
    (``requires_grad=False``; the Trainer's optimizer skips them). Returns the prefixes; an unknown one is an error."""
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        hit = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hit:
            tops = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"freeze: no parameters named {prefix!r}; the model's parts are {', '.join(tops)} "
                             f"(or deeper names such as {names[0]!r})")
        for name, p in model.named_parameters():
            if name in hit:
                p.requires_grad_(False)
    return list(prefixes)


def unet_needs(condition: str, latent_channels: int, schedule: ScheduleConfig, context_dim: int | None = None,
               num_classes: int | None = None) -> dict:
    """The UNetConfig fields that a diffusion run fixes, whatever the preset: the latent channels, the noise schedule
    (with the eps skip) and what the condition needs, and that it needs nothing else. A preset's own cross-attention
    width (sd_v1's 768 for CLIP) is dropped for an unconditional or class-conditional run, and a class table exists
    only for class labels."""
    _check_condition(condition)
    if (condition in ("text", "retrieval")) != (context_dim is not None):
        raise ValueError(f"context_dim (the width of the text encoder's states or of the retrieved embeddings) goes "
                         f"with condition 'text' or 'retrieval' only; got condition {condition!r} and "
                         f"context_dim={context_dim!r}")
    return {"in_channels": latent_channels, "out_channels": latent_channels, "schedule": schedule.to_dict(),
            "eps_skip": True, "num_classes": (num_classes or NUM_CLASSES) if condition == "class" else None,
            "context_dim": context_dim}


def train_diffusion(ae: Autoencoder, preset: str = "course", n_images: int = 20_000, max_objects: int = 1,
                    train_config: TrainConfig | None = None, schedule: ScheduleConfig | None = None,
                    run_dir: str | Path | None = None, resume: bool = True, device=None,
                    out: str | Path | None = None, sample_every: int = 0, condition: str = "none",
                    text_encoder=None, p_uncond: float = 0.1, hold_out: Sequence[int] = (),
                    snr_gamma: float | None = None, init: str | Path | None = None, x0_cap: float | None = None,
                    sizes: Sequence[str] = COURSE_SCENES["sizes"],
                    upright: bool = COURSE_SCENES["upright"], image_encoder: ImageEncoder | None = None,
                    k: int = 4, database: Database | None = None, exclude_self: bool = False,
                    max_similarity: float | None = None, data: str = "scenes", image_size: int = 64,
                    flip: bool = False, caption: str = "", freeze: Sequence[str] = (),
                    callbacks: Sequence = (), gradient_checkpointing: bool = False, concat: str = "none",
                    masks: MaskConfig | None = None, mask_variants: int = 4,
                    parsing_maps: str | Path | None = None) -> tuple[UNet, Trainer]:
    """Train an eps-prediction UNet (Algorithm 1) on cached latents of ``ae``.

    ``condition``: "none" (unconditional, ``model(x_t, t)``), "class" (class labels y, with a null label) or
    "text" (captions through the frozen ``text_encoder``, by cross-attention). Conditional models drop y to
    null with probability ``p_uncond`` so they can be guided. ``schedule``: the noise schedule (default DDPM's
    linear one), saved in the UNet's config so that sampling uses it. ``snr_gamma``: Min-SNR loss weighting;
    ``x0_cap``: the x_0 error where noise dominates (see EpsLoss). ``hold_out``: class labels (shape-colour pairs) left out of training, to test generalisation to new
    combinations. ``sizes`` / ``upright``: which scenes to learn (see :class:`tinyldm.data.Scenes`; default:
    ``COURSE_SCENES``). ``init``: go on training a saved UNet (its file gives the network; ``preset`` is then not used)
    with a fresh optimizer and lr schedule. The recipe's UNets use the eps skip (see :class:`tinyldm.unet.UNet`).

    "retrieval" (RDM): each training image's ``k`` nearest neighbours in ``database`` (default: the course database,
    :func:`course_database`, disjoint from the training scenes), embedded by ``image_encoder``, found once and cached,
    are the context the UNet cross-attends to; dropped to zeros with probability ``p_uncond``. A database made from
    the training scenes themselves needs ``exclude_self=True`` (and ``max_similarity`` for near duplicates), or the
    model learns to copy its first neighbour.

    Other data (``data``): "faces" (the face stand-in) or a folder of images, at ``image_size`` px (``n_images`` of
    them at most; ``flip`` adds mirrored copies; ``caption`` for a folder's images without a caption file), with
    condition "none", "class" (the faces' classes, or a folder's subfolders) or "text" (their captions).

    Finetuning: ``init`` a UNet trained on other data or at another image size (the UNet is convolutional: the same
    weights run at any size that is a multiple of its downsampling), usually with a lower lr, a warm-up and EMA;
    ``freeze`` names parts that keep their weights (prefixes of parameter names, such as ``"down"``, ``"mid"`` or
    ``"time_embed"``). ``schedule`` defaults to the ``init`` model's own. ``gradient_checkpointing`` keeps only each
    block's input for the backward pass and recomputes the rest (about a third more compute, far less activation
    memory: what Stable Diffusion's UNet needs to train at 512 px on one GPU).

    Finetuning with masks (``concat``, :mod:`tinyldm.inpaint`): ``"inpaint"`` trains an inpainting model, whose input is
    [z_t, mask, latent of the masked image]; ``"parsing"`` one that follows a face-parsing map (the faces' part masks
    averaged to the latent grid, dropped to zeros with ``p_uncond``). An ``init`` without the extra input channels
    gets them zero-initialised (:func:`tinyldm.inpaint.inpainting_unet`), so the finetune starts at the base model.
    Inpainting masks come from ``masks`` (a :class:`tinyldm.data.MaskConfig`; default: its mix, with everything
    masked in a quarter; a folder of photos has no objects to mask, so its default leaves them out),
    ``mask_variants`` masked copies of every image, encoded once into the latent cache. A folder's parsing maps come
    from ``parsing_maps``, CelebAMask-HQ's annotations (:class:`tinyldm.data.ImageFolder`).

    Returns (the EMA model on the CPU, the trainer); with ``out`` also saves the EMA model there, together with the
    fingerprints of the autoencoder whose latents it learned (and of the text encoder), checked when it is loaded.
    """
    _check_condition(condition)
    device = distributed.setup(device if device is not None else default_device())  # this process's device
    if concat not in ("none", *CONCAT_KINDS):
        raise ValueError(f"expected concat one of 'none', {', '.join(map(repr, CONCAT_KINDS))}, got {concat!r}")
    if concat != "none" and condition == "retrieval":
        raise ValueError(f"concat={concat!r} does not go with condition 'retrieval'")
    train_config = train_config or TrainConfig(steps=8000, batch_size=64, lr=1e-3, warmup_steps=200,
                                               ema_decay=0.999)
    unet, facts = None, {}
    if init is not None:
        # a finetune may move a model into another autoencoder's latent space (a new domain needs its own
        # autoencoder, notebook 09): allowed, and said
        unet = UNet.load(init, autoencoder=ae, allow_other_autoencoder=True)
        if unet.info.get("autoencoder") not in (None, fingerprint(ae)):
            print(f"finetuning {init}, trained in the latents of autoencoder {unet.info['autoencoder']}, in the latents "
                  f"of autoencoder {fingerprint(ae)}")
            facts["init_autoencoder"] = unet.info["autoencoder"]
        unet.info = {**unet.info, "autoencoder": fingerprint(ae)}  # from here on it works in ae's latents
    schedule = NoiseSchedule(schedule or (ScheduleConfig(**unet.config.schedule) if unet is not None
                                          else ScheduleConfig.ddpm()))
    if parsing_maps is not None and data in ("scenes", "faces"):
        raise ValueError(f"parsing_maps annotate a folder of photos; data {data!r} brings its own part masks")
    pixels = image_data(data, image_size, n_images, max_objects=max_objects, sizes=sizes, upright=upright,
                        caption=caption, labels_from_folders=condition == "class", parsing=parsing_maps)
    if data == "scenes" and image_size == 64 and not flip and concat != "parsing":
        latents = course_latents(ae, n_images, max_objects, sizes=sizes, upright=upright)  # the same scenes as pixels
        images = latents  # the scenes' labels, captions and attributes are cached with their latents
    else:
        if condition == "retrieval":
            raise ValueError("condition='retrieval' uses the course database of 64 px scenes: data must be 'scenes' "
                             f"at image_size 64, got data={data!r}, image_size={image_size}")
        if concat != "none" and flip:
            raise ValueError(f"flip mirrors the images, not their masks or maps: concat={concat!r} trains without it")
        images = pixels
        # a parsing model's latents carry their maps (the part masks on the latent grid)
        latents = (cached_latents(ae, ParsingMaps(pixels, ae.f), keep=("map",)) if concat == "parsing"
                   else cached_latents(ae, pixels, flip=flip))
    train_set, shape = latents, tuple(latents.shape)
    concat_condition = None
    if concat == "inpaint":
        if masks is None:  # photos come without the object and part masks of the procedural data
            masks = MaskConfig() if data in ("scenes", "faces") else MaskConfig(object=0)
        elif masks.object > 0 and data not in ("scenes", "faces"):
            raise ValueError(f"masks of kind 'object' need the procedural data's object or part masks; {data} is a "
                             f"folder of photos: give masks with object=0")
        masked = cached_latents(ae, MaskedImages(pixels, MaskGenerator(masks, train_config.seed), mask_variants, ae.f),
                                keep=MaskedImages.KEEP)
        train_set = InpaintingLatents(latents, masked)
        # the mask and the known latent are never dropped: every sample must respect them
        concat_condition = ConcatCondition(("mask", "masked_latent"))
        facts.update(masks=masks.to_dict(), mask_variants=mask_variants, masked=repr(masked))
    elif concat == "parsing":
        concat_condition = ConcatCondition(("map",), p_uncond)  # the map is dropped to zeros, to be guided
    n_grid, condition_, cond, null, context_dim = 16, None, None, None, None
    num_classes = None
    if condition == "class":
        num_classes = NUM_CLASSES if images is latents else num_classes_of(images)
        condition_ = LabelCondition(num_classes, p_uncond)
        cond, null = condition_.given(torch.arange(n_grid) % num_classes), condition_.null(n_grid)
    elif condition == "text":
        if text_encoder is None:
            raise ValueError("condition='text' needs a text_encoder (see tinyldm.text)")
        text_encoder.to(torch.device(device) if device is not None else default_device())  # where the UNet trains
        # CLIP's hidden states go in unmasked, as Stable Diffusion was trained on them (padding states included)
        condition_ = TextCondition(text_encoder, p_uncond, use_mask=not isinstance(text_encoder, CLIPTextEncoder))
        prompts = ([f"a {class_name(c % NUM_CLASSES)}" for c in range(n_grid)] if data == "scenes"
                   else [latents.captions[i % latents.n] for i in range(n_grid)])
        cond, null = condition_.given(prompts), condition_.null(n_grid)
        context_dim, facts["text_encoder"] = text_encoder.dim, fingerprint(text_encoder)
    elif condition == "retrieval":
        if image_encoder is None:
            raise ValueError("condition='retrieval' needs an image_encoder (see tinyldm.retrieval)")
        db = database if database is not None else course_database(image_encoder)
        scenes = Scenes(size=64, length=n_images, seed=0, max_objects=max_objects, sizes=sizes, upright=upright)
        # RDM caches 20 neighbours and keeps the first k (fewer when the database is that small)
        rows = course_neighbours(image_encoder, scenes, db, max(k, min(20, len(db))), exclude_self, max_similarity)
        train_set = WithNeighbours(latents, db, rows)
        condition_ = RetrievalCondition(db.dim, k, p_uncond)
        cond = condition_.given(retrieval_queries(image_encoder, db, torch.arange(n_grid) % NUM_CLASSES, k))
        null, context_dim = condition_.null(n_grid), db.dim
        facts.update(image_encoder=image_encoder.fingerprint, k=k, exclude_self=exclude_self,
                     max_similarity=max_similarity,
                     database={"n": len(db), "dim": db.dim, "fingerprint": db.fingerprint,
                               "dataset": db.info.get("dataset"), "course": database is None})
    if concat_condition is not None:
        # the grid's extra channels: those of the first training items (a masked scene; a face's map); for inpainting
        # they are no condition to guide away from, so the null half keeps them
        grid = default_collate([train_set[i % len(train_set)] for i in range(n_grid)])
        given = concat_condition.given(*(grid[key] for key in concat_condition.keys))
        cond, null = {**(cond or {}), **given}, {**(null or {}), **(given if concat == "inpaint" else
                                                                      concat_condition.null(given))}
        condition_ = Conditions(condition_, concat_condition) if condition_ is not None else concat_condition
    if hold_out:
        train_set = without_labels(train_set, hold_out)
    needs = unet_needs(condition, shape[0], schedule.config, context_dim, num_classes)
    if concat != "none":
        needs["in_channels"] = shape[0] + concat_channels(concat, shape[0], ae.f)
    if unet is not None:
        if concat != "none" and concat_kind(unet) is None:
            print(f"finetuning {init} with {concat} channels: {concat_channels(concat, shape[0], ae.f)} input channels "
                  f"added, zero-initialised (the model starts as the base)")
            facts["base"] = str(init)  # the plain model it grew from: the baselines' model (tinyldm evaluate)
            unet = inpainting_unet(unet) if concat == "inpaint" else parsing_unet(unet, ae.f)
        elif concat_kind(unet) != (None if concat == "none" else concat):
            raise ValueError(f"{init} has {concat_kind(unet)!r} input channels; this run trains concat={concat!r}")
        elif concat != "none" and unet.info.get("base"):
            facts["base"] = unet.info["base"]  # going on with a finetune: its base stays the base
        if needs["num_classes"] is not None and unet.config.num_classes != needs["num_classes"]:
            print(f"finetuning {init} on {needs['num_classes']} classes (it has {unet.config.num_classes}): a new class "
                  f"table, each row starting as its null label")
            unet = unet.with_num_classes(needs["num_classes"])
        for name, value in needs.items():
            # the eps skip is how a model is parametrised, not what the run needs: a finetune keeps the init's
            if name != "eps_skip" and getattr(unet.config, name) != value:
                raise ValueError(f"{init} does not fit this run: {name} is {getattr(unet.config, name)!r} there, "
                                 f"this run needs {value!r}")
    else:
        with seeded(train_config.seed):
            unet = UNet(UNetConfig.preset(preset, **needs))  # every preset, told what this run needs
    if shape[1] % unet.config.downsample or shape[2] % unet.config.downsample:
        raise ValueError(f"latents {list(shape)} do not fit the UNet, whose height and width must be multiples of "
                         f"{unet.config.downsample}: choose image_size a multiple of "
                         f"{unet.config.downsample * ae.f}")
    frozen = freeze_parameters(unet, freeze)
    unet.gradient_checkpointing = gradient_checkpointing  # recompute activations in the backward pass: less memory
    callbacks = list(callbacks) + ([SampleGrids(ae, schedule, Path(run_dir) / "samples", sample_every, shape, n_grid,
                                                cond=cond, null=null)] if sample_every and run_dir is not None else [])
    trainer = Trainer(unet, EpsLoss(schedule, condition=condition_, snr_gamma=snr_gamma, x0_cap=x0_cap), train_set,
                      train_config, out_dir=run_dir, resume=resume, device=device, callbacks=callbacks)
    if trainer.step:
        print(f"resuming {run_dir} at step {trainer.step}")
    trainer.fit()
    model = (trainer.ema if trainer.ema is not None else trainer.model).cpu().eval()
    # what a loaded file's model.info holds; set here too, so a model used straight away has the same facts
    if concat != "none":
        facts["concat"] = concat
    model.info = dict(autoencoder=fingerprint(ae), steps=trainer.step, data=repr(latents),
                      scenes=latents.info["dataset"], source=data, image_size=image_size, flip=flip, frozen=frozen,
                      condition=condition,
                      p_uncond=p_uncond, hold_out=list(hold_out), snr_gamma=snr_gamma, x0_cap=x0_cap,
                      init=str(init) if init is not None else None, **facts,
                      final_loss=sum(h["loss"] for h in trainer.history[-100:]) / max(1, len(trainer.history[-100:])),
                      seed=train_config.seed, command=_command())
    if out is not None:
        if distributed.is_main():
            model.save(out, **model.info)
        distributed.barrier()
        model.info["path"] = str(out)
    return model, trainer


# -- finetuning with masks: the segmenter, and the tests of inpainting and parsing models ------------------------------

def train_segmenter(train_config: TrainConfig | None = None, n_images: int = 50_000, device=None,
                    out: str | Path | None = None, n_eval: int = 500, init: str | Path | None = None
                    ) -> tuple[Segmenter, float]:
    """Train the face-parsing :class:`tinyldm.metrics.Segmenter` on 64 px faces of the stand-in (seed 0) and measure
    its mean IoU against the true maps of held-out faces (seed 1). Returns (segmenter, mean IoU)."""
    train_config = train_config or TrainConfig(steps=2000, batch_size=32, lr=2e-3, warmup_steps=50, ema_decay=None)
    with seeded(train_config.seed):
        model = Segmenter.load(init) if init is not None else Segmenter(SegmenterConfig())
    trainer = Trainer(model, segmenter_loss, Faces(size=64, length=n_images, seed=0), train_config, device=device)
    trainer.fit()
    model = trainer.model.cpu().eval()
    held = Faces(size=64, length=n_eval, seed=1)
    batch = default_collate([held[i] for i in range(n_eval)])
    result = mean_iou(model.predict(batch["image"]), batch["masks"].argmax(1))
    if out is not None:
        model.save(out, miou=round(result["miou"], 4), parts={k: round(v, 4) for k, v in result["parts"].items()},
                   steps=trainer.step, n_eval=n_eval, init=str(init) if init else None, seed=train_config.seed,
                   command=_command())
    return model, result["miou"]


# the masks the inpainting test cuts out of held-out images, one row of its table each
INPAINT_TEST_MASKS = ("object", "boxes", "strokes", "outpaint")


def _held_out(model: UNet, n: int) -> tuple[Dataset, str]:
    """Held-out images (seed 1) of the data a model was trained on: the course scenes or the faces."""
    source = (getattr(model, "info", None) or {}).get("source", "scenes")
    size = (getattr(model, "info", None) or {}).get("image_size", 64)
    if source not in ("scenes", "faces"):
        raise ValueError(f"the model was trained on {source!r}; its test needs the procedural scenes or faces")
    return (course_scenes(n, seed=1, size=size) if source == "scenes" else Faces(size=size, length=n, seed=1)), source


def _conditions(model: UNet, labels: torch.Tensor, captions: Sequence[str], text_encoder=None):
    """The (cond, null) model inputs that ask ``model`` for these labels or captions (None, None: unconditional)."""
    if model.config.num_classes is not None:
        condition = LabelCondition(model.config.num_classes)
        return condition.given(labels), condition.null(len(labels))
    if model.config.context_dim is not None:
        if text_encoder is None:
            raise ValueError("this UNet is text-conditional: pass the text_encoder it was trained with")
        condition = TextCondition(text_encoder)
        return condition.given(list(captions)), condition.null(len(captions))
    return None, None


@torch.no_grad()
def inpainting_test(model: UNet, base: UNet, ae: Autoencoder, judge: Judge, n: int = 64,
                    kinds: Sequence[str] = INPAINT_TEST_MASKS, methods: Sequence[str] = METHODS, s: float = 3.0,
                    steps: int = 20, seed: int = 1, jump: int = 5, resample: int = 5, text_encoder=None,
                    device=None, progress: bool = False, images: dict | None = None) -> dict:
    """The inpainting model against the training-free baselines on the same holes, guidance and base model.

    ``n`` held-out images (seed 1) of the data ``model`` was trained on; for each mask kind of ``kinds`` a hole of
    that kind in each image (:class:`tinyldm.data.MaskGenerator` with ``seed``), filled by each method of ``methods``:
    ``"model"`` (the inpainting model), ``"blend"`` and ``"repaint"`` (``base``, the plain model, forced to the known
    part), each asked for the image's own class (or caption) with guidance ``s``, DDIM with ``steps``. Returns
    ``{kind: {method: scores}}`` with the scores of :func:`tinyldm.inpaint.inpainting_scores` against the true
    images: error in the hole in pixels and in the judge's features, the seam, and for a scene's object cut out,
    whether the judge reads the asked shape and colour in the fill; plus ``evals``, model evaluations per image.
    ``images``: a dict that receives the pictures, ``images[kind]`` = {"truth", "mask", and one entry per method}."""
    held, source = _held_out(model, n)
    items = [held[i] for i in range(n)]
    x = torch.stack([it["image"] for it in items])
    labels = torch.tensor([it["label"] for it in items])
    table: dict = {}
    for kind in kinds:
        generator = MaskGenerator(MaskConfig.only(kind), seed=seed)
        masks = torch.stack([generator(i, item=it) for i, it in enumerate(items)])
        asked = class_attributes(labels) if kind == "object" and source == "scenes" else None
        table[kind] = {}
        for method in methods:
            net = model if method == "model" else base
            cond, null = _conditions(net, labels, [it["caption"] for it in items], text_encoder)
            result = inpaint(net, ae, x, masks, cond, null, s=s, method=method, sampler=DDIM(net.schedule, steps),
                             seed=seed, jump=jump, resample=resample, device=device, progress=progress)
            table[kind][method] = {**inpainting_scores(result.images, x, masks, judge, asked), "evals": result.evals}
            if images is not None:
                images.setdefault(kind, {"truth": x, "mask": masks})[method] = result.images
    return table


@torch.no_grad()
def parsing_test(model: UNet, ae: Autoencoder, segmenter: Segmenter, n: int = 256, s: float = 3.0, steps: int = 20,
                 seed: int = 1, device=None) -> dict:
    """How closely a mask-conditioned face model follows its maps: ``n`` held-out faces (seed 1) give their parsing
    maps (and, for a class model, their labels); the model draws a face for each map (guided with ``s``, DDIM with
    ``steps``); the segmenter reads the parts of the samples and of the real faces, each against the true maps.
    Returns ``{"n", "samples": mean_iou(...), "real": mean_iou(...), "ratio"}``: ratio 1 means the samples follow
    their maps as well as the real faces (as far as the segmenter can tell)."""
    held, source = _held_out(model, n)
    if source != "faces":
        raise ValueError("the parsing test needs a model trained on the faces (their part masks are its maps)")
    batch = default_collate([held[i] for i in range(n)])
    latent = ae.latent_shape(tuple(batch["image"].shape))[1:]
    maps = parsing_map(batch["masks"], latent[1:])
    cond, null = _conditions(model, batch["label"], batch["caption"])
    cond, null = {**(cond or {}), "concat": maps}, {**(null or {}), "concat": torch.zeros_like(maps)}
    samples = generate(model, ae, cond, null, s=s, sampler=DDIM(model.schedule, steps), seed=seed,
                       latent_shape=latent, device=device)
    target = batch["masks"].argmax(1)
    got, real = mean_iou(segmenter.predict(samples), target), mean_iou(segmenter.predict(batch["image"]), target)
    return {"n": n, "s": s, "samples": got, "real": real, "ratio": got["miou"] / real["miou"]}


# -- the course checkpoints, retrained on one GPU -----------------------------------------------------------------------

# name -> (what train_diffusion gets): the course's UNets at twice the width, each trained from scratch on the course
# scenes at a GPU batch; the steps are sized for about five minutes of one H100-class GPU in all (scale them with
# retrain_course's ``scale``)
GPU_COURSE = {
    "unet-course": dict(condition="none"),
    "unet-class": dict(condition="class"),
    "unet-text": dict(condition="text", hold_out=TEXT_HOLD_OUT),
    "unet-retrieval": dict(condition="retrieval"),
}


def retrain_course(out_dir: str | Path, device=None, scale: float = 1.0, tiny: bool = False, seed: int = 0,
                   progress: bool = True) -> dict:
    """Train the course's models again, larger and longer than the CPU checkpoints in ``data/``, into ``out_dir``:
    the autoencoder, the offline text encoder, and the unconditional, class, text and retrieval UNets
    (``course_large``: the course UNet at twice the width), in bf16 at GPU batches, each from scratch. ``scale``
    multiplies every step count; ``tiny`` runs the same code at tiny sizes (the test of this function, on the CPU).
    The UNets are then tested as ``tinyldm evaluate`` tests them (the class and text models with the course judge:
    both right at s = 3; the text model's held-out pairs apart). Returns {file: figures}; also writes
    ``out_dir/results.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = distributed.setup(device if device is not None else default_device())

    def steps(n: int) -> int:
        return 3 if tiny else max(1, int(n * scale))

    def config(n: int, batch: int, lr: float, warmup_steps: int = 100, **kw) -> TrainConfig:
        return TrainConfig(steps=steps(n), batch_size=8 if tiny else batch, lr=lr, seed=seed, progress=progress,
                           precision="bf16" if device.type == "cuda" else "fp32", log_every=1 if tiny else 50,
                           warmup_steps=1 if tiny else warmup_steps, **kw)

    n_images = 64 if tiny else 20_000
    results = {}
    ae, psnr = train_autoencoder("tiny" if tiny else "course", train_config=config(6000, 128, 2e-3, ema_decay=0.999),
                                 whole_image_steps=1 if tiny else 600, n_images=256 if tiny else 50_000,
                                 n_eval=16 if tiny else 256, device=device, out=out / "autoencoder-course.safetensors")
    results["autoencoder-course"] = {"psnr": round(psnr, 2)}
    text, zero_shot = train_text_encoder(config(3000, 256, 1e-3, ema_decay=None), device=device,
                                         n_images=256 if tiny else 50_000, n_eval=16 if tiny else 512,
                                         out=out / "text-scenes.safetensors",
                                         config=SceneCLIPConfig(width=16, layers=1, heads=2, embed_dim=8,
                                                                image_widths=(8,)) if tiny else None)
    results["text-scenes"] = {"zero_shot": round(zero_shot, 4)}
    text.requires_grad_(False)
    from .retrieval import SceneImageEncoder

    judge = Judge.load(DATA_DIR / "judge-scenes64.safetensors").to(device)
    for name, kw in GPU_COURSE.items():
        extra = {}
        if kw["condition"] == "text":
            extra["text_encoder"] = text
        if kw["condition"] == "retrieval":
            image_encoder = SceneImageEncoder(text)
            extra.update(image_encoder=image_encoder,
                         database=course_database(image_encoder, n=256 if tiny else COURSE_DATABASE["n"],
                                                  progress=progress))
        tc = config(8000, 256, 1e-3, ema_decay=0.999, cooldown_steps=0 if tiny else steps(2000),
                    warmup_steps=200)
        model, _ = train_diffusion(ae, "tiny" if tiny else "course_large", n_images=n_images, train_config=tc,
                                   device=device, out=out / f"{name}.safetensors", resume=False,
                                   run_dir=out / "runs" / name, **kw, **extra)
        result = sample_test(model.to(device), ae.to(device), judge, text_encoder=text, per_class=1 if tiny else 10,
                             device=device, image_encoder=extra.get("image_encoder"), database=extra.get("database"))
        model.cpu()
        ae.cpu()
        results[name] = json.loads(json.dumps(result, default=float))
    if distributed.is_main():
        (out / "results.json").write_text(json.dumps(results, indent=1))
    return results
