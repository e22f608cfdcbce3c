"""Specification of tinyldm.data: procedural scenes and real-image loaders."""

import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tinyldm.data import (
    BACKGROUND_WORDS, COLOR_WORDS, COLORS, NUM_CLASSES, SCENE_TEMPLATES, SHAPE_WORDS, SHAPES,
    SIZE_RADII, SIZES, UPRIGHT_ANGLES, Background, DataError, ImageFolder, SceneObject, Scenes, TorchvisionImages,
    class_name, describe, label_of, prepare_image, render_scene, resize_center_crop, to_tensor_image,
)


def assert_items_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


# ----------------------------------------------------------------------------
# Vocabulary and labels
# ----------------------------------------------------------------------------

def test_vocabulary():
    assert SHAPES == ("circle", "square", "triangle", "star")
    assert list(COLORS) == ["red", "orange", "yellow", "green", "blue", "purple"]
    assert SIZES == ("small", "large")
    assert NUM_CLASSES == 24
    rgb = np.array(list(COLORS.values()))
    assert rgb.min() >= 0 and rgb.max() <= 1
    # Hues far apart: every pair differs by > 0.25 in some channel.
    gaps = np.abs(rgb[:, None] - rgb[None]).max(-1) + np.eye(len(rgb))
    assert gaps.min() > 0.25


def test_class_name_and_label_of_round_trip():
    assert class_name(0) == "red circle"
    assert label_of("star", "purple") == NUM_CLASSES - 1
    for label in range(NUM_CLASSES):
        color, shape = class_name(label).split()
        assert label_of(shape, color) == label
        assert label == SHAPES.index(shape) * len(COLORS) + list(COLORS).index(color)


@pytest.mark.parametrize("label", [-1, 24, 100])
def test_class_name_rejects_out_of_range(label):
    with pytest.raises(ValueError, match=rf"\[0, 23\].*{label}"):
        class_name(label)


def test_label_of_rejects_unknown_names():
    with pytest.raises(ValueError, match="hexagon"):
        label_of("hexagon", "red")
    with pytest.raises(ValueError, match="pink"):
        label_of("circle", "pink")


# ----------------------------------------------------------------------------
# Scenes: determinism
# ----------------------------------------------------------------------------

def test_same_seed_and_index_give_identical_items():
    a = Scenes(size=32, seed=3, max_objects=3)[5]
    b = Scenes(size=32, seed=3, max_objects=3)[5]
    assert_items_equal(a, b)


def test_items_regenerated_out_of_order_are_identical():
    ds = Scenes(size=32, length=20, max_objects=2)
    forward = [ds[i] for i in range(8)]
    fresh = Scenes(size=32, length=20, max_objects=2)
    for i in [7, 2, 5, 0]:
        assert_items_equal(fresh[i], forward[i])
    assert_items_equal(ds[-1], ds[19])


def test_different_seed_or_index_give_different_items():
    a = Scenes(size=32, seed=0)[0]
    assert not torch.equal(a["image"], Scenes(size=32, seed=1)[0]["image"])
    assert not torch.equal(a["image"], Scenes(size=32, seed=0)[1]["image"])


def test_objects_match_the_item():
    ds = Scenes(size=32, max_objects=3)
    objects, background = ds.objects(4)
    item = ds[4]
    assert all(isinstance(o, SceneObject) for o in objects)
    assert isinstance(background, Background) and background.tone in ("dark", "light")
    assert item["n_objects"] == len(objects)
    assert item["attributes"][: len(objects)].tolist() == [list(o.attributes) for o in objects]


# ----------------------------------------------------------------------------
# Scenes: shapes, ranges, consistency
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("size,count", [(32, 4), (64, 4), (100, 2), (512, 1)])
def test_item_shapes_types_and_ranges(size, count):
    ds = Scenes(size=size, max_objects=3)
    for i in range(count):
        item = ds[i]
        image, masks, attributes = item["image"], item["masks"], item["attributes"]
        assert image.shape == (3, size, size) and image.dtype == torch.float32
        assert masks.shape == (3, size, size) and masks.dtype == torch.float32
        assert attributes.shape == (3, 3) and attributes.dtype == torch.int64
        assert -1 <= image.min() and image.max() <= 1
        assert 0 <= masks.min() and masks.max() <= 1
        # Visible coverages partition (part of) each pixel.
        assert masks.sum(0).max() <= 1 + 1e-5
        assert isinstance(item["label"], int) and 0 <= item["label"] < NUM_CLASSES
        assert isinstance(item["caption"], str) and item["caption"]
        assert isinstance(item["n_objects"], int)


