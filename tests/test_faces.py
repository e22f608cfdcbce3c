"""Specification of tinyldm.data.faces: procedural faces with labels, captions, attributes and parsing masks."""

import dataclasses
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tinyldm.data import (
    BACKGROUND_COLORS, CAPTION_MENTION, EYE_COLORS, EYE_WORDS, FACE_ATTRIBUTES, FACE_BACKGROUND_WORDS, FACE_TEMPLATES,
    GLASSES_WORDS, HAIR_COLOR_WORDS, HAIR_COLORS, HAIR_STYLE_PHRASES, HEAD_WORDS, LENS_TINT, MOUTH_WORDS,
    NUM_FACE_CLASSES, NUM_PARTS, PARTS, POSE_WORDS, SKIN_TONES, SKIN_WORDS, DataError, FaceSpec, Faces, describe_face,
    face_class_name, face_label_of, render_face, sample_face,
)

from test_data import assert_items_equal

PART = {name: k for k, name in enumerate(PARTS)}


@pytest.fixture(scope="module")
def faces64():
    """(spec, item) of the first 60 faces at 64 px, shared by the consistency tests."""
    ds = Faces(size=64, length=60, seed=3)
    return [(ds.spec(i), ds[i]) for i in range(60)]


# ----------------------------------------------------------------------------
# Vocabulary and labels
# ----------------------------------------------------------------------------

def test_vocabulary():
    assert list(FACE_ATTRIBUTES) == ["head", "pose", "skin", "hair_color", "hair_style", "eyes", "mouth", "glasses",
                                     "background"]
    assert FACE_ATTRIBUTES["pose"] == ("left", "front", "right")
    assert FACE_ATTRIBUTES["mouth"] == ("closed", "smiling", "open")
    assert FACE_ATTRIBUTES["glasses"] == ("none", "glasses")
    assert PARTS == ("background", "skin", "hair", "eyes", "brows", "nose", "mouth", "glasses")
    assert NUM_PARTS == 8 and NUM_FACE_CLASSES == 15
    assert [f.name for f in dataclasses.fields(FaceSpec)][:len(FACE_ATTRIBUTES)] == list(FACE_ATTRIBUTES)
    # Every value has its colour; skin tones run from light to dark.
    for table, name in [(SKIN_TONES, "skin"), (HAIR_COLORS, "hair_color"), (EYE_COLORS, "eyes"),
                        (BACKGROUND_COLORS, "background")]:
        assert tuple(table) == FACE_ATTRIBUTES[name]
    luminance = [np.dot(rgb, (0.299, 0.587, 0.114)) for rgb in SKIN_TONES.values()]
    assert luminance == sorted(luminance, reverse=True)
    # Hair colours far apart: every pair differs by > 0.2 in some channel.
    rgb = np.array(list(HAIR_COLORS.values()))
    assert (np.abs(rgb[:, None] - rgb[None]).max(-1) + np.eye(len(rgb))).min() > 0.2


def test_face_class_name_and_label_of_round_trip():
    assert face_class_name(0) == "black hair, closed mouth"
    assert face_class_name(NUM_FACE_CLASSES - 1) == "grey hair, open mouth"
    for label in range(NUM_FACE_CLASSES):
        hair, mouth = re.fullmatch(r"(\w+) hair, (\w+) mouth", face_class_name(label)).groups()
        assert face_label_of(hair, mouth) == label
        assert label == (FACE_ATTRIBUTES["hair_color"].index(hair) * 3 + FACE_ATTRIBUTES["mouth"].index(mouth))


@pytest.mark.parametrize("label", [-1, 15, 2.0, True, "3"])
def test_face_class_name_rejects_bad_labels(label):
    with pytest.raises(DataError, match=rf"label must be .*\[0, 14\], got {re.escape(repr(label))}"):
        face_class_name(label)


def test_face_label_of_rejects_unknown_names():
    with pytest.raises(DataError, match=r"unknown hair_color 'purple'; expected one of \('black'"):
        face_label_of("purple", "open")
    with pytest.raises(DataError, match=r"unknown mouth 'frown'"):
        face_label_of("red", "frown")


# ----------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------

