"""Procedural 2-D scenes: the course's offline dataset, with labels, captions and masks.

Items are dicts as in every tinyldm dataset (see :mod:`tinyldm.data`): ``"image"``, ``"label"``, ``"caption"``,
plus ``"masks"``, ``"n_objects"`` and ``"attributes"`` (see ``Scenes.__getitem__``).

SCENES
------
A scene is a muted, grey-ish background with 1..4 flat-coloured objects drawn on
it. Each object has a shape (``SHAPES``), a colour (``COLORS``), a size class
(``SIZES``), a centre and a rotation.

* Class label: ``label = shape_index * len(COLORS) + color_index`` of the FIRST
  object of the scene (``objects[0]``, drawn first, i.e. at the bottom), so there
  are ``NUM_CLASSES = 24`` classes; ``class_name`` / ``label_of`` convert.
* Geometry: coordinates are fractions of the image side, x to the right, y
  DOWNWARDS (row direction), so (0, 0) is the top-left corner of the image and
  (1, 1) the bottom-right one. ``radius`` is the circumradius: the whole object
  lies in the disc of that radius around (cx, cy), and that disc lies inside the
  image. ``angle`` is in radians, from +x towards +y (clockwise on screen),
  reduced to the shape's symmetry period; circles have angle 0.
* Items are deterministic functions of (seed, index): item i is drawn from
  ``np.random.default_rng([seed, i])``, so any item can be regenerated alone, in
  any order, by any DataLoader worker.
* Captions are English sentences built from the module-level tables
  (``SCENE_TEMPLATES``, ``OBJECT_TEMPLATES``, ``JOIN_TEMPLATES``, ``COLOR_WORDS``,
  ``SHAPE_WORDS``, ``SIZE_WORDS``, ``POSITION_WORDS``, ``BACKGROUND_WORDS``),
  which are public so that later code can tell which phrasings training used.
  Every caption names the colour and the shape of every object (possibly by a
  synonym); size, position and background are mentioned only sometimes.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "SHAPES", "COLORS", "SIZES", "SIZE_RADII", "UPRIGHT_ANGLES", "NUM_CLASSES", "MAX_OBJECTS",
    "COLOR_WORDS", "SHAPE_WORDS", "SIZE_WORDS", "POSITION_WORDS", "BACKGROUND_WORDS",
    "OBJECT_TEMPLATES", "JOIN_TEMPLATES", "SCENE_TEMPLATES",
    "DataError", "SceneObject", "Background",
    "class_name", "label_of", "position_of", "sample_scene", "describe", "render_scene", "Scenes",
]


class DataError(ValueError):
    """A bad argument or bad data: says what was expected and what came."""


# ----------------------------------------------------------------------------
# Scene vocabulary
# ----------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star")

# Saturated hues, far apart in RGB so that they stay distinct at 32 px and can
# never be mistaken for the grey-ish backgrounds (whose channels differ by < 0.06).
# A plain dict: insertion-ordered, and the order defines the colour index.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.88, 0.11, 0.11),
    "orange": (1.00, 0.55, 0.05),
    "yellow": (0.98, 0.88, 0.10),
    "green": (0.13, 0.70, 0.20),
    "blue": (0.13, 0.33, 0.93),
    "purple": (0.58, 0.20, 0.84),
}

SIZES = ("small", "large")

# Circumradius ranges (fraction of the image side) per size class. The gap between
# them keeps the classes visually distinct; 0.13 keeps a small star's arms a few
# pixels long at 32 px, and 0.31 leaves room to move a large object around.
SIZE_RADII = {"small": (0.13, 0.19), "large": (0.23, 0.31)}

NUM_CLASSES = len(SHAPES) * len(COLORS)

_SHAPE_INDEX = {name: i for i, name in enumerate(SHAPES)}
_COLOR_INDEX = {name: i for i, name in enumerate(COLORS)}
_SIZE_INDEX = {name: i for i, name in enumerate(SIZES)}

# Rotational symmetry order per shape (0 = any angle, i.e. a circle).
_SYMMETRY = {"circle": 0, "square": 4, "triangle": 3, "star": 5}
# The angle at which a shape stands upright: a point straight up (angle -pi/2, since y points down, reduced to
# the symmetry period), except the square, whose edges are then level.
UPRIGHT_ANGLES = {"circle": 0.0, "square": math.pi / 4, "triangle": math.pi / 6, "star": 3 * math.pi / 10}
# Inner-to-outer radius of the star; fatter than a regular pentagram (0.38) so the
# arms survive antialiasing at 32 px.
_STAR_INNER = 0.47

MAX_OBJECTS = 4


def class_name(label: int) -> str:
    """Name of a class label, e.g. ``class_name(0) == "red circle"``."""
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
        raise DataError(f"label must be an int in [0, {NUM_CLASSES - 1}], got {label!r}")
    if not 0 <= label < NUM_CLASSES:
        raise DataError(f"label must be in [0, {NUM_CLASSES - 1}], got {label}")
    shape, color = divmod(int(label), len(COLORS))
    return f"{list(COLORS)[color]} {SHAPES[shape]}"


def label_of(shape: str, color: str) -> int:
    """Class label of a (shape, colour) pair: ``shape_index * len(COLORS) + color_index``."""
    if shape not in _SHAPE_INDEX:
        raise DataError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if color not in _COLOR_INDEX:
        raise DataError(f"unknown colour {color!r}; expected one of {tuple(COLORS)}")
    return _SHAPE_INDEX[shape] * len(COLORS) + _COLOR_INDEX[color]


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene (conventions in the module docstring).

    shape, color, size: names from SHAPES, COLORS, SIZES.
    cx, cy: centre, fractions of the image side (y downwards).
    radius: circumradius, fraction of the image side.
    angle: rotation in radians (0 for circles).
    """

    shape: str
    color: str
    size: str
    cx: float
    cy: float
    radius: float
    angle: float

    @property
    def attributes(self) -> tuple[int, int, int]:
        """(shape index, colour index, size index)."""
        return _SHAPE_INDEX[self.shape], _COLOR_INDEX[self.color], _SIZE_INDEX[self.size]