def test_objects_stay_inside_the_image():
    ds = Scenes(size=32, max_objects=4)
    for i in range(50):
        for o in ds.objects(i)[0]:
            assert o.radius <= o.cx <= 1 - o.radius and o.radius <= o.cy <= 1 - o.radius


def test_n_objects_attributes_and_padding():
    ds = Scenes(size=32, length=100, max_objects=4, min_objects=2)
    counts = set()
    for i in range(40):
        item = ds[i]
        n = item["n_objects"]
        counts.add(n)
        assert 2 <= n <= 4
        attributes, masks = item["attributes"], item["masks"]
        assert (attributes[:n] >= 0).all()
        assert (attributes[n:] == -1).all()
        assert (masks[n:] == 0).all()
        shape, color, _ = attributes[0].tolist()
        assert item["label"] == shape * len(COLORS) + color
    assert counts == {2, 3, 4}


def test_caption_names_colour_and_shape_of_every_object():
    ds = Scenes(size=32, max_objects=3)
    for i in range(40):
        caption = ds[i]["caption"]
        for o in ds.objects(i)[0]:
            assert any(w in caption for w in COLOR_WORDS[o.color]), (caption, o)
            assert any(w in caption for w in SHAPE_WORDS[o.shape]), (caption, o)


def test_first_object_mask_is_non_empty_and_has_the_object_colour():
    ds = Scenes(size=64, max_objects=2)
    for i in range(20):
        item = ds[i]
        obj = ds.objects(i)[0][0]
        solid = item["masks"][0] > 0.99
        assert solid.sum() >= 10
        mean_rgb = ((item["image"][:, solid] + 1) / 2).mean(1)
        assert torch.allclose(mean_rgb, torch.tensor(COLORS[obj.color]), atol=0.02)
        assert item["label"] == label_of(obj.shape, obj.color)


def test_occluded_object_mask_loses_covered_pixels():
    # Where object 1 fully covers a pixel, object 0 contributes nothing there.
    ds = Scenes(size=64, max_objects=2, min_objects=2)
    for i in range(10):
        masks = ds[i]["masks"]
        assert (masks[0][masks[1] >= 1.0] == 0).all()


def test_backgrounds_are_grey_not_object_colours():
    for i in range(30):
        rgb = np.array(Scenes(size=32).objects(i)[1].rgb)
        assert rgb.max() - rgb.min() < 0.06


def test_dataloader_collates_a_batch():
    loader = DataLoader(Scenes(size=32, length=16, max_objects=2), batch_size=8)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 3, 32, 32)
    assert batch["masks"].shape == (8, 2, 32, 32)
    assert batch["attributes"].shape == (8, 2, 3)
    assert batch["label"].shape == (8,) and batch["label"].dtype == torch.int64
    assert batch["n_objects"].shape == (8,)
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == 8


# ----------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------

def _template_regex(template):
    pattern = re.escape(template).replace(r"\{objects\}", ".+").replace(r"\{background\}", ".+")
    return re.compile(pattern + "$")


def test_captions_vary_across_items():
    ds = Scenes(size=32, length=200, max_objects=2)
    captions = [ds[i]["caption"] for i in range(200)]
    assert len(set(captions)) >= 190
    templates = [t for t in SCENE_TEMPLATES if t != "{objects}"]
    used = {t for t in templates for c in captions if _template_regex(t).match(c)}
    assert len(used) >= len(templates) - 2
    assert any(w in c for c in captions for ws in BACKGROUND_WORDS.values() for w in ws)