def test_items_depend_only_on_seed_and_index():
    ds = Faces(size=48, length=20, seed=5)
    in_order = [ds[i] for i in range(6)]
    # Any item alone, in any order, from a fresh dataset; negative indices count from the end.
    for i in [5, 1, 3, 0]:
        assert_items_equal(Faces(size=48, length=20, seed=5)[i], in_order[i])
    assert_items_equal(ds[-20], in_order[0])
    assert not torch.equal(in_order[0]["image"], in_order[1]["image"])
    assert not torch.equal(in_order[0]["image"], Faces(size=48, length=20, seed=6)[0]["image"])


def test_dataloader_workers_give_the_same_items():
    ds = Faces(size=32, length=8, seed=2)
    batch = next(iter(DataLoader(ds, batch_size=8, num_workers=2)))
    direct = torch.utils.data.default_collate([ds[i] for i in range(8)])
    assert batch["image"].shape == (8, 3, 32, 32) and batch["masks"].shape == (8, NUM_PARTS, 32, 32)
    assert batch["attributes"].shape == (8, len(FACE_ATTRIBUTES)) and batch["label"].dtype == torch.int64
    for key in ("image", "masks", "attributes", "label"):
        assert torch.equal(batch[key], direct[key]), key
    assert batch["caption"] == direct["caption"]


def test_describe_face_is_reproducible_from_the_rng_state():
    spec = sample_face(np.random.default_rng(0))
    assert describe_face(spec, np.random.default_rng(7)) == describe_face(spec, np.random.default_rng(7))
    assert len({describe_face(spec, np.random.default_rng(s)) for s in range(100)}) >= 60


# ----------------------------------------------------------------------------
# Shapes, ranges, masks
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("size,count", [(32, 4), (64, 4), (100, 2), (512, 1), (1024, 1)])
def test_item_shapes_types_and_ranges(size, count):
    ds = Faces(size=size)
    for i in range(count):
        item = ds[i]
        image, masks, attributes = item["image"], item["masks"], item["attributes"]
        assert image.shape == (3, size, size) and image.dtype == torch.float32
        assert masks.shape == (NUM_PARTS, size, size) and masks.dtype == torch.float32
        assert attributes.shape == (len(FACE_ATTRIBUTES),) and attributes.dtype == torch.int64
        assert -1 <= image.min() and image.max() <= 1
        assert 0 <= masks.min() and masks.max() <= 1
        torch.testing.assert_close(masks.sum(0), torch.ones(size, size), atol=1e-5, rtol=0)
        assert isinstance(item["label"], int) and 0 <= item["label"] < NUM_FACE_CLASSES
        assert isinstance(item["caption"], str) and item["caption"]


def test_render_face_returns_unit_range_image_and_soft_parsing_map():
    spec = sample_face(np.random.default_rng(1))
    image, masks = render_face(spec, 80)
    assert image.dtype == np.float32 and image.shape == (3, 80, 80) and 0 <= image.min() and image.max() <= 1
    assert masks.shape == (NUM_PARTS, 80, 80)
    np.testing.assert_allclose(masks.sum(0), 1, atol=1e-5)
    # Antialiased: edges have pixels shared between parts.
    assert ((masks.max(0) > 0.05) & (masks.max(0) < 0.95)).sum() > 20


def test_attributes_label_and_spec_agree(faces64):
    for spec, item in faces64:
        assert item["attributes"].tolist() == list(spec.attributes)
        for value, (name, values) in zip(item["attributes"].tolist(), FACE_ATTRIBUTES.items()):
            assert values[value] == getattr(spec, name)
        assert item["label"] == face_label_of(spec.hair_color, spec.mouth) == spec.label


def test_every_part_but_glasses_is_visible_and_corners_are_background(faces64):
    for spec, item in faces64:
        masks = item["masks"]
        area = masks.flatten(1).sum(1)
        for part in ("skin", "hair", "eyes", "brows", "nose", "mouth"):
            assert area[PART[part]] > 1.0, (part, spec)
        assert (masks[PART["background"], [0, 0, -1, -1], [0, -1, 0, -1]] > 0.99).all()


