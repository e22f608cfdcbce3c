"""The course's small pretrained models in ``data/``: where they live and how a notebook gets them.

Every file in ``data/`` is made by the project's own training command (:mod:`tinyldm.recipes`; ``data/README.md``
lists the command lines), so anyone can make it again. A notebook that needs a model calls, for example,
``course_autoencoder()``: it loads the shipped file, or, if the file is missing, trains a small stand-in on the spot
(with a warning) so the notebook still runs. UNets are loaded together with the autoencoder (and text encoder) they
were trained with, and the pairing is checked.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .autoencoder import Autoencoder
from .config import DATA_DIR, pick
from .metrics import Judge, Segmenter
from .recipes import (TEXT_HOLD_OUT, course_database, train_autoencoder, train_diffusion, train_judge, train_segmenter,
                      train_text_encoder)
from .retrieval import ImageEncoder, SceneImageEncoder
from .text import SceneCLIP
from .train import TrainConfig
from .unet import UNet

__all__ = ["COURSE_AUTOENCODER", "COURSE_JUDGE", "COURSE_UNET", "COURSE_TEXT_ENCODER", "COURSE_CLASS_UNET",
           "COURSE_TEXT_UNET", "COURSE_RETRIEVAL_UNET", "course_autoencoder", "course_judge", "course_text_encoder",
           "course_unet", "course_class_unet", "course_text_unet", "course_image_encoder", "course_retrieval_unet",
           "COURSE_FACE_AUTOENCODER", "COURSE_FACE_JUDGE", "COURSE_FACE_UNET", "course_face_autoencoder",
           "course_face_judge", "course_face_unet", "COURSE_INPAINT_UNET", "COURSE_SEGMENTER", "COURSE_PARSING_UNET",
           "course_inpaint_unet", "course_segmenter", "course_parsing_unet"]

COURSE_AUTOENCODER = DATA_DIR / "autoencoder-course.safetensors"
COURSE_JUDGE = DATA_DIR / "judge-scenes64.safetensors"
COURSE_UNET = DATA_DIR / "unet-course.safetensors"
COURSE_TEXT_ENCODER = DATA_DIR / "text-scenes.safetensors"
COURSE_CLASS_UNET = DATA_DIR / "unet-class.safetensors"
COURSE_TEXT_UNET = DATA_DIR / "unet-text.safetensors"
COURSE_RETRIEVAL_UNET = DATA_DIR / "unet-retrieval.safetensors"
COURSE_FACE_AUTOENCODER = DATA_DIR / "autoencoder-faces.safetensors"
COURSE_FACE_JUDGE = DATA_DIR / "judge-faces.safetensors"
COURSE_FACE_UNET = DATA_DIR / "unet-faces.safetensors"
COURSE_INPAINT_UNET = DATA_DIR / "unet-inpaint.safetensors"
COURSE_SEGMENTER = DATA_DIR / "segmenter-faces.safetensors"
COURSE_PARSING_UNET = DATA_DIR / "unet-parsing.safetensors"


def _load_or_stand_in(path: str | Path, load, what: str, command: str, make_stand_in):
    """``load(path)``; if the file is missing, warn and return ``make_stand_in()``."""
    path = Path(path)
    if path.exists():
        return load(path)
    warnings.warn(f"{path} is missing; training a small stand-in {what} now (poorer results). "
                  f"Make the real one with: {command}", stacklevel=3)
    return make_stand_in()


def _if_there(path: str | Path) -> Path | None:
    """``path`` if the file exists: a stand-in finetunes the course's file when it can, else starts from scratch."""
    return Path(path) if Path(path).exists() else None


def _stand_in_config() -> TrainConfig:
    """A few hundred steps (a handful in fast mode): enough for a notebook to run, not to look good."""
    return TrainConfig(steps=pick(400, 3), batch_size=64, lr=1e-3, warmup_steps=40, ema_decay=0.99)


def course_autoencoder(path: str | Path = COURSE_AUTOENCODER) -> Autoencoder:
    """The course's autoencoder (f = 4, 64 px scenes -> [b, 4, 16, 16]), in eval mode on the CPU."""
    return _load_or_stand_in(path, Autoencoder.load, "autoencoder",
                             f"tinyldm train-autoencoder --out {COURSE_AUTOENCODER}", lambda: train_autoencoder(
        whole_image_steps=pick(100, 1), n_eval=pick(64, 8),
        train_config=TrainConfig(steps=pick(300, 3), batch_size=32, lr=1e-3, warmup_steps=30, ema_decay=0.99))[0])


def course_judge(path: str | Path = COURSE_JUDGE) -> Judge:
    """The course's judge (reads shape, colour and size; features for the FSD), in eval mode."""
    return _load_or_stand_in(path, Judge.load, "judge", f"tinyldm train-judge --out {COURSE_JUDGE}", lambda: train_judge(
        TrainConfig(steps=pick(300, 3), batch_size=64, lr=2e-3, warmup_steps=20, ema_decay=None, grad_clip=None),
        n_eval=pick(200, 10))[0])


