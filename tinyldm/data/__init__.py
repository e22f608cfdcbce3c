"""Datasets: procedural scenes (:mod:`tinyldm.data.scenes`, the course's offline default), procedural faces
(:mod:`tinyldm.data.faces`, the offline stand-in for FFHQ) and real images (:mod:`tinyldm.data.images`: image
folders, torchvision datasets, random crops).

Every dataset returns a dict per item, so the same training loop runs on any of them and torch's
``default_collate`` batches them::

    "image"    float32 tensor [3, H, W], values in [-1, 1]      (all datasets)
    "label"    int                                               (all datasets)
    "caption"  str                                               (all datasets)

Inpainting masks (:mod:`tinyldm.data.masks`) are drawn the same way, by (seed, index): ``MaskGenerator``.

``Scenes`` adds ``"masks"``, ``"n_objects"`` and ``"attributes"``; ``Faces`` adds ``"masks"`` (a soft face-parsing
map, one channel per ``PARTS`` entry) and ``"attributes"``; ``ImageFolder`` adds ``"path"``.
"""

from .faces import *  # noqa: F401,F403
from .faces import __all__ as _faces_all
from .images import *  # noqa: F401,F403
from .images import __all__ as _images_all
from .masks import *  # noqa: F401,F403
from .masks import __all__ as _masks_all
from .scenes import *  # noqa: F401,F403
from .scenes import __all__ as _scenes_all

__all__ = [*_scenes_all, *_faces_all, *_images_all, *_masks_all]