def test_glasses_mask_iff_glasses(faces64):
    seen = set()
    for spec, item in faces64:
        glasses = item["masks"][PART["glasses"]]
        seen.add(spec.glasses)
        if spec.glasses == "glasses":
            assert glasses.max() > 0.9                              # the frames
            # Through the lenses the eyes stay visible: glasses take only the tint's share there.
            eyes_seen = item["masks"][PART["eyes"]]
            assert (eyes_seen > 0.8).any() and glasses[eyes_seen > 0.8].max() <= LENS_TINT + 1e-6
        else:
            assert glasses.max() == 0
    assert seen == {"none", "glasses"}


def _median_colour(image, mask):
    """Median RGB in [0, 1] of the pixels where mask > 0.99."""
    return ((image[:, mask > 0.99] + 1) / 2).median(dim=1).values.numpy()


def test_hair_pixels_have_the_hair_colour(faces64):
    """The median colour where the hair mask is ~1 is nearest to the face's hair colour, up to shading (a
    brightness factor in [0.6, 1.2])."""
    palette = np.array(list(HAIR_COLORS.values()))
    for spec, item in faces64:
        colour = _median_colour(item["image"], item["masks"][PART["hair"]])
        scale = np.clip(palette @ colour / (palette * palette).sum(1), 0.6, 1.2)
        nearest = list(HAIR_COLORS)[np.abs(scale[:, None] * palette - colour).sum(1).argmin()]
        assert nearest == spec.hair_color, (colour, spec.hair_color)


def test_skin_and_eye_pixels_look_like_skin_and_eyes(faces64):
    for spec, item in faces64:
        image, masks = item["image"], item["masks"]
        skin = _median_colour(image, masks[PART["skin"]])
        assert np.all(np.abs(skin / np.array(spec.skin_rgb) - 1) < 0.25), (skin, spec.skin_rgb)
    # Eyes have whites (at a size where an eye is more than a few pixels; lenses take a little of the pixel).
    ds = Faces(size=128, seed=3)
    for i in range(6):
        item = ds[i]
        eyes = (item["image"][:, item["masks"][PART["eyes"]] > 0.8] + 1) / 2
        assert (eyes.min(0).values > 0.8).any()


@pytest.mark.parametrize("mouth", ["closed", "smiling", "open"])
def test_teeth_show_iff_the_mouth_is_not_closed(mouth):
    spec = next(s for s in (sample_face(np.random.default_rng([11, i])) for i in range(100)) if s.mouth == mouth)
    image, masks = render_face(spec, 256)
    white = (image[:, masks[PART["mouth"]] > 0.9] > 0.85).all(0)
    assert white.any() == (mouth != "closed")


def test_pose_turns_the_features_towards_its_side():
    """Facing right moves the nose to the right of the head's middle (the image's right), and left to the left."""
    for i in range(40):
        spec = sample_face(np.random.default_rng([5, i]))
        _, masks = render_face(spec, 64)
        nose = masks[PART["nose"]]
        x = (nose.sum(0) * (np.arange(64) + 0.5) / 64).sum() / nose.sum()
        offset = (x - spec.cx) / spec.head_rx
        if spec.pose == "front":
            assert abs(offset) < 0.15, (offset, spec.yaw)
        else:
            assert offset * (1 if spec.pose == "right" else -1) > 0.2, (offset, spec.pose)


def test_masks_agree_across_sizes():
    """The same face at 128 px, averaged down to 64 px, has the masks of the 64-px face (up to edge pixels)."""
    spec = sample_face(np.random.default_rng(4))
    small, big = render_face(spec, 64)[1], render_face(spec, 128)[1]
    down = big.reshape(NUM_PARTS, 64, 2, 64, 2).mean((2, 4))
    assert np.abs(down - small).mean() < 0.01


def test_every_value_and_class_occurs():
    specs = [sample_face(np.random.default_rng([0, i])) for i in range(400)]
    for name, values in FACE_ATTRIBUTES.items():
        assert {getattr(s, name) for s in specs} == set(values), name
    assert {s.label for s in specs} == set(range(NUM_FACE_CLASSES))
    front = sum(s.pose == "front" for s in specs) / len(specs)
    glasses = sum(s.glasses == "glasses" for s in specs) / len(specs)
    assert 0.4 < front < 0.6 and 0.2 < glasses < 0.4
    # Continuous nuisance: no two faces share their geometry.
    assert len({(s.cx, s.head_rx, s.eye_y) for s in specs}) == len(specs)