def course_text_encoder(path: str | Path = COURSE_TEXT_ENCODER) -> SceneCLIP:
    """The course's offline text encoder (prompts -> ``[b, 40, 128]``), frozen, in eval mode on the CPU."""
    def stand_in():
        tc = TrainConfig(steps=pick(200, 3), batch_size=64, lr=1e-3, warmup_steps=20, ema_decay=None)
        return train_text_encoder(tc, n_eval=pick(128, 8))[0]
    model = _load_or_stand_in(path, SceneCLIP.load, "text encoder",
                              f"tinyldm train-text-encoder --out {COURSE_TEXT_ENCODER}", stand_in)
    return model.requires_grad_(False)


def course_unet(ae: Autoencoder | None = None, path: str | Path = COURSE_UNET) -> UNet:
    """The course's unconditional latent UNet (trained on one-object 64 px scenes), in eval mode, checked to fit
    ``ae`` (default: the course autoencoder)."""
    ae = ae or course_autoencoder()
    return _load_or_stand_in(
        path, lambda p: UNet.load(p, autoencoder=ae), "UNet",
        f"tinyldm train-diffusion --run-dir build/runs/diffusion --out {COURSE_UNET}",
        lambda: train_diffusion(ae, n_images=pick(5000, 64), train_config=_stand_in_config())[0])


def course_class_unet(ae: Autoencoder | None = None, path: str | Path = COURSE_CLASS_UNET) -> UNet:
    """The course's class-conditional latent UNet (24 classes + the null label, trained with label dropout 0.1)."""
    ae = ae or course_autoencoder()
    return _load_or_stand_in(
        path, lambda p: UNet.load(p, autoencoder=ae), "class-conditional UNet",
        f"tinyldm train-diffusion --condition class --run-dir build/runs/diffusion-class --out {COURSE_CLASS_UNET}",
        lambda: train_diffusion(ae, n_images=pick(5000, 64), train_config=_stand_in_config(), condition="class")[0])


def course_text_unet(ae: Autoencoder | None = None, text_encoder: SceneCLIP | None = None,
                     path: str | Path = COURSE_TEXT_UNET) -> UNet:
    """The course's text-conditional latent UNet: cross-attention to :func:`course_text_encoder`'s hidden
    states, caption dropout 0.1, trained without the pairs in ``TEXT_HOLD_OUT``."""
    ae, text_encoder = ae or course_autoencoder(), text_encoder or course_text_encoder()
    hold_out = ",".join(map(str, TEXT_HOLD_OUT))
    return _load_or_stand_in(
        path, lambda p: UNet.load(p, autoencoder=ae, text_encoder=text_encoder), "text-conditional UNet",
        f"tinyldm train-diffusion --condition text --hold-out {hold_out} --run-dir build/runs/diffusion-text "
        f"--out {COURSE_TEXT_UNET}",
        lambda: train_diffusion(ae, n_images=pick(5000, 64), train_config=_stand_in_config(), condition="text",
                                text_encoder=text_encoder, hold_out=TEXT_HOLD_OUT)[0])


def course_image_encoder(path: str | Path = COURSE_TEXT_ENCODER) -> SceneImageEncoder:
    """The course's offline image encoder for retrieval: the image tower of :func:`course_text_encoder`'s SceneCLIP
    (scenes -> unit vectors of 128), whose text tower embeds prompts into the same space."""
    return SceneImageEncoder(course_text_encoder(path))


def course_retrieval_unet(ae: Autoencoder | None = None, image_encoder: ImageEncoder | None = None,
                          path: str | Path = COURSE_RETRIEVAL_UNET) -> UNet:
    """The course's retrieval-augmented latent UNet (RDM): cross-attention to the k = 4 nearest neighbours of each
    training scene in the course database (:func:`tinyldm.recipes.course_database`, disjoint from the training
    scenes), embedded by :func:`course_image_encoder`; neighbour dropout to zeros 0.1."""
    ae, image_encoder = ae or course_autoencoder(), image_encoder or course_image_encoder()
    return _load_or_stand_in(
        path, lambda p: UNet.load(p, autoencoder=ae, image_encoder=image_encoder), "retrieval UNet",
        f"tinyldm train-diffusion --condition retrieval --run-dir build/runs/diffusion-retrieval "
        f"--out {COURSE_RETRIEVAL_UNET}",
        lambda: train_diffusion(ae, n_images=pick(5000, 64), train_config=_stand_in_config(), condition="retrieval",
                                image_encoder=image_encoder,
                                database=course_database(image_encoder, n=pick(5000, 256), progress=False))[0])


