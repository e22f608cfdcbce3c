"""Real images: a folder of image files (FFHQ, CelebA-HQ, your photos), torchvision datasets, and random crops.

Every dataset returns the same dict per item as :class:`tinyldm.data.Scenes` (``"image"`` float32 ``[3, H, W]`` in
[-1, 1], ``"label"``, ``"caption"``), so the same training loop runs on any of them. Real images have no labels or
captions: they return label 0 and caption "" and so batch exactly like scenes for unconditional training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from .scenes import DataError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "TorchvisionImages", "to_tensor_image", "to_pil_image",
           "resize_center_crop", "prepare_image", "random_crops", "CELEBAMASK_HQ_CLASSES", "CELEBAMASK_HQ_PARTS",
           "read_parsing_map"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

# CelebAMask-HQ's 19 classes, in the order of its label images' values (its g_mask.py draws the per-part annotations
# in this order, later parts over earlier ones) ...
CELEBAMASK_HQ_CLASSES = ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear",
                         "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
# ... and the part of the face stand-in's PARTS each becomes (left and right merged; ears and neck are skin, clothes
# and jewellery background, as in the stand-in; a hat covers the hair)
CELEBAMASK_HQ_PARTS = {"background": "background", "skin": "skin", "nose": "nose", "eye_g": "glasses",
                       "l_eye": "eyes", "r_eye": "eyes", "l_brow": "brows", "r_brow": "brows", "l_ear": "skin",
                       "r_ear": "skin", "mouth": "mouth", "u_lip": "mouth", "l_lip": "mouth", "hair": "hair",
                       "hat": "hair", "ear_r": "background", "neck_l": "background", "neck": "skin",
                       "cloth": "background"}


def _parsing_index(root: Path) -> dict[str, list[Path]]:
    """A folder of face-parsing annotations: image stem -> its files. Either one label image per photo (``0.png``,
    values = CELEBAMASK_HQ_CLASSES indices) or CelebAMask-HQ's per-part masks (``00000_hair.png``, in subfolders)."""
    index: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*.png")):
        stem, _, part = p.stem.partition("_")
        if part and part in CELEBAMASK_HQ_CLASSES:
            index.setdefault(str(int(stem)) if stem.isdigit() else stem, []).append(p)
        elif not part:
            index.setdefault(str(int(stem)) if stem.isdigit() else stem, []).insert(0, p)
    return index


