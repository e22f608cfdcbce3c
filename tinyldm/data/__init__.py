"""Datasets: procedural scenes (:mod:`tinyldm.data.scenes`, the course's offline default) and real images
(:mod:`tinyldm.data.images`: image folders, torchvision datasets, random crops).

Every dataset returns a dict per item, so the same training loop runs on any of them and torch's
``default_collate`` batches them::

    "image"    float32 tensor [3, H, W], values in [-1, 1]      (all datasets)
    "label"    int                                               (all datasets)
    "caption"  str                                               (all datasets)

``Scenes`` adds ``"masks"``, ``"n_objects"`` and ``"attributes"``; ``ImageFolder`` adds ``"path"``.
"""

from .images import *  # noqa: F401,F403
from .images import __all__ as _images_all
from .scenes import *  # noqa: F401,F403
from .scenes import __all__ as _scenes_all

__all__ = [*_scenes_all, *_images_all]