def test_describe_varies_phrasing_and_is_reproducible():
    objects = [SceneObject("circle", "red", "small", 0.2, 0.2, 0.15, 0.0)]
    captions = {describe(objects, "dark", np.random.default_rng(s)) for s in range(200)}
    assert len(captions) >= 60
    for word in ["red", "crimson", "scarlet", "circle", "disc", "round dot", "in the top left"]:
        assert any(word in c for c in captions), word
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    assert describe(objects, "light", rng_a) == describe(objects, "light", rng_b)


def test_describe_joins_several_objects():
    objects = [SceneObject("star", "blue", "large", 0.5, 0.5, 0.25, 0.1),
               SceneObject("square", "green", "small", 0.8, 0.8, 0.15, 0.3),
               SceneObject("triangle", "yellow", "small", 0.2, 0.8, 0.15, 0.3)]
    caption = describe(objects, "light", np.random.default_rng(0))
    for o in objects:
        assert any(w in caption for w in COLOR_WORDS[o.color])
        assert any(w in caption for w in SHAPE_WORDS[o.shape])
    assert " and " in caption


def test_article_agrees_with_the_next_word():
    objects = [SceneObject("circle", "orange", "large", 0.5, 0.5, 0.25, 0.0)]
    for s in range(50):
        caption = describe(objects, "dark", np.random.default_rng(s))
        assert not re.search(r"\ba [aeiou]", caption), caption
        assert not re.search(r"\ban [^aeiou]", caption), caption


# ----------------------------------------------------------------------------
# Scenes: bad arguments
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [16, 31, 513, 1024, 64.0, "64", True])
def test_scenes_rejects_bad_size(size):
    with pytest.raises(ValueError, match=rf"size must be an int in \[32, 512\], got {re.escape(repr(size))}"):
        Scenes(size=size)