def _read_label_image(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(resize_center_crop(image.convert("L"), size, Image.Resampling.NEAREST)).astype(np.int64)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read parsing map {path}: {e}") from e


def read_parsing_map(files: Sequence[Path], size: int) -> torch.Tensor:
    """A face's part masks float32 ``[NUM_PARTS, size, size]`` (one-hot, in the stand-in's PARTS) from its
    annotation: a label image (CelebAMask-HQ's class indices), or CelebAMask-HQ's per-part binary masks, drawn in its
    class order (later classes on top); resized like its photo (square, nearest)."""
    from .faces import PARTS

    label_images = [p for p in files if not p.stem.partition("_")[2]]
    if label_images:
        labels = _read_label_image(label_images[0], size)
        if labels.max() >= len(CELEBAMASK_HQ_CLASSES):
            raise DataError(f"{label_images[0]}: label values up to {labels.max()}, expected CelebAMask-HQ's class "
                            f"indices 0..{len(CELEBAMASK_HQ_CLASSES) - 1}")
    else:
        labels = np.zeros((size, size), np.int64)
        for path in sorted(files, key=lambda p: CELEBAMASK_HQ_CLASSES.index(p.stem.partition("_")[2])):
            labels[_read_label_image(path, size) > 127] = CELEBAMASK_HQ_CLASSES.index(path.stem.partition("_")[2])
    to_part = torch.tensor([PARTS.index(CELEBAMASK_HQ_PARTS[c]) for c in CELEBAMASK_HQ_CLASSES])
    return torch.nn.functional.one_hot(to_part[torch.from_numpy(labels)], len(PARTS)).permute(2, 0, 1).float()


def _check_image_size(size: Any) -> int:
    ok = isinstance(size, (int, np.integer)) and not isinstance(size, bool)
    if not (ok and 8 <= size <= 2048 and size % 8 == 0):
        raise DataError("size must be a multiple of 8 in [8, 2048] (the course's "
                        f"autoencoders downsample by up to 8), got {size!r}")
    return int(size)


def to_tensor_image(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Convert an image to a float32 tensor ``[3, H, W]`` in [-1, 1].

    Accepts a PIL image (any mode; converted to RGB, alpha dropped), a numpy array
    ``[H, W]`` / ``[H, W, C]`` (HWC, as PIL and matplotlib lay it out), or a torch
    tensor ``[H, W]`` / ``[C, H, W]`` (CHW, as torchvision does), with C in 1, 3, 4.
    uint8 values are read as [0, 255], floats as [0, 1].
    """
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        array = torch.from_numpy(np.array(image))  # a copy: PIL's arrays are read-only
        if array.ndim == 3:
            array = array.permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        array = image.detach().cpu()
    else:
        raise DataError(f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")

    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] not in (1, 3, 4):
        raise DataError("expected an image with 1, 3 or 4 channels (HWC for numpy, CHW for "
                        f"torch), got shape {tuple(image.shape)}")
    array = array[:3].expand(3, -1, -1)  # grey -> RGB, RGBA -> RGB
    if array.dtype == torch.uint8:
        return array.float().div_(127.5).sub_(1.0)
    if not array.dtype.is_floating_point:
        raise DataError(f"expected uint8 or floating-point pixels, got {array.dtype}")
    return array.float().mul(2.0).sub_(1.0).clamp_(-1.0, 1.0)


def to_pil_image(image: Image.Image | np.ndarray | torch.Tensor) -> Image.Image:
    """Any input of ``to_tensor_image`` as an 8-bit RGB PIL image."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    pixels = (to_tensor_image(image) + 1.0).mul_(127.5).round_().clamp_(0, 255)
    return Image.fromarray(pixels.to(torch.uint8).permute(1, 2, 0).numpy(), mode="RGB")


def resize_center_crop(image: Image.Image, size: int,
                       resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """Scale so the shorter side is ``size`` (bicubic, antialiased when shrinking; ``resample=NEAREST`` for label
    maps) and crop the centre ``size x size`` square; returns an RGB image (a label map keeps its mode)."""
    image = ImageOps.exif_transpose(image)  # phone photos store rotation in EXIF
    if image.mode != "RGB" and resample != Image.Resampling.NEAREST:
        image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    # Resizing just the central square is the same as resize-then-crop, in one pass.
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return image.resize((size, size), resample, box=box)


def prepare_image(image: Image.Image | np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """``resize_center_crop`` then ``to_tensor_image``: float32 [3, size, size] in [-1, 1]."""
    return to_tensor_image(resize_center_crop(to_pil_image(image), size))


class ImageFolder(Dataset):
    """Every image under ``root`` (recursively, sorted by path; files and folders
    starting with "." are skipped), resized and centre-cropped to ``size x size``.

    Items: {"image": float32 [3, size, size] in [-1, 1], "label": int, "caption": str,
    "path": str}. ``size`` must be a multiple of 8 in [8, 2048].

    * caption: the text of ``name.txt`` beside ``name.jpg`` when there is one (the usual
      layout of finetuning sets), else ``caption`` (default "").
    * label: 0, or with ``labels_from_folders=True`` the index of the image's first-level
      subfolder among the sorted subfolder names (``classes``), as torchvision's ImageFolder.

    Label 0 and the empty caption make a plain folder batch like ``Scenes`` for
    unconditional training.

    * masks (with ``parsing``, a folder of face-parsing annotations in CelebAMask-HQ's formats: a label image per
      photo with the same name, ``0.png`` for ``0.jpg``, or its per-part masks ``00000_hair.png``): the face's part
      masks float32 [8, size, size] in the stand-in's ``PARTS`` (see ``CELEBAMASK_HQ_PARTS``), as ``Faces`` gives
      them, for mask-conditioned training (:mod:`tinyldm.inpaint`).
    """

    def __init__(self, root: str | Path, size: int,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, caption: str = "",
                 labels_from_folders: bool = False, parsing: str | Path | None = None):
        self.size = _check_image_size(size)
        self.default_caption, self.labels_from_folders = caption, labels_from_folders
        if isinstance(extensions, str):
            extensions = (extensions,)
        self.extensions = tuple("." + e.lower().lstrip(".") for e in extensions)
        if not self.extensions:
            raise DataError("extensions must name at least one file extension, got none")
        self.root = Path(root)
        if not self.root.exists():
            raise DataError(f"image folder {self.root} does not exist")
        if not self.root.is_dir():
            raise DataError(f"{self.root} is a file, expected a folder of images")
        # Hidden files include macOS "._name.jpg" resource forks, which are not images.
        self.paths = sorted(
            p for p in self.root.rglob("*")
            if p.suffix.lower() in self.extensions and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
        )
        if not self.paths:
            raise DataError(f"no images with extensions {', '.join(self.extensions)} "
                            f"found under {self.root}")
        self.classes: list[str] = []
        if labels_from_folders:
            self.classes = sorted({p.relative_to(self.root).parts[0] for p in self.paths
                                   if len(p.relative_to(self.root).parts) > 1})
            loose = [p for p in self.paths if len(p.relative_to(self.root).parts) == 1]
            if not self.classes or loose:
                raise DataError(f"labels_from_folders=True expects every image in a subfolder of {self.root} "
                                f"named by its class, got {len(loose)} images directly in it"
                                + (f" (e.g. {loose[0].name})" if loose else "") + f" and {len(self.classes)} "
                                f"subfolders")
        self.parsing = Path(parsing) if parsing is not None else None
        if self.parsing is not None:
            if not self.parsing.is_dir():
                raise DataError(f"parsing maps folder {self.parsing} does not exist")
            self._maps = _parsing_index(self.parsing)
            key = lambda p: str(int(p.stem)) if p.stem.isdigit() else p.stem  # noqa: E731  00042.jpg = 42.png
            missing = [p for p in self.paths if key(p) not in self._maps]
            if missing:
                raise DataError(f"{len(missing)} of the {len(self.paths)} images have no parsing map in "
                                f"{self.parsing} (e.g. {missing[0].name}: expected {key(missing[0])}.png or "
                                f"{int(missing[0].stem) if missing[0].stem.isdigit() else missing[0].stem}_<part>.png)")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                image.load()  # decode now, so corrupt files fail here with their name
                tensor = prepare_image(image, self.size)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image file {path}: {e}") from e
        sidecar = path.with_suffix(".txt")
        caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else self.default_caption
        label = self.classes.index(path.relative_to(self.root).parts[0]) if self.labels_from_folders else 0
        item = {"image": tensor, "label": label, "caption": caption, "path": str(path)}
        if self.parsing is not None:
            stem = str(int(path.stem)) if path.stem.isdigit() else path.stem
            item["masks"] = read_parsing_map(self._maps[stem], self.size)
        return item

    def __repr__(self) -> str:
        # the cache key of its latents: the files (count, first and last) and how they are read
        first, last = (p.relative_to(self.root) for p in (self.paths[0], self.paths[-1]))
        return (f"ImageFolder({str(self.root)!r}, size={self.size}, n={len(self)}, first={str(first)!r}, "
                f"last={str(last)!r}, caption={self.default_caption!r}, "
                f"labels_from_folders={self.labels_from_folders}"
                + (f", parsing={str(self.parsing)!r}" if self.parsing is not None else "") + ")")


class TorchvisionImages(Dataset):
    """Adapter for a torchvision-style dataset yielding (image, target) pairs,
    image a PIL image / array / tensor (see ``to_tensor_image``) and target an
    int class. Items: {"image": float32 [3, size, size] in [-1, 1],
    "label": int(target), "caption": ""}; same resize/crop as ``ImageFolder``.
    """

    def __init__(self, dataset: Dataset, size: int):
        self.dataset = dataset
        self.size = _check_image_size(size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DataError(f"expected the wrapped dataset to yield (image, target) pairs, "
                            f"got {type(item).__name__} at index {index}")
        image, target = item
        try:
            label = int(target)
        except (TypeError, ValueError, RuntimeError) as e:
            raise DataError(f"expected an integer class target, got {target!r} at index {index}") from e
        return {"image": prepare_image(image, self.size), "label": label, "caption": ""}


def random_crops(batch: dict[str, Any], size: int, generator: torch.Generator | None = None) -> dict[str, Any]:
    """The batch with ``"image"`` ``[b, 3, H, W]`` (and ``"masks"`` ``[b, k, H, W]``, if any) cropped to
    ``[..., size, size]``, each item at its own random position drawn from ``generator``.

    Meant for the loss of a training step: the Trainer's generator is seeded by (seed, step), so an item gets a new
    crop every time it comes round (every epoch) and a run, or a resumed run, crops exactly the same way again.
    Fully convolutional networks such as the autoencoder learn the same local statistics from crops at a fraction of
    the cost; labels and captions still describe the whole image.
    """
    images = batch["image"]
    b, _, h, w = images.shape
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= min(h, w):
        raise DataError(f"expected a crop size in 1..{min(h, w)} for {h}x{w} images, got {size!r}")
    device = generator.device if generator is not None else "cpu"
    top = torch.randint(0, h - size + 1, (b,), generator=generator, device=device).tolist()
    left = torch.randint(0, w - size + 1, (b,), generator=generator, device=device).tolist()
    out = dict(batch)
    for key in ("image", "masks"):
        if key in batch:
            out[key] = torch.stack([x[..., i:i + size, j:j + size] for x, i, j in zip(batch[key], top, left)])
    return out
