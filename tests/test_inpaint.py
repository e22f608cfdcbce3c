"""Finetuning with masks: the mask generators, the inpainting and parsing-map models, the baselines, the measures."""
import json

import numpy as np
import pytest
import torch

from tinyldm.autoencoder import Autoencoder, AutoencoderConfig
from tinyldm.cli import main
from tinyldm.conditioning import ConcatCondition, Conditions, Guided, LabelCondition
from tinyldm.data import (FACE_MASK_PARTS, MASK_KINDS, PARTS, DataError, Faces, MaskConfig, MaskGenerator, Scenes,
                          masked_image)
from tinyldm.inpaint import (InpaintingLatents, MaskedImages, ParsingMaps, blended_sample, concat_channels, concat_kind,
                             inpaint, inpainting_inputs, inpainting_scores, inpainting_unet, latent_mask, parsing_map,
                             parsing_unet, repaint_sample, repaint_times, seam_error)
from tinyldm.latents import encode_dataset
from tinyldm.metrics import Segmenter, SegmenterConfig, mean_iou, segmenter_loss
from tinyldm.recipes import train_diffusion
from tinyldm.sample import DDIM, sample
from tinyldm.schedule import NoiseSchedule
from tinyldm.train import TrainConfig, Trainer
from tinyldm.unet import UNet, UNetConfig

from helpers import perturbed


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def scenes():
    return Scenes(size=64, length=40, seed=1, sizes=("large",), upright=True)


@pytest.fixture(scope="module")
def faces():
    return Faces(size=64, length=40, seed=1)


@pytest.fixture
def build(tmp_path, monkeypatch):
    monkeypatch.setattr("tinyldm.recipes.BUILD_DIR", tmp_path / "build")
    return tmp_path


def tiny_ae():
    torch.manual_seed(0)
    return Autoencoder(AutoencoderConfig.tiny()).eval()


# -- masks -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_every_mask_kind_is_deterministic_hard_and_at_any_size(kind, scenes, faces):
    generator = MaskGenerator(MaskConfig.only(kind), seed=3)
    for i in range(12):
        item = scenes[i] if i % 2 else faces[i]
        mask = generator(i, item=item)
        assert mask.shape == (1, 64, 64) and mask.dtype == torch.float32
        assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.sum() > 0  # hard, and there is a hole
        if kind != "everything":
            assert (mask == 0).any()  # and something is kept
        assert torch.equal(mask, MaskGenerator(MaskConfig.only(kind), seed=3)(i, item=item))  # same (seed, index)
        assert generator.kind(i) == kind
    if kind != "object":
        for size in (32, 100, 256):
            assert generator(0, size).shape == (1, size, size)
        masks = [generator(i, 64) for i in range(8)]
        if kind != "everything":
            assert not all(torch.equal(masks[0], m) for m in masks[1:])  # other indices, other masks
            assert not torch.equal(MaskGenerator(MaskConfig.only(kind), seed=4)(0, 64), masks[0])  # other seed


def test_the_mix_of_kinds_follows_the_config_and_the_default_masks_everything_in_a_quarter():
    generator = MaskGenerator(MaskConfig(), seed=0)
    kinds = [generator.kind(i) for i in range(4000)]
    for kind, p in MaskConfig().probabilities.items():
        assert abs(kinds.count(kind) / 4000 - p) < 0.03, kind
    assert MaskConfig().probabilities["everything"] == 0.25
    hole = torch.stack([MaskGenerator(MaskConfig.only("strokes"), seed=0)(i, 64) for i in range(200)]).mean()
    assert 0.05 < hole < 0.5  # strokes cover some of the image, not most of it