@dataclass(frozen=True)
class Background:
    """A scene background: ``rgb`` (in [0, 1]) at the image centre, plus a linear
    ramp of total strength ``amplitude`` along direction ``angle`` (radians, same
    convention as objects). ``tone`` is "dark" or "light"; it is not part of the
    label, captions mention it only sometimes."""

    tone: str
    rgb: tuple[float, float, float]
    angle: float
    amplitude: float


# ----------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------

# Synonyms only where they honestly describe the rendered colour / shape.
COLOR_WORDS = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine"),
    "yellow": ("yellow", "bright yellow", "lemon yellow"),
    "green": ("green", "grass green", "emerald"),
    "blue": ("blue", "royal blue", "cobalt blue"),
    "purple": ("purple", "violet"),
}
SHAPE_WORDS = {
    "circle": ("circle", "disc", "round dot"),
    "square": ("square", "block", "box"),
    "triangle": ("triangle", "triangular shape"),
    "star": ("star", "five-pointed star"),
}
SIZE_WORDS = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big", "huge"),
}
# Keyed by (row, column) of the image third the object's centre falls in.
POSITION_WORDS = {
    ("top", "left"): ("in the top left", "in the upper left corner", "at the top left"),
    ("top", "center"): ("at the top", "near the top", "in the upper part"),
    ("top", "right"): ("in the top right", "in the upper right corner", "at the top right"),
    ("middle", "left"): ("on the left", "on the left side"),
    ("middle", "center"): ("at the center", "in the middle", "in the centre"),
    ("middle", "right"): ("on the right", "on the right side"),
    ("bottom", "left"): ("in the bottom left", "in the lower left corner", "at the bottom left"),
    ("bottom", "center"): ("at the bottom", "near the bottom", "in the lower part"),
    ("bottom", "right"): ("in the bottom right", "in the lower right corner", "at the bottom right"),
}
BACKGROUND_WORDS = {
    "dark": ("a dark background", "a dark grey background", "a dim backdrop"),
    "light": ("a light background", "a pale grey background", "a pale backdrop"),
}
# One object; "{size}" is either "" or a size word plus a space, "{where}" either ""
# or a space plus a position phrase. The article is added afterwards (a / an).
OBJECT_TEMPLATES = (
    "{size}{color} {shape}{where}",
    "{size}{shape} in {color}{where}",
)
# Several objects: "{first}" is the first object phrase, "{rest}" the others
# joined by ", " and " and ".
JOIN_TEMPLATES = (
    "{first} and {rest}",
    "{first} next to {rest}",
    "{first} as well as {rest}",
    "{first}, together with {rest}",
)
SCENE_TEMPLATES = (
    "{objects}",
    "there is {objects}",
    "there is {objects} on {background}",
    "a picture of {objects}",
    "an image with {objects}",
    "an image with {objects} on {background}",
    "a drawing of {objects}",
    "a simple drawing of {objects} on {background}",
    "{objects} on {background}",
    "you can see {objects}",
    "this image shows {objects}",
    "a flat illustration of {objects}",
)