def course_face_autoencoder(path: str | Path = COURSE_FACE_AUTOENCODER) -> Autoencoder:
    """The course autoencoder finetuned on the face stand-in (f = 4, 64 px faces -> [b, 4, 16, 16]): the scenes'
    autoencoder knows only their flat, saturated colours, and reconstructs skin and hair poorly."""
    return _load_or_stand_in(
        path, Autoencoder.load, "face autoencoder",
        f"tinyldm train-autoencoder --init {COURSE_AUTOENCODER} --data faces --steps 2000 --lr 2e-4 --warmup 50 "
        f"--whole-image-steps 400 --out {COURSE_FACE_AUTOENCODER}", lambda: train_autoencoder(
            data="faces", whole_image_steps=pick(100, 1), n_eval=pick(64, 8), init=_if_there(COURSE_AUTOENCODER),
            train_config=TrainConfig(steps=pick(300, 3), batch_size=32, lr=2e-4, warmup_steps=30, ema_decay=0.99))[0])


def course_face_judge(path: str | Path = COURSE_FACE_JUDGE) -> Judge:
    """The judge of the face stand-in: reads every attribute of a face; its features give the face FSD."""
    return _load_or_stand_in(path, Judge.load, "face judge", f"tinyldm train-judge --data faces --steps 6000 --out "
                             f"{COURSE_FACE_JUDGE}", lambda: train_judge(
        TrainConfig(steps=pick(300, 3), batch_size=64, lr=2e-3, warmup_steps=20, ema_decay=None, grad_clip=None),
        n_eval=pick(200, 10), data="faces")[0])


def course_face_unet(ae: Autoencoder | None = None, path: str | Path = COURSE_FACE_UNET) -> UNet:
    """The course's class-conditional UNet (notebook 05) finetuned on 64 px faces in the latents of
    :func:`course_face_autoencoder`: 15 classes, hair colour x mouth (:func:`tinyldm.data.face_class_name`), label
    dropout 0.1."""
    ae = ae or course_face_autoencoder()
    return _load_or_stand_in(
        path, lambda p: UNet.load(p, autoencoder=ae), "face UNet",
        f"tinyldm train-diffusion --data faces --condition class --init {COURSE_CLASS_UNET} --autoencoder "
        f"{COURSE_FACE_AUTOENCODER} --steps 2000 --cooldown 500 --lr 1e-3 --run-dir build/runs/faces-class-finetune "
        f"--out {COURSE_FACE_UNET}",
        lambda: train_diffusion(ae, n_images=pick(5000, 64), train_config=_stand_in_config(), data="faces",
                                condition="class")[0])


def course_inpaint_unet(ae: Autoencoder | None = None, path: str | Path = COURSE_INPAINT_UNET) -> UNet:
    """The course's inpainting model: the class-conditional UNet (notebook 05) with 5 zero-initialised input channels
    (the mask and the masked scene's latent: ``[z_t, m, z_masked]``, 9 channels), finetuned on masked course scenes
    (:class:`tinyldm.data.MaskConfig`'s mix, everything masked in a quarter), label dropout 0.1."""
    ae = ae or course_autoencoder()
    return _load_or_stand_in(
        path, lambda p: UNet.load(p, autoencoder=ae), "inpainting UNet",
        f"tinyldm train-diffusion --condition class --concat inpaint --init {COURSE_CLASS_UNET} "
        f"--run-dir build/runs/inpaint-class --out {COURSE_INPAINT_UNET}",
        lambda: train_diffusion(ae, n_images=pick(2000, 64), train_config=_stand_in_config(), condition="class",
                                concat="inpaint", mask_variants=pick(2, 1),
                                init=_if_there(COURSE_CLASS_UNET))[0])


def course_segmenter(path: str | Path = COURSE_SEGMENTER) -> Segmenter:
    """The face-parsing segmenter (reads the part of every pixel of a 64 px face), in eval mode."""
    return _load_or_stand_in(path, Segmenter.load, "segmenter", f"tinyldm train-segmenter --out {COURSE_SEGMENTER}",
                             lambda: train_segmenter(TrainConfig(steps=pick(300, 3), batch_size=32, lr=2e-3,
                                                                 warmup_steps=20, ema_decay=None),
                                                     n_eval=pick(100, 8))[0])


def course_parsing_unet(ae: Autoencoder | None = None, path: str | Path = COURSE_PARSING_UNET) -> UNet:
    """The course's mask-conditioned face model: the face UNet (notebook 09) with the 128 channels of a face-parsing
    map (8 parts, each cell's 4 x 4 pixels: :func:`tinyldm.inpaint.parsing_map`) zero-initialised beside z_t,
    finetuned on faces; map and label each dropped with probability 0.1, so both can be guided."""
    ae = ae or course_face_autoencoder()
    return _load_or_stand_in(
        path, lambda p: UNet.load(p, autoencoder=ae), "parsing-map UNet",
        f"tinyldm train-diffusion --data faces --condition class --concat parsing --init {COURSE_FACE_UNET} "
        f"--autoencoder {COURSE_FACE_AUTOENCODER} --run-dir build/runs/parsing-faces --out {COURSE_PARSING_UNET}",
        lambda: train_diffusion(ae, n_images=pick(2000, 64), train_config=_stand_in_config(), data="faces",
                                condition="class", concat="parsing",
                                init=_if_there(COURSE_FACE_UNET))[0])