def test_object_masks_cover_the_object_or_the_face_part(scenes, faces):
    generator = MaskGenerator(MaskConfig.only("object", margin=0.06), seed=0)
    for i in range(10):
        item = scenes[i]
        mask = generator(i, item=item)[0]
        inside = item["masks"][0] >= 0.5
        assert bool(mask[inside].eq(1).all())  # the whole object is in the hole ...
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()  # ... which is a box around it
        assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].eq(1).all()
    for part in FACE_MASK_PARTS:
        generator = MaskGenerator(MaskConfig.only("object", parts=(part,)), seed=0)
        for i in range(20):
            item = faces[i]
            inside = item["masks"][PARTS.index(part)] >= 0.5
            if not inside.any():
                continue  # e.g. no glasses: that part cannot be cut out
            mask = generator(i, item=item)[0]
            assert bool(mask[inside].eq(1).all()) and mask.sum() > inside.sum()  # the part, grown by the margin


def test_bad_mask_configs_and_items_get_clear_errors(scenes):
    with pytest.raises(DataError, match="not all 0"):
        MaskConfig(boxes=0, strokes=0, outpaint=0, object=0, everything=0)
    with pytest.raises(DataError, match="unknown mask kind 'blobs'"):
        MaskConfig.parse("blobs=1")
    with pytest.raises(DataError, match="KIND=WEIGHT"):
        MaskConfig.parse("boxes=a lot")
    assert MaskConfig.parse("boxes=1, everything=1").probabilities == {
        "boxes": 0.5, "strokes": 0.0, "outpaint": 0.0, "object": 0.0, "everything": 0.5}
    with pytest.raises(DataError, match="parts must be names from"):
        MaskConfig(parts=("ears",))
    objects = MaskGenerator(MaskConfig.only("object"))
    with pytest.raises(DataError, match="needs the dataset item"):
        objects(0, 64)
    with pytest.raises(DataError, match="needs an item of the procedural data with 'masks'"):
        objects(0, item={"image": torch.zeros(3, 64, 64)})
    with pytest.raises(DataError, match="size 32 differs from the item's image size 64"):
        objects(0, 32, item=scenes[0])