# Probabilities that an object phrase mentions the size / the position: captions
# that leave things out teach a text-conditioned model that unsaid attributes vary.
_P_SIZE = 0.75
_P_POSITION = 0.6


# Helpers shared with the other procedural datasets (tinyldm.data.faces); not exported by ``import *``.

def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One of ``options``, uniformly at random from ``rng``."""
    # rng.integers, not rng.choice: choice would build a numpy array of strings.
    return options[int(rng.integers(len(options)))]


def with_article(phrase: str) -> str:
    """``phrase`` with "a " or "an " in front, by its first letter."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def position_of(cx: float, cy: float) -> tuple[str, str]:
    """(row, column) of the image third holding the point: row in
    ("top", "middle", "bottom"), column in ("left", "center", "right")."""
    row = ("top", "middle", "bottom")[min(int(cy * 3), 2)]
    col = ("left", "center", "right")[min(int(cx * 3), 2)]
    return row, col


def _object_phrase(obj: SceneObject, rng: np.random.Generator) -> str:
    color = pick(rng, COLOR_WORDS[obj.color])
    shape = pick(rng, SHAPE_WORDS[obj.shape])
    size = pick(rng, SIZE_WORDS[obj.size]) + " " if rng.random() < _P_SIZE else ""
    where = ""
    if rng.random() < _P_POSITION:
        where = " " + pick(rng, POSITION_WORDS[position_of(obj.cx, obj.cy)])
    template = pick(rng, OBJECT_TEMPLATES)
    return with_article(template.format(size=size, color=color, shape=shape, where=where))


def describe(objects: Sequence[SceneObject], background: Background | str,
             rng: np.random.Generator) -> str:
    """A lower-case English caption of a scene; templates and synonyms are drawn
    from ``rng``, so the same rng state gives the same caption.

    ``background`` is a Background or just its tone ("dark" / "light").
    """
    if not objects:
        raise DataError("describe needs at least one object, got none")
    tone = background if isinstance(background, str) else background.tone
    if tone not in BACKGROUND_WORDS:
        raise DataError(f"background tone must be one of {tuple(BACKGROUND_WORDS)}, got {tone!r}")
    phrases = [_object_phrase(obj, rng) for obj in objects]
    if len(phrases) == 1:
        joined = phrases[0]
    else:
        rest = phrases[1:]
        rest_text = rest[0] if len(rest) == 1 else ", ".join(rest[:-1]) + " and " + rest[-1]
        joined = pick(rng, JOIN_TEMPLATES).format(first=phrases[0], rest=rest_text)
    template = pick(rng, SCENE_TEMPLATES)
    return template.format(objects=joined, background=pick(rng, BACKGROUND_WORDS[tone]))


# ----------------------------------------------------------------------------
# Sampling a scene
# ----------------------------------------------------------------------------