# ----------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------

def test_captions_name_the_attributes_they_mention_correctly(faces64):
    for spec, item in faces64:
        caption = item["caption"]
        hair = [phrase.format(color=color) for phrase in HAIR_STYLE_PHRASES[spec.hair_style]
                for color in HAIR_COLOR_WORDS[spec.hair_color]]
        assert any(h in caption for h in hair), (caption, spec.hair_style, spec.hair_color)
        assert any(w in caption for w in MOUTH_WORDS[spec.mouth]), caption
        without_no = caption.replace("no glasses", "")
        if spec.glasses == "glasses":
            assert any(w in without_no for w in GLASSES_WORDS["glasses"]) and "no glasses" not in caption
        else:
            assert "glasses" not in without_no and "spectacles" not in without_no
        # Optional details, when said, are said right: no other value's phrase appears.
        for table, name in [(EYE_WORDS, "eyes"), (SKIN_WORDS, "skin"), (HEAD_WORDS, "head"), (POSE_WORDS, "pose"),
                            (FACE_BACKGROUND_WORDS, "background")]:
            for value, words in table.items():
                if value != getattr(spec, name):
                    assert not any(w in caption for w in words), (caption, name, value)


def _template_regex(template):
    pattern = re.escape(template)
    for slot in ("who", "pose", "features", "background"):
        pattern = pattern.replace(rf"\{{{slot}\}}", ".*")
    return re.compile(pattern + "$")


def test_captions_vary_and_mention_optional_details_sometimes():
    ds = Faces(size=32, length=300)
    rngs = [np.random.default_rng([0, i]) for i in range(300)]
    specs = [sample_face(rng) for rng in rngs]
    captions = [describe_face(spec, rng) for spec, rng in zip(specs, rngs)]  # as Faces does
    assert captions[:5] == [ds[i]["caption"] for i in range(5)]
    assert len(set(captions)) >= 295
    used = {t for t in FACE_TEMPLATES for c in captions if _template_regex(t).match(c) and t != FACE_TEMPLATES[0]}
    assert len(used) >= len(FACE_TEMPLATES) - 2
    for name, table in [("eyes", EYE_WORDS), ("skin", SKIN_WORDS), ("head", HEAD_WORDS), ("pose", POSE_WORDS),
                        ("background", FACE_BACKGROUND_WORDS)]:
        said = np.mean([any(w in c for w in table[getattr(s, name)]) for s, c in zip(specs, captions)])
        assert abs(said - CAPTION_MENTION[name]) < 0.12, (name, said)


def test_articles_agree_with_the_next_word():
    for i in range(100):
        caption = describe_face(sample_face(np.random.default_rng(i)), np.random.default_rng(i))
        assert not re.search(r"\ba [aeiou]", caption), caption
        assert not re.search(r"\ban [^aeiou]", caption), caption


# ----------------------------------------------------------------------------
# Bad arguments
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    *[({"size": size}, rf"size must be an int in \[32, 1024\], got {re.escape(repr(size))}")
      for size in (16, 31, 1025, 64.0, "64", True)],
    ({"length": 0}, r"length must be an int >= 1, got 0"),
    ({"seed": -1}, r"seed must be an int >= 0, got -1"),
    ({"seed": 1.5}, r"seed must be an int >= 0, got 1.5"),
])
def test_faces_rejects_bad_arguments(kwargs, match):
    with pytest.raises(DataError, match=match):
        Faces(**kwargs)


def test_faces_index_out_of_range_and_repr():
    ds = Faces(size=32, length=10, seed=4)
    with pytest.raises(IndexError, match="10"):
        ds[10]
    with pytest.raises(IndexError):
        ds[-11]
    assert repr(ds) == "Faces(size=32, length=10, seed=4)"
    assert len(ds) == 10


def test_face_spec_is_frozen():
    spec = sample_face(np.random.default_rng(0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.hair_color = "red"
    redone = dataclasses.replace(spec, hair_color="red")
    assert redone.label == face_label_of("red", spec.mouth)
    with pytest.raises(DataError, match="unknown hair_color 'purple'"):
        dataclasses.replace(spec, hair_color="purple").attributes