@pytest.mark.parametrize("kwargs,match", [
    ({"length": 0}, r"length must be an int >= 1, got 0"),
    ({"seed": -1}, r"seed must be an int >= 0, got -1"),
    ({"max_objects": 5}, r"max_objects must be an int in \[1, 4\], got 5"),
    ({"min_objects": 0}, r"min_objects must be an int in \[1, 4\], got 0"),
    ({"min_objects": 3, "max_objects": 2}, r"min_objects=3 and max_objects=2"),
])
def test_scenes_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Scenes(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"sizes": ()}, r"sizes must be distinct names from \('small', 'large'\)"),
    ({"sizes": "large"}, r"got 'large'"),
    ({"sizes": ("huge",)}, r"got \('huge',\)"),
    ({"sizes": ("large", "large")}, r"distinct"),
    ({"upright": 1}, r"upright must be True or False, got 1"),
])
def test_scenes_rejects_bad_sizes_and_upright(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Scenes(**kwargs)


def test_fewer_sizes_and_upright_change_only_what_they_say():
    every, large = Scenes(length=64), Scenes(length=64, sizes=("large",))
    upright = Scenes(length=64, upright=True)
    assert "sizes=('large',)" in repr(large) and "upright=True" in repr(upright) and "sizes" not in repr(every)
    seen_small = False
    for i in range(64):
        (a,), bg_a = every.objects(i)
        (b,), bg_b = large.objects(i)
        (c,), bg_c = upright.objects(i)
        seen_small |= a.size == "small"
        assert b.size == "large" and SIZE_RADII["large"][0] <= b.radius <= SIZE_RADII["large"][1]
        assert (b.shape, b.color, b.angle, bg_b) == (a.shape, a.color, a.angle, bg_a)
        assert (c.shape, c.color, c.size, c.cx, c.cy, c.radius, bg_c) == (a.shape, a.color, a.size, a.cx, a.cy,
                                                                          a.radius, bg_a)
    assert seen_small
    assert Scenes(length=64, sizes=SIZES).objects(5) == every.objects(5)  # all sizes given = the default


def test_upright_shapes_point_up_and_squares_sit_level():
    """An upright triangle or star has a vertex straight above its centre; a square has level edges."""
    for shape in ("triangle", "star", "square"):
        obj = SceneObject(shape, "red", "large", 0.5, 0.5, 0.3, UPRIGHT_ANGLES[shape])
        img, _ = render_scene([obj], Background("dark", (0.2, 0.2, 0.2), 0.0, 0.0), 64)
        cover = img[0] > 0.5  # the red channel: the object
        rows = cover.any(axis=1).nonzero()[0]
        top = cover[rows[0]].nonzero()[0]
        if shape == "square":  # level edges: the top row of the object is as wide as the object
            assert len(top) >= 0.9 * cover.any(axis=0).sum()
        else:  # a point up: the top row is a few pixels at the centre
            assert len(top) <= 4 and abs(top.mean() - 31.5) <= 1.5


def test_scenes_index_out_of_range():
    ds = Scenes(size=32, length=10)
    with pytest.raises(IndexError, match="10"):
        ds[10]
    with pytest.raises(IndexError):
        ds[-11]


# ----------------------------------------------------------------------------
# Real images
# ----------------------------------------------------------------------------

def _write(path, array, **save_kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save_kwargs)
    return path


def _thirds(width, height, vertical=False):
    """uint8 image split in three bands (red, green, blue), left to right or top to bottom."""
    array = np.zeros((height, width, 3), np.uint8)
    n = height if vertical else width
    for k in range(3):
        band = slice(k * n // 3, (k + 1) * n // 3)
        if vertical:
            array[band, :, k] = 255
        else:
            array[:, band, k] = 255
    return array


def test_image_folder_loads_recursively_sorted(tmp_path):
    _write(tmp_path / "b.png", _thirds(96, 32))
    _write(tmp_path / "a.jpg", _thirds(30, 90, vertical=True), quality=95)
    _write(tmp_path / "sub" / "grey.png", np.full((20, 20), 128, np.uint8))
    _write(tmp_path / "sub" / "rgba.PNG", np.full((24, 40, 4), 200, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolder(tmp_path, 16)
    assert [p.relative_to(tmp_path).as_posix() for p in ds.paths] == [
        "a.jpg", "b.png", "sub/grey.png", "sub/rgba.PNG"]
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
        assert -1 <= item["image"].min() and item["image"].max() <= 1
        assert item["label"] == 0 and item["caption"] == ""
        assert item["path"] == str(ds.paths[i])
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 16)


@pytest.mark.parametrize("vertical", [False, True])
def test_image_folder_center_crops_non_square_images(tmp_path, vertical):
    # Bands red | green | blue: the centre crop of a 3:1 image is the green band.
    shape = (32, 96) if vertical else (96, 32)
    _write(tmp_path / "wide.png", _thirds(*shape, vertical=vertical))
    image = (ImageFolder(tmp_path, 16)[0]["image"] + 1) / 2
    core = image[:, 4:12, 4:12].reshape(3, -1)
    assert torch.allclose(core, torch.tensor([[0.0], [1.0], [0.0]]).expand_as(core), atol=0.05)


def test_image_folder_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=re.escape(str(missing)) + ".*does not exist"):
        ImageFolder(missing, 64)


def test_image_folder_on_a_file(tmp_path):
    path = _write(tmp_path / "x.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=re.escape(str(path)) + " is a file"):
        ImageFolder(path, 64)


def test_image_folder_empty(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError, match=r"no images with extensions \.jpg, .*\.png.*" + re.escape(str(tmp_path))):
        ImageFolder(tmp_path, 64)


def test_image_folder_corrupt_file_fails_when_read(tmp_path):
    _write(tmp_path / "good.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "zbad.png").write_bytes(b"this is not a png")
    ds = ImageFolder(tmp_path, 8)
    ds[0]
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "zbad.png"))):
        ds[1]


@pytest.mark.parametrize("size", [0, -8, 12, 4096, 64.0])
def test_image_size_must_be_a_multiple_of_8(tmp_path, size):
    _write(tmp_path / "x.png", np.zeros((8, 8, 3), np.uint8))
    match = rf"multiple of 8 in \[8, 2048\].*got {re.escape(repr(size))}"
    with pytest.raises(DataError, match=match):
        ImageFolder(tmp_path, size)
    with pytest.raises(DataError, match=match):
        TorchvisionImages([], size)


def test_torchvision_images_with_fake_data():
    import torchvision  # a dependency of tinyldm: missing, it fails the run
    fake = torchvision.datasets.FakeData(size=6, image_size=(3, 40, 30), num_classes=5)
    ds = TorchvisionImages(fake, 16)
    assert len(ds) == 6
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 16, 16)
        assert -1 <= item["image"].min() and item["image"].max() <= 1
        assert item["label"] == int(fake[i][1]) and item["caption"] == ""
    # Datasets that already yield tensors (e.g. with transform=ToTensor()) work too.
    as_tensors = torchvision.datasets.FakeData(
        size=2, image_size=(3, 40, 30), num_classes=5, transform=torchvision.transforms.ToTensor())
    assert TorchvisionImages(as_tensors, 8)[0]["image"].shape == (3, 8, 8)
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, 16, 16) and batch["label"].shape == (3,)