def _sample_object(rng: np.random.Generator, placed: list[SceneObject], sizes: Sequence[str] = SIZES,
                   upright: bool = False) -> SceneObject:
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    # Always one draw over all of SIZES, so that restricting the sizes changes nothing else that is drawn.
    size = sizes[int(rng.integers(len(SIZES))) % len(sizes)]
    radius = float(rng.uniform(*SIZE_RADII[size]))
    order = _SYMMETRY[shape]
    angle = float(rng.uniform(0.0, 2 * math.pi / order)) if order else 0.0
    if upright:  # drawn all the same, so that an upright scene is the rotated one turned back
        angle = UPRIGHT_ANGLES[shape]

    # Rejection sampling for limited overlap: centres at least 0.8 * (r_i + r_j)
    # apart. Crowded scenes may have no such spot, so after a few tries keep the
    # least-overlapping candidate rather than loop forever.
    best, best_score = (0.5, 0.5), -math.inf
    for _ in range(12):
        cx, cy = rng.uniform(radius, 1.0 - radius, size=2)
        score = min((math.hypot(cx - o.cx, cy - o.cy) / (radius + o.radius) for o in placed),
                    default=math.inf)
        if score > best_score:
            best, best_score = (float(cx), float(cy)), score
        if score >= 0.8:
            break
    return SceneObject(shape, color, size, best[0], best[1], radius, angle)


def _sample_background(rng: np.random.Generator) -> Background:
    tone = ("dark", "light")[int(rng.integers(2))]
    grey = rng.uniform(0.14, 0.28) if tone == "dark" else rng.uniform(0.72, 0.86)
    # A faint tint keeps backgrounds from being perfectly grey but far below the
    # saturation of any object colour.
    rgb = np.clip(grey + rng.uniform(-0.025, 0.025, size=3), 0.0, 1.0)
    angle = float(rng.uniform(0.0, 2 * math.pi))
    amplitude = float(rng.uniform(0.04, 0.10))
    return Background(tone, tuple(float(c) for c in rgb), angle, amplitude)


def sample_scene(rng: np.random.Generator, min_objects: int = 1, max_objects: int = 1,
                 sizes: Sequence[str] = SIZES, upright: bool = False) -> tuple[list[SceneObject], Background]:
    """Draw a random scene: (objects in drawing order, background). ``sizes``: the size classes to draw from
    (uniformly); ``upright``: every object standing upright (``UPRIGHT_ANGLES``) instead of at a
    uniformly random rotation."""
    n = int(rng.integers(min_objects, max_objects + 1))
    objects: list[SceneObject] = []
    for _ in range(n):
        objects.append(_sample_object(rng, objects, sizes, upright))
    return objects, _sample_background(rng)


# ----------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------