def test_masked_image_and_latent_mask_conventions():
    x = randn(2, 3, 16, 16)
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, :, 2:7, 5:9] = 1.0
    mask[1, :, 0, 0] = 0.5  # a soft value: 0.5 counts as the hole (x * (mask < 0.5))
    masked = masked_image(x, mask)
    assert masked[0, :, 2:7, 5:9].eq(0).all() and torch.equal(masked[0, :, :2], x[0, :, :2])
    assert masked[1, :, 0, 0].eq(0).all() and torch.equal(masked[1, :, 1:], x[1, :, 1:])
    small = latent_mask(mask, (4, 4))  # a cell is in the hole if any of its 4x4 pixels is
    assert small[0, 0].tolist() == [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    nearest = latent_mask(mask, (4, 4), "nearest")  # one pixel per cell, as SD's pipeline resizes
    assert nearest[0, 0].tolist() == [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]  # pixels 0, 4, 8, 12
    with pytest.raises(ValueError, match=r"shape \[b, 1, H, W\] \(one channel, 1 = the hole\), got \[2, 3, 16, 16\]"):
        masked_image(x, mask.expand(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"mask \[2, 1, 16, 16\] to match the image \[2, 3, 16, 16\], got \[2, 1, 8, 8\]"):
        masked_image(x, mask[..., :8, :8])
    with pytest.raises(ValueError, match="values in \\[0, 1\\].*from 0 to 255"):
        masked_image(x, mask * 255)
    with pytest.raises(ValueError, match="do not tile a 3x3 latent grid"):
        latent_mask(mask, (3, 3))
    with pytest.raises(ValueError, match="mask_resize one of"):
        latent_mask(mask, (4, 4), "bilinear")


# -- the models ---------------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_the_zero_initialised_models_start_exactly_as_the_base():
    base = perturbed(UNet(UNetConfig.tiny(num_classes=3, eps_skip=True)))
    inpainter, parser = inpainting_unet(base), parsing_unet(base, f=4)
    assert inpainter.config.in_channels == 9  # [z_t, m, z_masked]
    assert parser.config.in_channels == 4 + len(PARTS) * 16  # [z_t, map]: each part's 4 x 4 pixels of each cell
    assert concat_kind(inpainter) == "inpaint" and concat_kind(parser) == "parsing" and concat_kind(base) is None
    x_t, y = randn(2, 4, 8, 8), torch.tensor([0, 3])
    for model, k in ((inpainter, 5), (parser, len(PARTS) * 16)):
        for seed in (1, 2):
            torch.testing.assert_close(model(x_t, 40, y, concat=10 * randn(2, k, 8, 8, seed=seed)), base(x_t, 40, y),
                                       rtol=0, atol=0)
    with pytest.raises(ValueError, match="already has 5 extra input channels .* expected a plain model"):
        inpainting_unet(inpainter)
    with pytest.raises(ValueError, match="already has 128 extra input channels"):
        parsing_unet(parser, f=4)
    with pytest.raises(ValueError, match="expected f, the autoencoder's downsampling factor"):
        parsing_unet(base, f=0)
    with pytest.raises(ValueError, match="depend on the autoencoder's factor f"):
        concat_channels("parsing", 4)


@torch.no_grad()
def test_the_inpainting_inputs_are_the_mask_then_the_masked_latent():
    ae = tiny_ae()
    x, mask = randn(2, 3, 32, 32).clamp(-1, 1), torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:20, 4:12] = 1
    concat = inpainting_inputs(ae, x, mask)
    assert concat.shape == (2, 5, 8, 8)
    torch.testing.assert_close(concat[:, :1], latent_mask(mask, (8, 8)))
    torch.testing.assert_close(concat[:, 1:], ae.to_latent(x * (mask < 0.5)))


def test_stable_diffusions_nine_channel_unet_is_read_as_an_inpainting_model():
    sd_like = UNet(UNetConfig.tiny(in_channels=9))  # converted SD inpainting weights carry no record
    assert concat_kind(sd_like) == "inpaint"
    with pytest.raises(ValueError, match="3 extra input channels and no record"):
        concat_kind(UNet(UNetConfig.tiny(in_channels=7)))


@torch.no_grad()
@pytest.mark.parametrize("method", ["model", "blend", "repaint"])
def test_inpaint_keeps_the_known_pixels_exactly(method):
    ae = tiny_ae()
    base = perturbed(UNet(UNetConfig.tiny(num_classes=3)), scale=0.05)
    model = perturbed(inpainting_unet(base), seed=1, scale=0.05) if method == "model" else base
    x = randn(3, 3, 32, 32).clamp(-1, 1)
    mask = MaskGenerator(MaskConfig.only("boxes"), seed=0)
    mask = torch.stack([mask(i, 32) for i in range(3)])
    condition = LabelCondition(3)
    result = inpaint(model, ae, x, mask, condition.given([0, 1, 2]), condition.null(3), s=2.0, method=method,
                     sampler=DDIM(model.schedule, steps=4), jump=2, resample=2)
    known = mask.expand_as(x) == 0
    assert torch.equal(result.images[known], x[known])  # bit for bit
    assert not torch.equal(result.images[~known], x[~known])  # the hole is drawn anew
    torch.testing.assert_close(result.images[~known], result.raw[~known])
    # RePaint's walk over 4 steps with jump 2 and resample 2 is 4 3 2 3 4 3 2 1 0: six steps down
    assert result.evals == (6 if method == "repaint" else 4)
    again = inpaint(model, ae, x, mask, condition.given([0, 1, 2]), condition.null(3), s=2.0, method=method,
                    sampler=DDIM(model.schedule, steps=4), jump=2, resample=2)
    assert torch.equal(again.images, result.images)  # the same seed, the same fill


def test_inpaint_refuses_the_wrong_model_for_the_method():
    ae, base = tiny_ae(), UNet(UNetConfig.tiny())
    x, mask = torch.zeros(1, 3, 32, 32), torch.ones(1, 1, 32, 32)
    with pytest.raises(ValueError, match="method 'model' needs an inpainting model"):
        inpaint(base, ae, x, mask)
    with pytest.raises(ValueError, match="method 'blend' runs a plain model"):
        inpaint(inpainting_unet(base), ae, x, mask, method="blend")
    with pytest.raises(ValueError, match="method one of"):
        inpaint(base, ae, x, mask, method="magic")
    with pytest.raises(ValueError, match=r"to match the image \[1, 3, 32, 32\], got \[1, 1, 16, 16\]"):
        inpaint(inpainting_unet(base), ae, x, mask[..., :16, :16])


# -- the baselines' loops ------------------------------------------------------------------------------------------------
def test_repaint_walks_down_with_jumps_back_up():
    assert repaint_times(5, jump=2, resample=1) == [5, 4, 3, 2, 1, 0]  # resample 1: no jumps, plain blending
    walk = repaint_times(6, jump=2, resample=3)
    assert walk[0] == 6 and walk[-1] == 0 and all(abs(a - b) == 1 for a, b in zip(walk, walk[1:]))
    # positions 2 and 4 are left twice more each, two steps up and down again: 6 + 2 * 2 * 2 steps down
    assert sum(b < a for a, b in zip(walk, walk[1:])) == 6 + 2 * 2 * 2
    with pytest.raises(ValueError, match="jump as an int >= 1"):
        repaint_times(6, jump=0)


@torch.no_grad()
def test_blending_keeps_the_known_latent_and_without_known_cells_is_plain_sampling():
    schedule = NoiseSchedule()
    model = perturbed(UNet(UNetConfig.tiny()), scale=0.05)
    z_known = randn(2, 4, 8, 8)
    ones, zeros = torch.ones(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)
    out = blended_sample(model, DDIM(schedule, 5), z_known, ones, torch.Generator().manual_seed(0))
    assert torch.equal(out, z_known)  # the last step lands on t = 0, where the known part is z_known itself
    out = blended_sample(model, DDIM(schedule, 5), z_known, zeros, torch.Generator().manual_seed(0))
    plain = sample(model, DDIM(schedule, 5), (2, 4, 8, 8), generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    out = repaint_sample(model, schedule, DDIM(schedule, 6).timesteps, z_known, ones, 2, 2,
                         torch.Generator().manual_seed(0))
    assert torch.equal(out, z_known)


# -- the measures --------------------------------------------------------------------------------------------------------
def test_the_scores_are_zero_for_the_truth_and_the_seam_sees_a_step_at_the_border():
    truth = randn(2, 3, 16, 16).clamp(-1, 1)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1
    perfect = inpainting_scores(truth, truth, mask)
    assert perfect["hole_mse"] == 0 and perfect["seam"] == 0
    shifted = truth + 0.5 * mask  # the hole drawn right but a shade brighter: a visible seam
    assert seam_error(shifted, truth, mask).tolist() == pytest.approx([0.5, 0.5])
    assert inpainting_scores(shifted, truth, mask)["hole_mse"] == pytest.approx(0.25)
    smooth = truth.clone()
    smooth[:, :, 6:10, 6:10] += 1.0  # wrong only far inside the hole: no seam
    assert seam_error(smooth, truth, mask).tolist() == [0.0, 0.0]


def test_mean_iou_and_a_segmenter_that_learns_one_batch(faces):
    maps = torch.randint(0, len(PARTS), (2, 8, 8))
    assert mean_iou(maps, maps)["miou"] == 1.0
    result = mean_iou(torch.zeros(1, 4, 4, dtype=torch.long), torch.tensor([[[0, 0, 1, 1]] * 4]))
    assert result["parts"] == {"background": 0.5, "skin": 0.0} and result["miou"] == 0.25
    torch.manual_seed(0)
    segmenter = Segmenter(SegmenterConfig(widths=(8, 16)))
    batch = {"image": torch.stack([faces[i]["image"] for i in range(4)]),
             "masks": torch.stack([faces[i]["masks"] for i in range(4)])}
    opt = torch.optim.Adam(segmenter.parameters(), 1e-2)
    first = None
    for step in range(30):
        loss, _ = segmenter_loss(segmenter, batch, torch.Generator().manual_seed(step))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert segmenter.predict(batch["image"]).shape == (4, 64, 64)


# -- data and training ---------------------------------------------------------------------------------------------------
def test_parsing_maps_keep_every_pixel_of_every_part_on_the_latent_grid(faces):
    item = ParsingMaps(faces, f=4)[0]
    masks = faces[0]["masks"]
    assert "masks" not in item and item["map"].shape == (len(PARTS) * 16, 16, 16)
    torch.testing.assert_close(item["map"], parsing_map(masks, (16, 16)))
    cells = item["map"].view(len(PARTS), 4, 4, 16, 16)  # part, row and column in the cell, the cell
    # channel p * 16 + i * 4 + j of cell (r, c) is pixel (4 r + i, 4 c + j) of part p: nothing averaged away
    torch.testing.assert_close(cells.permute(0, 3, 1, 4, 2).reshape(len(PARTS), 64, 64), masks)
    torch.testing.assert_close(cells.sum((0, 1, 2)), torch.full((16, 16), 16.0))
    assert parsing_map(masks[None].repeat(2, 1, 1, 1), (16, 16)).shape == (2, len(PARTS) * 16, 16, 16)
    with pytest.raises(ValueError, match=r"part masks \[b, 8, H, W\]"):
        parsing_map(torch.zeros(1, 3, 16, 16), (4, 4))
    with pytest.raises(ValueError, match="cells of unequal sides"):
        parsing_map(torch.zeros(1, 8, 16, 32), (4, 4))


def test_concat_conditions_drop_a_map_to_zeros_and_keep_inpaintings_channels():
    batch = {"map": torch.rand(6, 8, 4, 4), "label": torch.arange(6), "mask": torch.ones(6, 1, 4, 4),
             "masked_latent": torch.rand(6, 4, 4, 4)}
    assert torch.equal(ConcatCondition(("map",), p_uncond=1.0)(batch)["concat"], torch.zeros(6, 8, 4, 4))
    assert torch.equal(ConcatCondition(("map",))(batch)["concat"], batch["map"])
    both = Conditions(LabelCondition(6, p_uncond=0.0), ConcatCondition(("mask", "masked_latent")))(batch)
    assert both["y"].tolist() == list(range(6)) and both["concat"].shape == (6, 5, 4, 4)
    torch.testing.assert_close(both["concat"][:, 1:], batch["masked_latent"])
    with pytest.raises(ValueError, match="two conditions give the same model input"):
        Conditions(ConcatCondition(("map",)), ConcatCondition(("mask",)))(batch)
    with pytest.raises(ValueError, match="batch keys"):
        ConcatCondition("map")


def test_a_latent_cache_keeps_the_masks_beside_the_masked_latents(tmp_path, scenes):
    ae = tiny_ae()
    masked = MaskedImages(scenes, MaskGenerator(seed=0), variants=2, f=ae.f)
    cache = encode_dataset(ae, masked, tmp_path / "cache", progress=False, shard_size=16, keep=MaskedImages.KEEP)
    assert len(cache) == 80 and cache.kept == ("mask",)
    for k in (0, 41, 79):
        item, want = cache[k], masked[k]
        assert torch.equal(item["mask"], want["mask"]) and item["mask"].shape == (1, 16, 16)
        torch.testing.assert_close(item["latent"], ae.to_latent(want["image"][None])[0], rtol=1e-4, atol=1e-5)
    joined = InpaintingLatents(cache, cache)  # the structure: masked item k belongs to image k % n
    assert set(joined[3]) >= {"latent", "masked_latent", "mask", "label"}
    with pytest.raises(ValueError, match="do not have"):
        encode_dataset(ae, masked, tmp_path / "other", progress=False, keep=("parts",))
    with pytest.raises(ValueError, match="flip=True mirrors the images but not the kept tensors"):
        encode_dataset(ae, masked, tmp_path / "other", progress=False, keep=("mask",), flip=True)


def test_train_diffusion_finetunes_an_inpainting_model_from_a_plain_one(build):
    ae = tiny_ae()
    tc = TrainConfig(steps=2, batch_size=4, warmup_steps=1, progress=False)
    base, _ = train_diffusion(ae, preset="tiny", n_images=8, train_config=tc, condition="class",
                              out=build / "base.safetensors", run_dir=build / "b")
    model, trainer = train_diffusion(ae, init=build / "base.safetensors", n_images=8, train_config=tc,
                                     condition="class", concat="inpaint", mask_variants=3, run_dir=build / "i",
                                     out=build / "inpaint.safetensors", sample_every=2)
    assert model.config.in_channels == 9 and len(trainer.dataset) == 24  # 3 masked copies of 8 scenes
    loaded = UNet.load(build / "inpaint.safetensors")
    assert loaded.info["concat"] == "inpaint" and loaded.info["mask_variants"] == 3
    assert (build / "i" / "samples" / "step_0000002.png").exists()
    with pytest.raises(ValueError, match="has 'inpaint' input channels; this run trains concat='parsing'"):
        train_diffusion(ae, init=build / "inpaint.safetensors", n_images=8, train_config=tc, condition="class",
                        concat="parsing", data="faces")


def test_train_diffusion_trains_a_parsing_map_model_on_faces(build):
    ae = tiny_ae()
    tc = TrainConfig(steps=2, batch_size=4, warmup_steps=1, progress=False)
    model, trainer = train_diffusion(ae, preset="tiny", n_images=8, train_config=tc, condition="class",
                                     concat="parsing", data="faces", run_dir=build / "p", sample_every=2)
    assert model.config.in_channels == 4 + len(PARTS) * 16 and model.info["concat"] == "parsing"
    assert trainer.dataset[0]["map"].shape == (len(PARTS) * 16, 16, 16)
    with pytest.raises(ValueError, match="has no face-parsing masks"):
        train_diffusion(ae, preset="tiny", n_images=8, train_config=tc, concat="parsing", data="scenes")


def test_the_cli_trains_and_evaluates_an_inpainting_model(build, capsys):
    ae = tiny_ae()
    ae.save(build / "ae.safetensors")
    common = ["--autoencoder", str(build / "ae.safetensors"), "--steps", "2", "--batch-size", "4", "--n-images", "8",
              "--sample-every", "0", "--condition", "class"]
    assert main(["train-diffusion", "--preset", "tiny", *common, "--run-dir", str(build / "b"),
                 "--out", str(build / "base.safetensors")]) == 0
    assert main(["train-diffusion", "--init", str(build / "base.safetensors"), "--concat", "inpaint", *common,
                 "--masks", "boxes=1,everything=1", "--mask-variants", "2", "--run-dir", str(build / "i"),
                 "--out", str(build / "inpaint.safetensors")]) == 0
    assert UNet.load(build / "inpaint.safetensors").info["masks"]["strokes"] == 0
    judge = build / "judge.safetensors"
    from tinyldm.metrics import Judge, JudgeConfig
    Judge(JudgeConfig(widths=(4, 8))).save(judge)
    capsys.readouterr()
    assert main(["evaluate", str(build / "inpaint.safetensors"), "--autoencoder", str(build / "ae.safetensors"),
                 "--judge", str(judge), "--n", "2", "--steps", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["base"] == str(build / "base.safetensors")
    assert set(result["object"]) == {"model", "blend", "repaint"} and "attributes" in result["object"]["model"]
    assert main(["train-diffusion", "--concat", "inpaint", "--masks", "clouds=1", *common]) == 2


def celebamask_folder(root, n=6):
    """Photos 0.jpg .. with CelebAMask-HQ annotations: label images for some, per-part masks (at half the size, in
    numbered subfolders, as the dataset ships them) for the others."""
    from PIL import Image

    from tinyldm.data import CELEBAMASK_HQ_CLASSES

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "img" / f"{i}.jpg")
        labels = np.zeros((64, 64), np.uint8)
        labels[8:56, 12:52] = CELEBAMASK_HQ_CLASSES.index("skin")
        labels[8:20, 12:52] = CELEBAMASK_HQ_CLASSES.index("hair")
        labels[40:46, 24:40] = CELEBAMASK_HQ_CLASSES.index("u_lip")
        if i % 2:
            (root / "maps").mkdir(exist_ok=True)
            Image.fromarray(labels).save(root / "maps" / f"{i}.png")
        else:
            part_dir = root / "maps" / "0"
            part_dir.mkdir(parents=True, exist_ok=True)
            small = labels[::2, ::2]
            for part in ("skin", "hair", "u_lip"):  # skin first, the others over it (CelebAMask-HQ's order)
                value = CELEBAMASK_HQ_CLASSES.index(part)
                cover = np.isin(small, [value] + ([CELEBAMASK_HQ_CLASSES.index("hair"),
                                                   CELEBAMASK_HQ_CLASSES.index("u_lip")] if part == "skin" else []))
                Image.fromarray((cover * 255).astype(np.uint8)).save(part_dir / f"{i:05d}_{part}.png")
    return root


def test_an_image_folder_reads_celebamask_hq_parsing_maps_in_both_formats(tmp_path):
    from tinyldm.data import ImageFolder

    root = celebamask_folder(tmp_path)
    folder = ImageFolder(root / "img", 32, parsing=root / "maps")
    for i in range(len(folder)):
        masks = folder[i]["masks"]
        assert masks.shape == (len(PARTS), 32, 32) and torch.equal(masks.sum(0), torch.ones(32, 32))
        part = masks.argmax(0)
        assert part[6, 10] == PARTS.index("hair") and part[21, 16] == PARTS.index("mouth")  # lips are the mouth
        assert part[16, 10] == PARTS.index("skin") and part[0, 0] == PARTS.index("background")
    (root / "img" / "9.jpg").write_bytes((root / "img" / "0.jpg").read_bytes())
    with pytest.raises(DataError, match="1 of the 7 images have no parsing map .* 9.jpg: expected 9.png or 9_<part>"):
        ImageFolder(root / "img", 32, parsing=root / "maps")


def test_a_parsing_model_trains_on_a_folder_of_annotated_photos(build):
    root = celebamask_folder(build / "celeba", n=10)
    ae = tiny_ae()
    tc = TrainConfig(steps=2, batch_size=4, warmup_steps=1, progress=False)
    model, trainer = train_diffusion(ae, preset="tiny", data=str(root / "img"), image_size=32, n_images=None,
                                     train_config=tc, concat="parsing", parsing_maps=str(root / "maps"))
    assert model.config.in_channels == 4 + len(PARTS) * 16
    assert trainer.dataset[0]["map"].shape == (len(PARTS) * 16, 8, 8)
    with pytest.raises(ValueError, match="masks of kind 'object' need the procedural data"):
        train_diffusion(ae, preset="tiny", data=str(root / "img"), image_size=32, train_config=tc, concat="inpaint",
                        masks=MaskConfig())


def test_the_cli_trains_a_segmenter_and_evaluates_a_parsing_model(build, capsys, monkeypatch):
    import tinyldm.recipes as recipes
    from tinyldm.metrics import Segmenter as RealSegmenter

    # a segmenter of two narrow levels: the command's recipe, at a size a test affords
    monkeypatch.setattr(recipes, "Segmenter", lambda config: RealSegmenter(SegmenterConfig(widths=(4, 8))))
    assert main(["train-segmenter", "--steps", "2", "--batch-size", "4", "--run-dir", str(build / "s")]) == 0
    assert "mean IoU" in capsys.readouterr().out
    segmenter = Segmenter.load(build / "s" / "model.safetensors")
    assert segmenter.info["steps"] == 2 and set(segmenter.info["parts"]) <= set(PARTS)
    ae = tiny_ae()
    ae.save(build / "ae.safetensors")
    assert main(["train-diffusion", "--preset", "tiny", "--data", "faces", "--concat", "parsing", "--condition",
                 "class", "--autoencoder", str(build / "ae.safetensors"), "--steps", "2", "--batch-size", "4",
                 "--n-images", "8", "--sample-every", "0", "--run-dir", str(build / "p"),
                 "--out", str(build / "parsing.safetensors")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(build / "parsing.safetensors"), "--autoencoder", str(build / "ae.safetensors"),
                 "--segmenter", str(build / "s" / "model.safetensors"), "--n", "4", "--steps", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 4 and 0 <= result["samples"]["miou"] <= 1 and result["ratio"] >= 0