def test_torchvision_images_rejects_non_integer_targets():
    pairs = [(np.zeros((8, 8, 3), np.uint8), "a cat")]
    with pytest.raises(DataError, match="integer class target.*a cat"):
        TorchvisionImages(pairs, 8)[0]


# ----------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------

def test_to_tensor_image_conventions():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 255
    out = to_tensor_image(rgb)  # numpy: HWC
    assert out.shape == (3, 4, 6) and out.dtype == torch.float32
    assert torch.equal(out[0], torch.ones(4, 6)) and torch.equal(out[1], -torch.ones(4, 6))
    assert torch.equal(to_tensor_image(Image.fromarray(rgb)), out)
    assert torch.equal(to_tensor_image(torch.from_numpy(rgb).permute(2, 0, 1)), out)  # torch: CHW
    assert torch.equal(to_tensor_image(rgb.astype(np.float32) / 255), out)
    grey = to_tensor_image(np.full((4, 6), 255, np.uint8))
    assert grey.shape == (3, 4, 6) and (grey == 1).all()
    with pytest.raises(DataError, match=r"shape \(4, 6, 2\)"):
        to_tensor_image(np.zeros((4, 6, 2), np.uint8))
    with pytest.raises(DataError, match="list"):
        to_tensor_image([[0, 1]])


def test_resize_center_crop_and_prepare_image():
    image = Image.fromarray(_thirds(90, 30))
    cropped = resize_center_crop(image, 24)
    assert cropped.size == (24, 24) and cropped.mode == "RGB"
    assert prepare_image(image, 24).shape == (3, 24, 24)
    assert prepare_image(torch.rand(3, 50, 70), 16).shape == (3, 16, 16)


def test_random_crops_are_fresh_every_step_and_repeatable_by_seed():
    from tinyldm.data import random_crops

    scenes = Scenes(size=32, length=4, seed=0)
    batch = torch.utils.data.default_collate([scenes[i] for i in range(4)])
    a = random_crops(batch, 16, torch.Generator().manual_seed(0))
    again = random_crops(batch, 16, torch.Generator().manual_seed(0))
    other_step = random_crops(batch, 16, torch.Generator().manual_seed(1))
    assert a["image"].shape == (4, 3, 16, 16) and a["masks"].shape[-2:] == (16, 16)
    assert torch.equal(a["image"], again["image"]) and not torch.equal(a["image"], other_step["image"])
    assert a["label"] is batch["label"] and batch["image"].shape[-1] == 32  # the rest as it was, input untouched
    # each crop is a window of its own image, and the masks are cut at the same place as the image
    for i in range(4):
        windows = batch["image"][i].unfold(1, 16, 1).unfold(2, 16, 1)  # [3, 17, 17, 16, 16]
        hits = (windows == a["image"][i][:, None, None]).flatten(3).all(-1).all(0).nonzero()
        assert len(hits) >= 1
        top, left = hits[0].tolist()
        torch.testing.assert_close(a["masks"][i], batch["masks"][i][:, top:top + 16, left:left + 16])
    with pytest.raises(DataError, match=r"crop size in 1..32 for 32x32 images, got 40"):
        random_crops(batch, 40)