def _sdf(obj: SceneObject, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance (fraction of the image side, negative inside) from the
    points (x, y) (broadcastable float32 arrays) to the object's outline."""
    dx, dy = x - np.float32(obj.cx), y - np.float32(obj.cy)
    rho = np.hypot(dx, dy)
    order = _SYMMETRY[obj.shape]
    if order == 0:
        return rho - np.float32(obj.radius)

    # Squares, triangles and stars have n-fold symmetry plus mirror symmetry, so
    # fold every point into the half-wedge 0 <= theta <= pi/n. There the outline
    # is one segment, from the tip (R, 0) to the point at angle pi/n (an edge
    # midpoint for a polygon, the inner vertex for a star); its distance is the
    # exact distance to the whole outline.
    wedge = np.float32(2 * math.pi / order)
    theta = np.mod(np.arctan2(dy, dx) - np.float32(obj.angle), wedge)
    theta = np.minimum(theta, wedge - theta)
    qx, qy = rho * np.cos(theta), rho * np.sin(theta)

    r = obj.radius
    inner = r * (_STAR_INNER if obj.shape == "star" else math.cos(math.pi / order))
    ax, ay = r, 0.0
    bx, by = inner * math.cos(math.pi / order), inner * math.sin(math.pi / order)
    ex, ey = bx - ax, by - ay
    px, py = qx - np.float32(ax), qy  # ay == 0
    t = np.clip((px * np.float32(ex) + py * np.float32(ey)) / np.float32(ex * ex + ey * ey), 0, 1)
    dist = np.hypot(px - t * np.float32(ex), py - t * np.float32(ey))
    # The origin is on the positive side of the segment's line (cross product > 0
    # means inside), and within the half-wedge that line separates inside/outside.
    inside = (np.float32(ex) * py - np.float32(ey) * px) > 0
    return np.where(inside, -dist, dist)


_GRIDS: dict[int, np.ndarray] = {}


def pixel_centres(size: int) -> np.ndarray:
    """Pixel centres along one image axis as fractions of the side, float32 ``[size]``: ``(j + 0.5) / size``.
    The same array for x (columns) and y (rows); do not write to it."""
    # Cached: the same few sizes are rendered millions of times.
    if size not in _GRIDS:
        _GRIDS[size] = (np.arange(size, dtype=np.float32) + 0.5) / size
    return _GRIDS[size]


def coverage(d: np.ndarray, size: int) -> np.ndarray:
    """Antialiased coverage in [0, 1] of pixels whose centres lie at signed distance ``d`` (fraction of the image
    side, negative inside) from a shape's outline, in an image ``size`` pixels wide."""
    # Coverage of a pixel by a straight edge at distance d (in pixels) from its centre, approximated as a 1-px
    # linear ramp: clip(0.5 - d * size, 0, 1), written in place because it runs dozens of times per image.
    cover = d * np.float32(-size)
    cover += np.float32(0.5)
    return np.clip(cover, 0.0, 1.0, out=cover)


def ramp_background(size: int, rgb: Sequence[float], angle: float, amplitude: float) -> np.ndarray:
    """A background, float32 ``[3, size, size]`` in [0, 1]: ``rgb`` at the image centre plus a linear ramp of total
    strength ``amplitude`` along the direction ``angle`` (radians, from +x towards +y, y downwards)."""
    u = pixel_centres(size)
    c, s = math.cos(angle), math.sin(angle)
    ramp = (u[None, :] - 0.5) * np.float32(c) + (u[:, None] - 0.5) * np.float32(s)
    image = np.asarray(rgb, np.float32)[:, None, None] + np.float32(amplitude) * ramp[None]
    return np.clip(image, 0.0, 1.0, out=image)


def render_scene(objects: Sequence[SceneObject], background: Background, size: int,
                 num_slots: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise a scene, antialiased.

    Returns ``(image, masks)`` as float32 numpy arrays: image ``[3, size, size]``
    in [0, 1] (NOT [-1, 1]), masks ``[num_slots, size, size]`` in [0, 1]
    (num_slots defaults to len(objects); extra slots are zero). ``masks[k]`` is
    how much of each pixel object k contributes to the final image, after
    occlusion by the objects drawn after it, so that
    ``image = background * (1 - masks.sum(0)) + sum_k masks[k] * colour_k``.
    """
    num_slots = len(objects) if num_slots is None else num_slots
    u = pixel_centres(size)
    image = ramp_background(size, background.rgb, background.angle, background.amplitude)
    masks = np.zeros((num_slots, size, size), np.float32)

    for k, obj in enumerate(objects):
        # Only the object's bounding box (+1 px of antialiasing margin) can be
        # covered; evaluating the SDF there instead of everywhere is the main
        # reason rendering is fast at large sizes.
        x0 = max(int((obj.cx - obj.radius) * size) - 1, 0)
        x1 = min(int(math.ceil((obj.cx + obj.radius) * size)) + 1, size)
        y0 = max(int((obj.cy - obj.radius) * size) - 1, 0)
        y1 = min(int(math.ceil((obj.cy + obj.radius) * size)) + 1, size)
        cover = coverage(_sdf(obj, u[None, x0:x1], u[y0:y1, None]), size)
        keep = 1.0 - cover
        box = (slice(y0, y1), slice(x0, x1))
        masks[(slice(0, k), *box)] *= keep
        masks[(k, *box)] = cover
        color = np.asarray(COLORS[obj.color], np.float32)[:, None, None]
        image[(slice(None), *box)] = image[(slice(None), *box)] * keep + cover * color
    return image, masks


# ----------------------------------------------------------------------------
# Scenes dataset
# ----------------------------------------------------------------------------

def check_int(name: str, value: Any, low: int, high: float | None = None) -> int:
    """``value`` as an int if it is one (not a bool) in [low, high] (high None: no upper bound), else DataError
    naming ``name``, the allowed range and what came."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if ok and value >= low and (high is None or value <= high):
        return int(value)
    allowed = f"an int in [{low}, {high}]" if high is not None else f"an int >= {low}"
    raise DataError(f"{name} must be {allowed}, got {value!r}")


class ProceduralDataset(Dataset):
    """A dataset whose item i is drawn from ``np.random.default_rng([seed, i])``, so that any item can be
    regenerated alone, in any order, by any DataLoader worker. Subclasses set ``self.length`` and ``self.seed``."""

    length: int
    seed: int

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int) -> np.random.Generator:
        i = operator.index(index)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {self.length}")
        return np.random.default_rng([self.seed, i])


class Scenes(ProceduralDataset):
    """Procedural scenes of coloured shapes; conventions in the module docstring.

    Args:
        size: image side in pixels, an int in [32, 512].
        length: number of items.
        seed: non-negative int; item i depends only on (seed, i).
        max_objects: objects per scene at most (<= 4); also the number of slots
            in "masks" and "attributes".
        min_objects: objects per scene at least (>= 1). The count is uniform in
            [min_objects, max_objects].
        sizes: the size classes objects are drawn from, a non-empty subset of
            SIZES (default: all). With fewer classes, item i keeps the colour,
            shape, rotation and background it has with all of them.
        upright: draw every object standing upright (a point up, a square's
            edges level) instead of at a random rotation: the same items, turned.
    """

    def __init__(self, size: int = 64, length: int = 10_000, seed: int = 0,
                 max_objects: int = 1, min_objects: int = 1, sizes: Sequence[str] = SIZES,
                 upright: bool = False):
        self.size = check_int("size", size, 32, 512)
        self.length = check_int("length", length, 1)
        self.seed = check_int("seed", seed, 0)
        self.max_objects = check_int("max_objects", max_objects, 1, MAX_OBJECTS)
        self.min_objects = check_int("min_objects", min_objects, 1, MAX_OBJECTS)
        if self.min_objects > self.max_objects:
            raise DataError(f"min_objects must be <= max_objects, got min_objects={min_objects} "
                            f"and max_objects={max_objects}")
        if isinstance(sizes, str) or not sizes or any(v not in SIZES for v in sizes) or len(set(sizes)) < len(sizes):
            raise DataError(f"sizes must be distinct names from {SIZES}, e.g. ('large',), got {sizes!r}")
        if not isinstance(upright, bool):
            raise DataError(f"upright must be True or False, got {upright!r}")
        self.sizes, self.upright = tuple(sizes), upright

    def objects(self, index: int) -> tuple[list[SceneObject], Background]:
        """The scene of item ``index``: (objects in drawing order, background)."""
        return sample_scene(self._rng(index), self.min_objects, self.max_objects, self.sizes, self.upright)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item ``index`` as a dict:

        "image"       float32 [3, size, size] in [-1, 1]
        "label"       int, shape_index * len(COLORS) + color_index of object 0
        "caption"     str
        "masks"       float32 [max_objects, size, size] in [0, 1]: visible coverage
                      of each object (occluders removed); zeros for absent slots
        "n_objects"   int
        "attributes"  int64 [max_objects, 3]: (shape, colour, size) indices per
                      object; rows of -1 for absent slots
        """
        rng = self._rng(index)
        objects, background = sample_scene(rng, self.min_objects, self.max_objects, self.sizes, self.upright)
        caption = describe(objects, background, rng)  # same rng: reproducible
        image, masks = render_scene(objects, background, self.size, self.max_objects)
        image *= 2.0
        image -= 1.0
        np.clip(image, -1.0, 1.0, out=image)  # rounding could overshoot by an ulp
        attributes = torch.full((self.max_objects, 3), -1, dtype=torch.int64)
        attributes[: len(objects)] = torch.tensor([o.attributes for o in objects])
        return {
            "image": torch.from_numpy(image),
            "label": label_of(objects[0].shape, objects[0].color),
            "caption": caption,
            "masks": torch.from_numpy(masks),
            "n_objects": len(objects),
            "attributes": attributes,
        }

    def __repr__(self) -> str:
        extra = "".join([f", sizes={self.sizes}" if self.sizes != SIZES else "",
                         ", upright=True" if self.upright else ""])
        return (f"Scenes(size={self.size}, length={self.length}, seed={self.seed}, "
                f"max_objects={self.max_objects}, min_objects={self.min_objects}{extra})")
