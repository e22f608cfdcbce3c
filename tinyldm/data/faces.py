"""Procedural faces: the course's offline stand-in for FFHQ, with labels, captions, attributes and parsing masks.

Items are dicts as in every tinyldm dataset (see :mod:`tinyldm.data`): ``"image"``, ``"label"``, ``"caption"``,
plus ``"masks"`` and ``"attributes"`` (see ``Faces.__getitem__``). They serve where a course on latent diffusion
would use aligned face photos: finetuning a model trained on scenes on a new domain, inpainting (the masks say
where the mouth, the eyes or the glasses are), and conditioning on face-parsing maps.

FACES
-----
A face is a cartoon head and shoulders in front of a muted backdrop, roughly aligned as FFHQ is (eyes near the
same place in every image, a little jitter of position, size and roll). It is described by the attributes of
``FACE_ATTRIBUTES`` (name -> value names, in index order) plus continuous nuisance parameters (exact sizes,
positions, colour jitter, hairline, glasses frame shape...), all held by a ``FaceSpec``.

* Class label: ``label = hair_color_index * len(mouths) + mouth_index``, with the indices into
  ``FACE_ATTRIBUTES["hair_color"]`` and ``FACE_ATTRIBUTES["mouth"]``: two attributes visible in every face (bald
  heads keep hair on the sides), so ``NUM_FACE_CLASSES = 15``; ``face_class_name`` / ``face_label_of`` convert.
* Attribute values are drawn uniformly and independently, except the pose (front 1/2, left and right 1/4 each)
  and the glasses (worn by 3 in 10).
* Geometry: image coordinates are fractions of the image side, x to the right, y DOWNWARDS, (0, 0) the top-left
  corner, as in :mod:`tinyldm.data.scenes`. A face has its own frame: origin at the centre of the head ellipse
  ``(cx, cy)``, axes turned by ``roll`` (radians, from +x towards +y, i.e. clockwise on screen); ``u`` runs to the
  face's right on screen, ``v`` down the face. Lengths in a ``FaceSpec`` are fractions of the image side, and
  vertical positions (``eye_y``, ``mouth_y``...) are ``v`` values in the face frame.
* Pose: ``yaw`` is the turn of the head in radians, positive when the face turns towards the image's RIGHT (so
  "facing right" means facing the viewer's right, the person's left). The head outline stays put; eyes, brows,
  nose, mouth, glasses and the hairline lie on a vertical cylinder of radius ``1.1 * head_rx`` that turns by
  ``yaw``, so they shift sideways and the far side is foreshortened; the nose tip sticks out and shifts further,
  the chin follows, the far ear hides behind the head.
* Items are deterministic functions of (seed, index): item i is drawn from ``np.random.default_rng([seed, i])``,
  so any item can be regenerated alone, in any order, by any DataLoader worker.
* Masks: ``masks[k]`` (``k`` indexing ``PARTS``) is how much part k contributes to each pixel's colour, after
  occlusion (hair in front of the forehead, glasses frames in front of the eyes), so the masks are in [0, 1], sum
  to 1 at every pixel and are antialiased like the image. Conventions: "skin" is face, ears and neck; clothes are
  "background"; "eyes" covers the eye openings and lash lines (whites, iris, pupil); "mouth" the lips and the
  inside of the mouth; "glasses" the frames, plus a faint share (``LENS_TINT``) of the tinted lenses, through
  which the eyes stay visible and keep the rest of the pixel.
* Captions are English sentences built from the public tables (``FACE_TEMPLATES``, ``PERSON_WORDS``,
  ``HAIR_COLOR_WORDS``, ``HAIR_STYLE_PHRASES``, ``MOUTH_WORDS``, ``GLASSES_WORDS``, ``EYE_WORDS``, ``SKIN_WORDS``,
  ``HEAD_WORDS``, ``POSE_WORDS``, ``FACE_BACKGROUND_WORDS``). Every caption names the hair colour, the hair style
  and the mouth, and the glasses when they are worn; the other attributes (and the absence of glasses) are
  mentioned only sometimes (``CAPTION_MENTION``).

Rendering is numpy only: signed distances to ellipses, rounded boxes and curved bands, evaluated inside each
part's bounding box and turned into coverage (:func:`tinyldm.data.scenes.coverage`), then composited back to
front over a few layers. On one core, about a thousand 64-px faces a second, seventy-odd at 512 px.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .scenes import DataError, ProceduralDataset, check_int, coverage, pick, pixel_centres, ramp_background

__all__ = [
    "FACE_ATTRIBUTES", "PARTS", "NUM_PARTS", "NUM_FACE_CLASSES", "LENS_TINT",
    "SKIN_TONES", "HAIR_COLORS", "EYE_COLORS", "BACKGROUND_COLORS",
    "FACE_TEMPLATES", "PERSON_WORDS", "HAIR_COLOR_WORDS", "HAIR_STYLE_PHRASES", "MOUTH_WORDS", "GLASSES_WORDS",
    "EYE_WORDS", "SKIN_WORDS", "HEAD_WORDS", "POSE_WORDS", "FACE_BACKGROUND_WORDS", "CAPTION_MENTION",
    "FaceSpec", "face_class_name", "face_label_of", "sample_face", "describe_face", "render_face", "Faces",
]


# ----------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------

# A plain dict: insertion-ordered; the order of the names is the order of "attributes", and the order of the
# values their indices. The names are also the fields of FaceSpec that hold the values.
FACE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "head": ("oval", "round", "long"),
    "pose": ("left", "front", "right"),
    "skin": ("very light", "light", "medium", "tan", "brown", "dark"),
    "hair_color": ("black", "brown", "blond", "red", "grey"),
    "hair_style": ("short", "long", "bald", "curly", "bun"),
    "eyes": ("brown", "blue", "green"),
    "mouth": ("closed", "smiling", "open"),
    "glasses": ("none", "glasses"),
    "background": ("grey", "blue", "green", "beige", "pink"),
}

# The classes of face-parsing datasets (CelebAMask-HQ, LaPa), left and right merged.
PARTS = ("background", "skin", "hair", "eyes", "brows", "nose", "mouth", "glasses")
NUM_PARTS = len(PARTS)
_PART = {name: k for k, name in enumerate(PARTS)}

NUM_FACE_CLASSES = len(FACE_ATTRIBUTES["hair_color"]) * len(FACE_ATTRIBUTES["mouth"])

# Opacity of the lenses' tint: the share of a pixel seen through a lens that the "glasses" mask takes.
LENS_TINT = 0.14

# Base colours (RGB in [0, 1]); each face jitters them a little. Skin tones run from light to dark.
SKIN_TONES = {
    "very light": (0.99, 0.87, 0.80),
    "light": (0.95, 0.78, 0.66),
    "medium": (0.86, 0.65, 0.49),
    "tan": (0.74, 0.53, 0.36),
    "brown": (0.55, 0.37, 0.24),
    "dark": (0.36, 0.23, 0.15),
}
HAIR_COLORS = {
    "black": (0.09, 0.08, 0.08),
    "brown": (0.38, 0.23, 0.12),
    "blond": (0.92, 0.77, 0.44),
    "red": (0.74, 0.30, 0.12),
    "grey": (0.72, 0.72, 0.72),
}
EYE_COLORS = {
    "brown": (0.38, 0.22, 0.11),
    "blue": (0.28, 0.52, 0.82),
    "green": (0.30, 0.60, 0.34),
}
# Muted, so that faces stand out; far from every hair colour but grey's (which is lighter).
BACKGROUND_COLORS = {
    "grey": (0.52, 0.53, 0.55),
    "blue": (0.52, 0.64, 0.78),
    "green": (0.56, 0.68, 0.54),
    "beige": (0.84, 0.77, 0.64),
    "pink": (0.84, 0.64, 0.68),
}
# Nuisance colours (not attributes): clothes and glasses frames.
_SHIRT_COLORS = ((0.16, 0.21, 0.38), (0.90, 0.90, 0.88), (0.14, 0.14, 0.15), (0.62, 0.16, 0.16),
                 (0.12, 0.44, 0.44), (0.78, 0.60, 0.22), (0.40, 0.45, 0.22), (0.46, 0.46, 0.49),
                 (0.44, 0.12, 0.20), (0.50, 0.68, 0.88))
_FRAME_COLORS = ((0.06, 0.06, 0.07), (0.30, 0.17, 0.09), (0.78, 0.64, 0.30), (0.62, 0.63, 0.66),
                 (0.55, 0.08, 0.10), (0.12, 0.16, 0.36))
_SCLERA = (0.95, 0.94, 0.92)
_PUPIL = (0.04, 0.03, 0.03)
_LASH = (0.11, 0.07, 0.06)
_LENS = (0.86, 0.92, 0.97)
_MOUTH_INSIDE = (0.30, 0.06, 0.08)
_TEETH = (0.97, 0.96, 0.91)
_TONGUE = (0.84, 0.40, 0.44)

# Probabilities of the attributes drawn non-uniformly (the others are uniform).
_WEIGHTS = {"pose": (0.25, 0.5, 0.25), "glasses": (0.7, 0.3)}


def _index(name: str, value: str) -> int:
    values = FACE_ATTRIBUTES[name]
    if value not in values:
        raise DataError(f"unknown {name} {value!r}; expected one of {values}")
    return values.index(value)


def face_class_name(label: int) -> str:
    """Name of a class label, e.g. ``face_class_name(0) == "black hair, closed mouth"``."""
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
        raise DataError(f"label must be an int in [0, {NUM_FACE_CLASSES - 1}], got {label!r}")
    if not 0 <= label < NUM_FACE_CLASSES:
        raise DataError(f"label must be in [0, {NUM_FACE_CLASSES - 1}], got {label}")
    hair, mouth = divmod(int(label), len(FACE_ATTRIBUTES["mouth"]))
    return f"{FACE_ATTRIBUTES['hair_color'][hair]} hair, {FACE_ATTRIBUTES['mouth'][mouth]} mouth"


def face_label_of(hair_color: str, mouth: str) -> int:
    """Class label of a (hair colour, mouth) pair: ``hair_color_index * len(mouths) + mouth_index``."""
    return _index("hair_color", hair_color) * len(FACE_ATTRIBUTES["mouth"]) + _index("mouth", mouth)


Rgb = tuple[float, float, float]


@dataclass(frozen=True)
class FaceSpec:
    """One face (conventions in the module docstring): its attributes, then the continuous parameters that place
    and shape it. Lengths are fractions of the image side; ``*_y`` fields are ``v`` positions in the face frame
    (downwards from the head's centre); colours are RGB in [0, 1]."""

    # Attributes: value names from FACE_ATTRIBUTES (the field names are its keys).
    head: str
    pose: str
    skin: str
    hair_color: str
    hair_style: str
    eyes: str
    mouth: str
    glasses: str
    background: str
    # Placement: head centre (image coordinates), roll and yaw (radians).
    cx: float
    cy: float
    roll: float
    yaw: float
    # Head: half-width and half-height of the head ellipse; jaw: how much narrower the chin is (0 = an ellipse).
    head_rx: float
    head_ry: float
    jaw: float
    ear_y: float
    ear_r: float        # half-height of an ear
    neck_rx: float
    shirt_y: float      # top of the shoulders
    shirt_rx: float     # half-width of the shoulders
    neckline: float     # how far the neck's skin reaches below the top of the shoulders
    # Features, on the face (in the turning frame, see "Pose").
    eye_y: float
    eye_dx: float       # half the distance between the eye centres
    eye_rx: float       # half-width of an eye opening
    eye_ry: float       # half-height of an eye opening
    iris_r: float
    brow_y: float
    brow_rx: float
    brow_thick: float   # half-thickness at the middle
    brow_arch: float    # how much higher the middle is than the ends
    brow_tilt: float    # slope: > 0 means the outer ends are lower
    nose_y: float       # the tip
    nose_r: float
    mouth_y: float
    mouth_rx: float
    # Hair: how far it stands off the head, where the hairline is at the middle (v) and how far it drops at the
    # sides, sideways shift of its top (parting), slope (side sweep), waviness of the hairline, where long hair ends.
    hair_volume: float
    hairline_y: float
    hairline_drop: float
    hair_part: float
    hair_sweep: float
    hair_wave: float
    hair_freq: float
    hair_phase: float
    hair_end: float
    bun_r: float
    curls: int
    # Glasses (used when worn): half-size of a lens frame, corner radius, half-thickness of the frame.
    glasses_rx: float
    glasses_ry: float
    glasses_corner: float
    frame_thick: float
    # Colours and light.
    skin_rgb: Rgb
    hair_rgb: Rgb
    iris_rgb: Rgb
    lip_rgb: Rgb
    shirt_rgb: Rgb
    frame_rgb: Rgb
    background_rgb: Rgb
    background_angle: float      # direction of the backdrop's linear ramp (radians, like roll)
    background_amplitude: float  # its total strength
    light_u: float               # centre of the skin's highlight, face frame
    light_v: float

    @property
    def attributes(self) -> tuple[int, ...]:
        """Attribute indices, in the order of FACE_ATTRIBUTES."""
        return tuple(_index(name, getattr(self, name)) for name in FACE_ATTRIBUTES)

    @property
    def label(self) -> int:
        """Class label: ``face_label_of(hair_color, mouth)``."""
        return face_label_of(self.hair_color, self.mouth)


# ----------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------

# "{who}" a PERSON_WORDS entry, "{pose}" "" or " " + a pose phrase + ",", "{features}" the "with" list, e.g.
# "short black hair, a big smile and glasses", "{background}" "" or ", " + a background phrase.
FACE_TEMPLATES = (
    "{who}{pose} with {features}{background}",
    "a photo of {who}{pose} with {features}{background}",
    "a portrait of {who}{pose} with {features}{background}",
    "a close-up portrait of {who}{pose} with {features}{background}",
    "a headshot of {who}{pose} with {features}{background}",
    "a picture of {who}{pose} with {features}{background}",
    "a drawing of {who}{pose} with {features}{background}",
    "an illustration of {who}{pose} with {features}{background}",
    "a cartoon face of {who}{pose} with {features}{background}",
)
PERSON_WORDS = ("a person", "someone", "a young person", "an adult")
# Synonyms only where they honestly describe the rendered colour.
HAIR_COLOR_WORDS = {
    "black": ("black", "jet-black", "raven"),
    "brown": ("brown", "chestnut", "dark brown"),
    "blond": ("blond", "blonde", "golden"),
    "red": ("red", "ginger", "copper"),
    "grey": ("grey", "gray", "silver"),
}
# "{color}" is a HAIR_COLOR_WORDS entry; no phrase starts with it, so no article has to agree with it.
HAIR_STYLE_PHRASES = {
    "short": ("short {color} hair", "a short {color} haircut", "neatly cut short {color} hair"),
    "long": ("long {color} hair", "long, flowing {color} hair", "shoulder-length {color} hair"),
    "bald": ("a bald head with {color} hair on the sides", "a bald crown and {color} side hair",
             "a bald head and a fringe of {color} hair above the ears"),
    "curly": ("curly {color} hair", "a big curly {color} afro", "voluminous curly {color} hair"),
    "bun": ("a neat {color} bun", "hair in a {color} bun", "tied-back {color} hair in a bun"),
}
MOUTH_WORDS = {
    "closed": ("a closed mouth", "closed lips", "a calm, closed mouth"),
    "smiling": ("a smile", "a big smile", "a toothy grin", "a happy grin"),
    "open": ("an open mouth", "a wide open mouth", "a surprised, open mouth"),
}
GLASSES_WORDS = {
    "none": ("no glasses",),
    "glasses": ("glasses", "eyeglasses", "a pair of glasses", "spectacles"),
}
EYE_WORDS = {
    "brown": ("brown eyes", "dark brown eyes"),
    "blue": ("blue eyes", "bright blue eyes"),
    "green": ("green eyes", "pale green eyes"),
}
SKIN_WORDS = {
    "very light": ("pale skin", "very pale skin"),
    "light": ("light skin", "fair skin"),
    "medium": ("medium skin", "a medium skin tone"),
    "tan": ("tan skin", "tanned skin"),
    "brown": ("brown skin", "a brown complexion"),
    "dark": ("dark skin", "a dark complexion"),
}
HEAD_WORDS = {
    "oval": ("an oval face", "an oval-shaped face"),
    "round": ("a round face", "a full, round face"),
    "long": ("a long face", "a long, narrow face"),
}
POSE_WORDS = {
    "left": ("facing left", "turned to the left", "looking to the left"),
    "front": ("facing the camera", "facing forward", "looking straight ahead"),
    "right": ("facing right", "turned to the right", "looking to the right"),
}
FACE_BACKGROUND_WORDS = {
    "grey": ("on a grey background", "against a plain grey backdrop", "on a gray background"),
    "blue": ("on a blue background", "against a pale blue backdrop"),
    "green": ("on a green background", "against a sage green backdrop"),
    "beige": ("on a beige background", "against a cream-coloured backdrop"),
    "pink": ("on a pink background", "against a dusty pink backdrop"),
}
# Probability that a caption mentions each optional detail: captions that leave things out teach a
# text-conditioned model that unsaid attributes vary. Hair colour, hair style, mouth and worn glasses are always said.
CAPTION_MENTION = {"no glasses": 0.25, "eyes": 0.5, "skin": 0.4, "head": 0.3, "pose": 0.5, "background": 0.4}


def _join(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def describe_face(spec: FaceSpec, rng: np.random.Generator) -> str:
    """A lower-case English caption of a face; templates and synonyms are drawn from ``rng``, so the same rng state
    gives the same caption. Names the hair colour, hair style and mouth, and the glasses if worn; the rest only
    sometimes (``CAPTION_MENTION``)."""
    color = pick(rng, HAIR_COLOR_WORDS[spec.hair_color])
    hair = pick(rng, HAIR_STYLE_PHRASES[spec.hair_style]).format(color=color)
    rest = [pick(rng, MOUTH_WORDS[spec.mouth])]
    if spec.glasses == "glasses" or rng.random() < CAPTION_MENTION["no glasses"]:
        rest.append(pick(rng, GLASSES_WORDS[spec.glasses]))
    for name, words in (("eyes", EYE_WORDS), ("skin", SKIN_WORDS), ("head", HEAD_WORDS)):
        if rng.random() < CAPTION_MENTION[name]:
            rest.append(pick(rng, words[getattr(spec, name)]))
    features = _join([hair] + [rest[i] for i in rng.permutation(len(rest))])
    pose = f" {pick(rng, POSE_WORDS[spec.pose])}," if rng.random() < CAPTION_MENTION["pose"] else ""
    background = ""
    if rng.random() < CAPTION_MENTION["background"]:
        background = ", " + pick(rng, FACE_BACKGROUND_WORDS[spec.background])
    return pick(rng, FACE_TEMPLATES).format(who=pick(rng, PERSON_WORDS), pose=pose, features=features,
                                            background=background)


# ----------------------------------------------------------------------------
# Sampling a face
# ----------------------------------------------------------------------------

# Per head shape: (half-width, half-height, jaw) of the head ellipse at scale 1.
_HEAD_SHAPES = {"oval": (0.200, 0.265, 0.15), "round": (0.216, 0.244, 0.08), "long": (0.182, 0.284, 0.11)}
# Yaw ranges (radians) per pose: clearly turned, or nearly frontal.
_YAWS = {"left": (-0.5, -0.28), "front": (-0.07, 0.07), "right": (0.28, 0.5)}
# Per hair style, ranges of: the volume (at scale 1); the hairline's middle, as a fraction of head_ry above the
# centre (the lowest is a fringe down to the brows); how far it drops at the sides, as a fraction of the way down
# to the eyes; its waviness; the parting's offset, as a fraction of head_rx. Buns are pulled back: high and even.
_HAIR = {
    "short": {"volume": (0.014, 0.034), "hairline": (0.70, 0.36), "drop": (0.8, 1.1), "wave": (0.0, 0.008),
              "part": 0.35},
    "long": {"volume": (0.020, 0.040), "hairline": (0.70, 0.36), "drop": (0.8, 1.1), "wave": (0.0, 0.006),
             "part": 0.35},
    "bald": {"volume": (0.008, 0.014), "hairline": (0.90, 0.90), "drop": (0.0, 0.0), "wave": (0.0, 0.0),
             "part": 0.0},
    "curly": {"volume": (0.065, 0.095), "hairline": (0.56, 0.40), "drop": (0.8, 1.1), "wave": (0.006, 0.011),
              "part": 0.2},
    "bun": {"volume": (0.008, 0.018), "hairline": (0.72, 0.56), "drop": (0.55, 0.8), "wave": (0.0, 0.0),
            "part": 0.08},
}
_N_UNIFORMS = 96


class _Draws:
    """The draws of one face: one block of uniforms taken from the rng at once (one call instead of ~80) and
    used in a fixed order; a draw added at the end changes nothing drawn before it, nor the caption's rng."""

    def __init__(self, rng: np.random.Generator):
        self._z = rng.random(_N_UNIFORMS).tolist()
        self._next = 0

    def __call__(self, low: float, high: float) -> float:
        z = self._z[self._next]
        self._next += 1
        return low + (high - low) * z

    def index(self, n: int, weights: Sequence[float] | None = None) -> int:
        """An index in [0, n), uniform or with probabilities ``weights`` (which sum to 1)."""
        z = self(0.0, 1.0)
        if weights is None:
            return min(int(z * n), n - 1)
        return min(bisect.bisect_right(list(itertools.accumulate(weights)), z), n - 1)

    def value(self, name: str) -> str:
        values = FACE_ATTRIBUTES[name]
        return values[self.index(len(values), _WEIGHTS.get(name))]

    def jitter(self, rgb: Sequence[float], brightness: float, tint: float) -> Rgb:
        """``rgb`` scaled by 1 +- brightness and shifted by +- tint per channel, in [0, 1]."""
        scale = 1.0 + self(-brightness, brightness)
        return tuple(min(max(c * scale + self(-tint, tint), 0.0), 1.0) for c in rgb)


def sample_face(rng: np.random.Generator) -> FaceSpec:
    """Draw a random face (distribution in the module docstring). Takes one block of uniforms from ``rng`` (always
    the same number), so whatever is drawn from ``rng`` afterwards, such as the caption, does not depend on it."""
    draw = _Draws(rng)
    attrs = {name: draw.value(name) for name in FACE_ATTRIBUTES}
    s = draw(0.92, 1.06)  # overall scale, as the jitter of an aligned crop
    base_rx, base_ry, jaw = _HEAD_SHAPES[attrs["head"]]
    rx, ry = base_rx * s * draw(0.96, 1.04), base_ry * s * draw(0.96, 1.04)

    eye_y = ry * draw(-0.08, -0.02)
    eye_rx = 0.044 * s * draw(0.9, 1.1)
    eye_ry = eye_rx * draw(0.42, 0.55)
    brow_thick = 0.0075 * s * draw(0.8, 1.25)
    brow_y = eye_y - eye_ry - 0.028 * s * draw(0.8, 1.2)

    hair = _HAIR[attrs["hair_style"]]
    # The hairline stays above the brows: a fringe may touch them, never the eyes.
    hairline_y = max(-ry * draw(*hair["hairline"]), brow_y - brow_thick - 0.012 * s)
    hair_wave = draw(*hair["wave"]) * s

    glasses_rx = eye_rx + 0.015 * s * draw(0.7, 1.3)
    glasses_ry = eye_ry + 0.02 * s * draw(0.7, 1.3)
    skin_rgb = draw.jitter(SKIN_TONES[attrs["skin"]], 0.04, 0.015)
    return FaceSpec(
        **attrs,
        cx=0.5 + draw(-0.02, 0.02), cy=0.47 + draw(-0.02, 0.02), roll=draw(-0.07, 0.07),
        yaw=draw(*_YAWS[attrs["pose"]]),
        head_rx=rx, head_ry=ry, jaw=jaw + draw(-0.04, 0.04),
        ear_y=eye_y + 0.032 * s * draw(0.8, 1.2), ear_r=0.054 * s * draw(0.9, 1.1),
        neck_rx=rx * draw(0.46, 0.54), shirt_y=ry + 0.075 * s * draw(0.8, 1.2), shirt_rx=0.48 * s * draw(0.92, 1.08),
        neckline=0.055 * s * draw(0.5, 1.5),
        eye_y=eye_y, eye_dx=0.40 * rx * draw(0.94, 1.06), eye_rx=eye_rx, eye_ry=eye_ry,
        iris_r=min(eye_ry * draw(0.85, 0.98), 0.5 * eye_rx),
        brow_y=brow_y, brow_rx=eye_rx * draw(1.0, 1.25), brow_thick=brow_thick,
        brow_arch=0.007 * s * draw(0.4, 1.6), brow_tilt=draw(-0.12, 0.12),
        nose_y=0.34 * ry + 0.01 * s * draw(-1, 1), nose_r=0.03 * s * draw(0.85, 1.15),
        mouth_y=0.61 * ry + 0.01 * s * draw(-1, 1), mouth_rx=0.045 * s * draw(0.88, 1.12),
        hair_volume=draw(*hair["volume"]) * s, hairline_y=hairline_y,
        hairline_drop=(eye_y - hairline_y) * draw(*hair["drop"]), hair_part=rx * hair["part"] * draw(-1, 1),
        hair_sweep=draw(-0.05, 0.05) * s, hair_wave=hair_wave, hair_freq=draw(8.0, 16.0),
        hair_phase=draw(0.0, 2 * math.pi), hair_end=ry + draw(0.06, 0.24) * s, bun_r=0.065 * s * draw(0.85, 1.15),
        curls=int(draw(10, 17)),
        glasses_rx=glasses_rx, glasses_ry=glasses_ry, glasses_corner=glasses_ry * draw(0.3, 1.0),
        frame_thick=0.005 * s * draw(0.7, 1.3),
        skin_rgb=skin_rgb,
        hair_rgb=draw.jitter(HAIR_COLORS[attrs["hair_color"]], 0.10, 0.025),
        iris_rgb=draw.jitter(EYE_COLORS[attrs["eyes"]], 0.12, 0.03),
        # Lips: the skin, redder and darker; the jitter covers a little lipstick.
        lip_rgb=draw.jitter((skin_rgb[0] * 0.84 + 0.06, skin_rgb[1] * 0.58, skin_rgb[2] * 0.60 + 0.02), 0.08, 0.03),
        shirt_rgb=draw.jitter(_SHIRT_COLORS[draw.index(len(_SHIRT_COLORS))], 0.1, 0.03),
        frame_rgb=_FRAME_COLORS[draw.index(len(_FRAME_COLORS))],
        background_rgb=draw.jitter(BACKGROUND_COLORS[attrs["background"]], 0.05, 0.025),
        background_angle=draw(0.0, 2 * math.pi), background_amplitude=draw(0.04, 0.14),
        light_u=rx * draw(-0.5, 0.5), light_v=ry * draw(-0.6, -0.2),
    )


# ----------------------------------------------------------------------------
# Signed distances (fractions of the image side, negative inside), on arrays of points relative to a centre
# ----------------------------------------------------------------------------

def _hypot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.sqrt(x * x + y * y)  # np.hypot is about 5x slower, and overflow is no concern here


def _ellipse(x: np.ndarray, y: np.ndarray, rx: float, ry: float) -> np.ndarray:
    # f = |p / r|^2 - 1 divided by the length of its gradient: exact on the outline, which is all that coverage
    # needs; inside it stays negative and outside positive, but it is not the distance away from the outline.
    px, py = x * (1 / rx), y * (1 / ry)
    gx, gy = px * (2 / rx), py * (2 / ry)
    grad = gx * gx
    grad += gy * gy
    grad += 1e-12  # finite at the centre
    f = px * px
    f += py * py
    f -= 1
    f /= np.sqrt(grad)
    return f


def _rounded_box(x: np.ndarray, y: np.ndarray, bx: float, by: float, r: float) -> np.ndarray:
    # Half-sizes bx, by, corner radius r (exact).
    qx, qy = np.abs(x) - (bx - r), np.abs(y) - (by - r)
    return _hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r


def _band(x: np.ndarray, y: np.ndarray, length: float, thick: float, bend: float = 0.0, power: float = 1.0,
          tilt: float = 0.0) -> np.ndarray:
    """A curved band along x for |x| <= length: centre line ``y = tilt * x - bend * t**2`` with ``t = x / length``
    (bend > 0 raises the ends, as in a smile, since y points down), half-thickness ``thick * (1 - t**2)**power``
    (power 1: pointed ends, an almond; 0.5: rounded ends, an ellipse when bend = tilt = 0; 0: a constant
    thickness). Eyes, lips, brows and the bridge of glasses are all bands."""
    t = x * (1 / length)
    t2 = t * t
    e = y + bend * t2                                    # offset from the centre line
    if tilt:
        e -= tilt * x
    w = np.maximum(1 - t2, 1e-3)
    h = thick * w if power == 1 else thick * np.sqrt(w) if power == 0.5 else thick * w ** power
    # |e| - h over the length of its gradient (1, slope of the edge): a first-order distance to the edge.
    slope = np.copysign(t * (-2 * bend / length) + tilt, e)
    if power:
        slope -= h * t * (2 * power / length) / w
    slope *= slope
    slope += 1
    d = np.abs(e)
    d -= h
    d /= np.sqrt(slope)
    return np.maximum(d, np.abs(x) - length)


# ----------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1): rows y0:y1, columns x0:x1 of the image


def _union(a: Box, b: Box) -> Box:
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def _within(outer: Box, inner: Box) -> tuple[slice, slice] | None:
    """Rows and columns of ``inner`` (clipped to ``outer``) as slices of an array over ``outer``; None if empty."""
    y0, y1, x0, x1 = max(inner[0], outer[0]), min(inner[1], outer[1]), max(inner[2], outer[2]), min(inner[3], outer[3])
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0 - outer[0], y1 - outer[0]), slice(x0 - outer[2], x1 - outer[2])


class _Frame:
    """The face frame of one face at one image size: face coordinates (u, v) of every pixel centre, the turning
    frame's coordinate ``a`` (see "Pose" in the module docstring) over the face, and bounding boxes."""

    def __init__(self, spec: FaceSpec, size: int):
        self.spec, self.size = spec, size
        p = pixel_centres(size)
        self.cos, self.sin = math.cos(spec.roll), math.sin(spec.roll)
        c, s = np.float32(self.cos), np.float32(self.sin)
        dx, dy = p - np.float32(spec.cx), p - np.float32(spec.cy)
        self.u = dx[None, :] * c + dy[:, None] * s      # [size, size]
        self.v = dy[:, None] * c - dx[None, :] * s      # [size, size]
        # a = u cos(yaw) - sqrt(R^2 - u^2) sin(yaw): the point of the turning cylinder seen at u. Computed once over
        # a box holding every feature and the hairline (one call per feature would cost more at small sizes).
        self.radius = 1.1 * spec.head_rx
        self.cos_yaw, self.sin_yaw = math.cos(spec.yaw), math.sin(spec.yaw)
        cu, cv, hx, hy = _hair_centre(spec)
        self.face = self.rect(-1.25 * hx - abs(cu), 1.25 * hx + abs(cu), cv - 1.25 * hy, spec.mouth_y + spec.mouth_rx)
        u = self.uv(self.face)[0]
        depth = np.sqrt(np.maximum(self.radius ** 2 - u * u, 0.0))
        self._a = u * self.cos_yaw - depth * self.sin_yaw

    def rect(self, u0: float, u1: float, v0: float, v1: float) -> Box:
        """Pixels that may be covered by the face-frame rectangle [u0, u1] x [v0, v1], plus an antialiasing pixel,
        clipped to the image (possibly empty)."""
        c, s, n = self.cos, self.sin, self.size
        uc, vc, hu, hv = 0.5 * (u0 + u1), 0.5 * (v0 + v1), 0.5 * (u1 - u0), 0.5 * (v1 - v0)
        x, y = self.spec.cx + uc * c - vc * s, self.spec.cy + uc * s + vc * c
        ex, ey = hu * abs(c) + hv * abs(s), hu * abs(s) + hv * abs(c)   # half-extents of the turned rectangle
        return (max(int((y - ey) * n) - 1, 0), min(math.ceil((y + ey) * n) + 1, n),
                max(int((x - ex) * n) - 1, 0), min(math.ceil((x + ex) * n) + 1, n))

    def box(self, u: float, v: float, ru: float, rv: float | None = None) -> Box:
        """``rect`` of half-sizes (ru, rv) (rv defaults to ru) around face point (u, v)."""
        rv = ru if rv is None else rv
        return self.rect(u - ru, u + ru, v - rv, v + rv)

    def feature_box(self, a: float, v: float, ru: float, rv: float, mirrored: bool = False) -> Box:
        """``box`` of a feature on the turning face at (a, v) (and at (-a, v) too if ``mirrored``), clipped to the
        face, so that ``turned`` can serve it."""
        box = None
        for side in ((-1, 1) if mirrored else (1,)):
            aa = side * a
            u = aa * self.cos_yaw + math.sqrt(max(self.radius ** 2 - aa * aa, 0.0)) * self.sin_yaw
            b = self.box(u, v, 1.25 * ru, rv)  # the near side is stretched by up to ~1.2
            box = b if box is None else _union(box, b)
        return self.in_face(box)

    def in_face(self, box: Box) -> Box:
        """The part of ``box`` inside ``self.face``, where ``turned`` is known."""
        y0, y1, x0, x1 = self.face
        return max(box[0], y0), min(box[1], y1), max(box[2], x0), min(box[3], x1)

    def uv(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        y0, y1, x0, x1 = box
        return self.u[y0:y1, x0:x1], self.v[y0:y1, x0:x1]

    def turned(self, box: Box) -> np.ndarray:
        """The turning frame's horizontal coordinate ``a`` over a box inside ``self.face`` (see ``feature_box``)."""
        y0, y1, x0, x1 = box
        fy, fx = self.face[0], self.face[2]
        return self._a[y0 - fy:y1 - fy, x0 - fx:x1 - fx]


_SMALL = 4096  # pixels: below this a layer scales all masks at once


class _Canvas:
    """An image and its part masks, painted back to front (conventions of "Masks" in the module docstring)."""

    def __init__(self, image: np.ndarray):
        self.image = image
        self.masks = np.zeros((NUM_PARTS, *image.shape[1:]), np.float32)
        self.masks[0] = 1.0
        # Where each part has been painted so far: a large layer only scales down the masks it overlaps.
        self._painted: dict[int, Box] = {0: (0, image.shape[1], 0, image.shape[2])}

    def paint(self, part: str, box: Box, cover: np.ndarray, rgb: np.ndarray) -> None:
        """Lay part ``part`` over the box with coverage ``cover`` [h, w] and colour ``rgb`` ([3] or [3, h, w])."""
        y0, y1, x0, x1 = box
        if y0 >= y1 or x0 >= x1:
            return
        keep = 1 - cover
        if cover.size <= _SMALL:
            self.masks[:, y0:y1, x0:x1] *= keep   # one call beats finding the overlapped masks
        else:
            for p, painted in self._painted.items():
                sub = _within(box, painted)
                if sub is not None:
                    self.masks[p, y0:y1, x0:x1][sub] *= keep[sub]
        k = _PART[part]
        self.masks[k, y0:y1, x0:x1] += cover
        self._painted[k] = _union(self._painted[k], box) if k in self._painted else box
        region = self.image[:, y0:y1, x0:x1]
        region += cover * (_col(rgb) - region)


def _col(rgb: Any) -> np.ndarray:
    """A colour as an array broadcasting against [3, h, w]."""
    rgb = np.asarray(rgb, np.float32)
    return rgb[:, None, None] if rgb.ndim == 1 else rgb


def _over(field: np.ndarray, cover: np.ndarray, value: Any) -> None:
    """Composite ``value`` over ``field`` in place with coverage ``cover``: a shade [h, w] or a colour [3, h, w]."""
    field += cover * ((_col(value) if field.ndim == 3 else value) - field)


def _ramp(d: np.ndarray, scale: float, low: float, high: float) -> np.ndarray:
    """``low`` where d >= 0 rising linearly to ``high`` where d <= -scale: a shade that darkens towards an outline."""
    s = np.clip(d * (-1 / scale), 0, 1)
    s *= high - low
    s += low
    return s


def _draw_shirt(canvas: _Canvas, f: _Frame, spec: FaceSpec) -> None:
    rx, ry = spec.shirt_rx, 0.42 * spec.shirt_rx
    cy = spec.shirt_y + ry
    box = f.rect(-rx, rx, spec.shirt_y, cy + ry)
    u, v = f.uv(box)
    d = _ellipse(u, v - cy, rx, ry)
    # Darker towards the outline: the shoulders turn away.
    canvas.paint("background", box, coverage(d, f.size), _col(spec.shirt_rgb) * _ramp(d, 0.05, 0.78, 1.0))


def _hair_centre(spec: FaceSpec) -> tuple[float, float, float, float]:
    """Centre and half-sizes of the hair mass: the head grown by the volume, shifted away from the turn (more of
    the back of the head shows)."""
    cv = -0.02 * spec.head_ry - (0.01 if spec.hair_style == "curly" else 0.0)
    return (-0.06 * spec.head_rx * math.sin(spec.yaw), cv, spec.head_rx + spec.hair_volume,
            spec.head_ry + 0.8 * spec.hair_volume)


def _hair_outline(u: np.ndarray, v: np.ndarray, spec: FaceSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distance to the outline of the hair mass, u and v relative to its centre). Curly hair's outline is bumpy;
    short hair, a bun and a bald head's sides hug the head towards the ears instead of standing off it."""
    cu, cv, rx, ry = _hair_centre(spec)
    x, y = u - cu, v - cv
    if spec.hair_style in ("short", "bun", "bald"):
        # Half-width rx at the top, head_rx + 0.3 volume at the centre's height and below.
        hug = np.clip(y * (-2.5 / spec.head_ry), 0, 1)
        hug *= 0.7 * spec.hair_volume
        hug += spec.head_rx + 0.3 * spec.hair_volume
        d = _ellipse(x * rx / hug, y, rx, ry)
    else:
        d = _ellipse(x, y, rx, ry)
    if spec.hair_style == "curly":
        d -= (0.09 * spec.hair_volume) * (1 + np.sin(spec.curls * np.arctan2(x, -y) + spec.hair_phase))
    return d, x, y


def _hair_colour(f: _Frame, d: np.ndarray, x: np.ndarray, y: np.ndarray, spec: FaceSpec,
                 brightness: float = 1.0) -> np.ndarray:
    """Colour [3, h, w] of the hair: darker towards its outline, with a sheen across the top, and fine strands
    (or curls) where the image is large enough to show them, so that they fade out instead of aliasing at small
    sizes."""
    shade = _ramp(d, 0.03, 0.82 * brightness, brightness)
    period = 2 * math.pi * spec.head_rx / (4 * spec.curls)   # of the strands, image fractions
    fade = min(max((period * f.size - 2.0) / 3.0, 0.0), 1.0)
    if fade > 0 and spec.hair_style == "curly":
        # Curls: round blobs, lit in the middle and dark between, in rings that follow the outline; ring k (from
        # the middle) holds 2 pi (k + 1/2) of them, so that they are about as wide as they are deep.
        _, _, rx, ry = _hair_centre(spec)
        r = _hypot(x * (1 / rx), y * (1 / ry)) * (spec.curls / 4.0)
        ring = np.floor(r)
        p = np.arctan2(x, -y) * (ring + 0.5) + 0.5 * ring + spec.hair_phase
        fp, fr = p - np.floor(p) - 0.5, r - ring - 0.5
        shade += (0.5 * fade * brightness) * (0.25 - fp * fp - fr * fr) - 0.04 * fade * brightness
    elif fade > 0:
        angle = np.arctan2(x, -y)
        shade += (0.08 * fade * brightness) * np.sin(4 * spec.curls * angle + 3 * np.sin(spec.curls * angle))
    if spec.hair_style == "curly":  # matte
        return _col(spec.hair_rgb) * shade
    # The sheen: an arc across the top of the head, inside the outline, added (not multiplied) so that black hair
    # shines too.
    ry = spec.head_ry
    sheen = np.maximum(1 - ((d + 0.35 * spec.hair_volume + 0.012) * (1 / 0.012)) ** 2, 0)
    sheen *= np.clip(y * (-2.0 / ry) - 0.6, 0, 1)
    sheen *= 0.09 * brightness
    return _col(spec.hair_rgb) * shade + sheen


def _draw_back_hair(canvas: _Canvas, f: _Frame, spec: FaceSpec) -> None:
    """Hair behind the head and neck: long hair's curtain, a curly cloud, a bun."""
    style = spec.hair_style
    if style not in ("long", "curly", "bun"):
        return
    cu, cv, rx, ry = _hair_centre(spec)
    if style == "long":
        box = f.rect(cu - 1.25 * rx, cu + 1.25 * rx, cv - ry, spec.hair_end)
    elif style == "bun":
        bun_v = cv - ry - 0.5 * spec.bun_r
        box = f.box(cu, bun_v, spec.bun_r)
    else:
        box = f.box(cu, cv, rx + 0.2 * spec.hair_volume, ry + 0.2 * spec.hair_volume)
    u, v = f.uv(box)
    if style == "bun":
        x, y = u - cu, v - cv
        d = _hypot(x, v - bun_v) - spec.bun_r
    else:
        d, x, y = _hair_outline(u, v, spec)
    if style == "long":
        # The curtain: as wide as the hair at the temples, flaring a little and rounded at the ends.
        half = 0.5 * spec.hair_end
        flare = 1 + 0.25 * np.clip(v * (1 / spec.hair_end), 0, 1)
        d = np.minimum(d, _rounded_box(x / flare, v - half, rx, half, 0.04))
    # Behind the head, in its shadow.
    canvas.paint("hair", box, coverage(d, f.size), _hair_colour(f, d, x, y, spec, brightness=0.8))


def _draw_skin(canvas: _Canvas, f: _Frame, spec: FaceSpec) -> None:
    """Neck, ears and head: one layer of skin whose brightness is composited from the three."""
    rx, ry = spec.head_rx, spec.head_ry
    ear_rx, ear_ry = 0.55 * spec.ear_r, spec.ear_r
    turn = math.sin(spec.yaw)
    neck_top, neck_bottom = 0.3 * ry, spec.shirt_y + spec.neckline
    neck_u = 0.3 * rx * turn
    head_box = f.box(0.0, 0.0, rx, ry)
    neck_box = f.rect(neck_u - spec.neck_rx, neck_u + spec.neck_rx, neck_top, neck_bottom)
    # Ears: the one on the far side of the turn moves in behind the head.
    ears = [side * (0.96 * rx - 0.9 * rx * max(side * turn, 0.0)) for side in (-1, 1)]
    ear_boxes = [f.box(eu, spec.ear_y, ear_rx, ear_ry) for eu in ears]
    box = _union(_union(head_box, neck_box), _union(*ear_boxes))
    u, v = f.uv(box)
    size = f.size
    cover = np.zeros(u.shape, np.float32)
    shade = np.ones(u.shape, np.float32)

    # Neck: a column with a rounded bottom (the neckline); darker in the shadow under the chin.
    sub = _within(box, neck_box)
    if sub is not None:
        nu, nv = u[sub], v[sub]
        d = _rounded_box(nu - neck_u, nv - 0.5 * (neck_top + neck_bottom), spec.neck_rx,
                         0.5 * (neck_bottom - neck_top), 0.9 * spec.neck_rx)
        cover[sub] = coverage(d, size)
        shade[sub] = _ramp(0.85 * ry - nv, 0.15 * ry, 0.70, 0.84)

    for eu, ear_box in zip(ears, ear_boxes):
        sub = _within(box, ear_box)
        if sub is not None:
            d = _ellipse(u[sub] - eu, v[sub] - spec.ear_y, ear_rx, ear_ry)
            c_ear = coverage(d, size)
            _over(shade[sub], c_ear, _ramp(d, 0.4 * ear_rx, 0.92, 0.78))   # the hollow inside
            np.maximum(cover[sub], c_ear, out=cover[sub])

    # Head: an ellipse narrowing towards the chin, the chin following the turn; lit from (light_u, light_v) and
    # darker towards the outline, so that it looks round.
    sub = _within(box, head_box)
    hu, hv = u[sub], v[sub]
    down = np.clip(hv * (1 / ry), 0, 1)
    narrow = down * down
    narrow *= -spec.jaw
    narrow += 1
    d = _ellipse((hu - (0.35 * rx * turn) * down) / narrow, hv, rx, ry)
    d *= narrow
    c_head = coverage(d, size)
    lu, lv = (hu - spec.light_u) * (1 / rx), (hv - spec.light_v) * (1 / ry)
    head = _ramp(d, 0.25 * rx, 0.86, 1.0)
    head *= 1.07 - 0.16 * (lu * lu + lv * lv)
    _over(shade[sub], c_head, head)
    np.maximum(cover[sub], c_head, out=cover[sub])
    canvas.paint("skin", box, cover, _col(spec.skin_rgb) * shade)


def _draw_nose(canvas: _Canvas, f: _Frame, spec: FaceSpec) -> None:
    """A soft tip with its underside in shadow, a faint bridge on the shadow side and two nostrils: skin, darker."""
    r, tip, top = spec.nose_r, spec.nose_y, spec.eye_y
    half = 0.5 * (tip - top)
    box = _union(f.feature_box(0.0, tip, 1.3 * r, r), f.feature_box(0.0, top + half, 0.5 * r, half))
    v = f.uv(box)[1]
    # The tip sticks out of the face: it moves further with the turn than the bridge's top.
    y = v - tip
    a = f.turned(box) - np.clip(y * (0.06 * spec.head_rx / (tip - top)) + 0.06 * spec.head_rx, 0, None) * f.sin_yaw
    size = f.size
    d_tip = _ellipse(a, y, r, 0.8 * r)
    c_tip = coverage(d_tip, size)
    side = -math.copysign(0.4 * r, spec.light_u - 0.3 * spec.head_rx * f.sin_yaw)  # away from the light
    c_bridge = coverage(_ellipse(a - side, y + half, 0.22 * r, half), size)
    shade = _ramp(-y, r, 0.95, 0.81)                     # the underside of the tip in shadow
    _over(shade, c_bridge * (1 - c_tip), 0.88)
    # A soft shadow along the tip's lower edge, where the nose meets the lip.
    edge = np.maximum(1 - np.abs(d_tip) * (1 / (0.25 * r)), 0)
    edge *= np.clip(y * (2 / r), 0, 1)
    c_tip = np.maximum(c_tip, edge)
    _over(shade, edge, 0.72)
    if 0.16 * r * size > 0.4:  # nostrils, once they are visible (smaller, they would only blur the tip's shadow)
        nostrils = coverage(_ellipse(np.abs(a) - 0.45 * r, y - 0.45 * r, 0.26 * r, 0.16 * r), size)
        _over(shade, nostrils, 0.55)
    canvas.paint("nose", box, np.maximum(c_tip, c_bridge), _col(spec.skin_rgb) * shade)


def _draw_eyes(canvas: _Canvas, f: _Frame, spec: FaceSpec) -> None:
    """Both eyes at once (mirrored in the turning frame): almond openings with whites, iris, pupil, a catchlight
    and the upper lash line."""
    rx, ry, ri = spec.eye_rx, spec.eye_ry, spec.iris_r
    box = f.feature_box(spec.eye_dx, spec.eye_y, 1.1 * rx, 1.3 * ry, mirrored=True)
    v = f.uv(box)[1]
    a = f.turned(box)
    q, y = np.abs(a) - spec.eye_dx, v - spec.eye_y
    size = f.size
    d = _band(q, y, rx, ry, bend=0.2 * ry)
    c_open = coverage(d, size)
    # The lash line: a stroke along the outline, kept on its upper half (never much thinner than a pixel).
    lash = 0.09 * ry + 0.3 / size
    c_lash = coverage(np.abs(d) - lash, size)
    c_lash *= np.clip(y * (-4 / ry) + 0.2, 0, 1)

    colour = np.empty((3, *q.shape), np.float32)
    colour[:] = _col(_SCLERA)
    iy = y + 0.08 * ry
    r_iris = _hypot(q, iy)
    iris_shade = _ramp(r_iris - ri, ri, 0.72, 1.12)      # a darker rim
    _over(colour, coverage(r_iris - ri, size), _col(spec.iris_rgb) * iris_shade)
    _over(colour, coverage(r_iris - 0.45 * ri, size), _PUPIL)
    if 0.22 * ri * size > 0.4:  # a catchlight, up and to the image's left of each pupil, once it is visible
        catch = _hypot(q + np.copysign(np.float32(0.32 * ri), a), iy + 0.3 * ri)
        _over(colour, coverage(catch - 0.22 * ri, size), (1.0, 1.0, 1.0))
    _over(colour, c_lash, _LASH)
    canvas.paint("eyes", box, np.maximum(c_open, c_lash), colour)


def _draw_brows(canvas: _Canvas, f: _Frame, spec: FaceSpec) -> None:
    box = f.feature_box(spec.eye_dx, spec.brow_y, 1.05 * spec.brow_rx,
                        spec.brow_thick + spec.brow_arch + abs(spec.brow_tilt) * spec.brow_rx, mirrored=True)
    v = f.uv(box)[1]
    q = np.abs(f.turned(box)) - spec.eye_dx
    d = _band(q, v - spec.brow_y, spec.brow_rx, spec.brow_thick, bend=-spec.brow_arch, power=0.5,
              tilt=spec.brow_tilt)
    # The hair's colour, darker (grey and blond brows stay visible on light skin).
    canvas.paint("brows", box, coverage(d, f.size), [0.55 * h + 0.45 * k for h, k in zip(spec.hair_rgb, _LASH)])


# Per mouth, in units of mouth_rx: the lips as a band (half-length, half-thickness, bend) with its power, and the
# lips' own thickness around the opening (closed: the half-thickness of the line between them).
_MOUTHS = {
    "closed": {"lips": (1.04, 0.30, 0.08), "power": 0.6, "rim": 0.05},
    "smiling": {"lips": (1.18, 0.40, 0.46), "power": 1.0, "rim": 0.09},
    "open": {"lips": (0.74, 0.64, 0.0), "power": 0.5, "rim": 0.13},
}


def _draw_mouth(canvas: _Canvas, f: _Frame, spec: FaceSpec) -> None:
    """Lips around a closed line, a grin showing the upper teeth, or an open mouth with teeth and tongue."""
    shape = _MOUTHS[spec.mouth]
    m = spec.mouth_rx
    length, thick, bend = (m * k for k in shape["lips"])
    rim = m * shape["rim"]
    box = f.feature_box(0.0, spec.mouth_y - 0.5 * bend, length, thick + 0.5 * bend)
    v = f.uv(box)[1]
    x = f.turned(box) - 0.02 * spec.head_rx * f.sin_yaw   # the lips stand out a little
    y = v - spec.mouth_y
    size = f.size
    d = _band(x, y, length, thick, bend, shape["power"])
    c_lips = coverage(d, size)
    t = x * (1 / length)
    below = y + bend * t * t                              # offset below the lips' centre line

    # Lips: the upper one darker, the lower one with a highlight across its middle.
    lip_shade = np.maximum(1 - (below * (2 / thick) - 1) ** 2, 0)
    lip_shade *= 0.12
    lip_shade += np.where(below < 0, np.float32(0.86), np.float32(1.0))
    colour = _col(spec.lip_rgb) * lip_shade
    if spec.mouth == "closed":
        _over(colour, coverage(np.abs(below) - rim, size) * c_lips, _col(spec.lip_rgb) * 0.45)
    else:
        c_inside = coverage(d + rim, size)                # the lips' outline, moved in by their thickness
        _over(colour, c_inside, _MOUTH_INSIDE)
        # Upper teeth, clipped to the opening; an open mouth shows the tongue too.
        inside = thick - rim
        teeth_edge = -0.25 * inside if spec.mouth == "smiling" else -0.45 * inside
        _over(colour, np.minimum(coverage(below - teeth_edge, size), c_inside), _TEETH)
        if spec.mouth == "open":
            tongue = coverage(_ellipse(x, y - 0.55 * inside, 0.55 * length, 0.4 * inside), size)
            _over(colour, np.minimum(tongue, c_inside), _TONGUE)
    canvas.paint("mouth", box, c_lips, colour)


def _draw_front_hair(canvas: _Canvas, f: _Frame, spec: FaceSpec) -> None:
    """The hair in front of the head: the part above the hairline, down to the temples (long and curly hair hang
    further, in front of the ears); for a bald head, the hair left on the sides."""
    style, rx, ry = spec.hair_style, spec.head_rx, spec.head_ry
    cu, cv, hx, hy = _hair_centre(spec)
    bottom = {"long": spec.mouth_y, "curly": spec.nose_y, "bald": spec.ear_y}.get(style, spec.eye_y)
    grow = 1.2 if style == "curly" else 1.0
    box = f.in_face(f.rect(cu - grow * hx, cu + grow * hx, cv - grow * hy, bottom))
    u, v = f.uv(box)
    d, x, y = _hair_outline(u, v, spec)
    if style == "bald":
        # What is left outside a bald crown, around the ears. On the side turned away the crown widens, so that
        # the hair there hides behind the head, as that ear does.
        far = np.minimum(x, 0) if f.sin_yaw < 0 else np.maximum(x, 0)
        far *= 1.5 * abs(f.sin_yaw) / (1 + 1.5 * abs(f.sin_yaw))
        crown = _ellipse(x - far, y + 0.3 * ry, 0.88 * rx, 0.8 * ry)
        around_ears = _ellipse(x, v - (spec.ear_y - 0.7 * spec.ear_r), 1.3 * rx, 0.34 * ry)
        d = np.maximum(d, np.maximum(-crown, around_ears))
    else:
        # The hairline lies on the face, so it turns with it: v = hairline_y + drop ((a - part) / rx)^2 + ...
        a = f.turned(box)
        t = (a - spec.hair_part) * (1 / rx)
        phase = a * (spec.hair_freq / rx) + spec.hair_phase
        line = spec.hairline_y + spec.hairline_drop * t * t + a * (spec.hair_sweep / rx) \
            + spec.hair_wave * np.sin(phase)
        slope = t * (2 * spec.hairline_drop / rx) + (spec.hair_sweep / rx) \
            + np.cos(phase) * (spec.hair_wave * spec.hair_freq / rx)
        d_line = (v - line) / np.sqrt(slope * slope + 1)
        # Never over the eyes: above them the hair stops at the brows' top, and beside them it may come down.
        over_eyes = np.maximum(np.abs(a) - (spec.eye_dx + spec.eye_rx), 0)
        over_eyes *= -1.2
        over_eyes += v - (spec.brow_y - spec.brow_thick)
        d = np.maximum(d, np.maximum(d_line, over_eyes))
    d = np.maximum(d, v - bottom)
    canvas.paint("hair", box, coverage(d, f.size), _hair_colour(f, d, x, y, spec))


def _draw_glasses(canvas: _Canvas, f: _Frame, spec: FaceSpec) -> None:
    """Tinted lenses, then the frames: rims, bridge and arms."""
    # Frames at least a pixel wide, so that small images still show them.
    gx, gy, t = spec.glasses_rx, spec.glasses_ry, max(spec.frame_thick, 0.5 / f.size)
    centre = spec.eye_y + 0.1 * gy
    box = _union(f.feature_box(spec.eye_dx, centre, gx + t, gy + t, mirrored=True),
                 f.in_face(f.box(0.0, centre - 0.35 * gy, spec.head_rx, t)))
    u, v = f.uv(box)
    a = f.turned(box)
    q, y = np.abs(a) - spec.eye_dx, v - centre
    size = f.size
    d_lens = _rounded_box(q, y, gx, gy, spec.glasses_corner)
    canvas.paint("glasses", box, coverage(d_lens, size) * np.float32(LENS_TINT), _LENS)
    d = np.abs(d_lens) - t                                                     # the rims
    # The bridge: an arc (flat enough that its vertical distance will do) between the rims.
    bridge = np.abs(y + 0.35 * gy - (0.15 * gy / (spec.eye_dx - gx + t) ** 2) * (a * a))
    bridge -= t
    d = np.minimum(d, np.maximum(bridge, np.abs(a) - (spec.eye_dx - gx + t)))
    # The arms, from the rims' outer edges back to the sides of the head.
    d_arm = np.maximum(np.abs(y + 0.35 * gy) - 0.8 * t, np.maximum(gx - q, np.abs(u) - 0.97 * spec.head_rx))
    canvas.paint("glasses", box, coverage(np.minimum(d, d_arm), size), spec.frame_rgb)


def render_face(spec: FaceSpec, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise a face, antialiased, at ``size`` x ``size`` pixels (an int >= 8; the same face at any size).

    Returns ``(image, masks)`` as new float32 numpy arrays: image ``[3, size, size]`` in [0, 1] (NOT [-1, 1]), masks
    ``[NUM_PARTS, size, size]`` in [0, 1], one per entry of ``PARTS``, summing to 1 at every pixel (to rounding):
    ``masks[k]`` is the share of each pixel's colour that part k contributes after occlusion.
    """
    size = check_int("size", size, 8)
    canvas = _Canvas(ramp_background(size, spec.background_rgb, spec.background_angle, spec.background_amplitude))
    frame = _Frame(spec, size)
    # Back to front.
    _draw_shirt(canvas, frame, spec)
    _draw_back_hair(canvas, frame, spec)
    _draw_skin(canvas, frame, spec)
    _draw_nose(canvas, frame, spec)
    _draw_eyes(canvas, frame, spec)
    _draw_brows(canvas, frame, spec)
    _draw_mouth(canvas, frame, spec)
    _draw_front_hair(canvas, frame, spec)
    if spec.glasses == "glasses":
        _draw_glasses(canvas, frame, spec)
    np.clip(canvas.image, 0.0, 1.0, out=canvas.image)
    return canvas.image, canvas.masks


# ----------------------------------------------------------------------------
# Faces dataset
# ----------------------------------------------------------------------------

class Faces(ProceduralDataset):
    """Procedural cartoon faces, the offline stand-in for FFHQ; conventions in the module docstring.

    Args:
        size: image side in pixels, an int in [32, 1024].
        length: number of items.
        seed: non-negative int; item i depends only on (seed, i).
    """

    def __init__(self, size: int = 64, length: int = 10_000, seed: int = 0):
        self.size = check_int("size", size, 32, 1024)
        self.length = check_int("length", length, 1)
        self.seed = check_int("seed", seed, 0)

    def spec(self, index: int) -> FaceSpec:
        """The face of item ``index``."""
        return sample_face(self._rng(index))

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item ``index`` as a dict:

        "image"       float32 [3, size, size] in [-1, 1]
        "label"       int, hair_color_index * 3 + mouth_index (see face_class_name)
        "caption"     str
        "masks"       float32 [NUM_PARTS, size, size] in [0, 1], one per PARTS entry, summing to 1 at every pixel
        "attributes"  int64 [len(FACE_ATTRIBUTES)]: the value index of each attribute, in FACE_ATTRIBUTES order
        """
        rng = self._rng(index)
        spec = sample_face(rng)
        caption = describe_face(spec, rng)  # same rng: reproducible
        image, masks = render_face(spec, self.size)
        image *= 2.0
        image -= 1.0
        np.clip(image, -1.0, 1.0, out=image)  # rounding could overshoot by an ulp
        return {
            "image": torch.from_numpy(image),
            "label": spec.label,
            "caption": caption,
            "masks": torch.from_numpy(masks),
            "attributes": torch.tensor(spec.attributes, dtype=torch.int64),
        }

    def __repr__(self) -> str:
        return f"Faces(size={self.size}, length={self.length}, seed={self.seed})"
