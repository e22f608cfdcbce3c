"""Stable Diffusion v1 weights in tinyldm's networks (tinyldm.convert), checked against diffusers on tiny random models.

The reference is diffusers itself: its UNet2DConditionModel, AutoencoderKL and StableDiffusionPipeline on the folders
they save, and its own single-file converters on the CompVis files tinyldm writes. Nothing is downloaded, and loading
runs inside no_network(). tinyldm's t is diffusers' timestep k + 1 (tinyldm.schedule).
"""
import dataclasses
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import diffusers  # the test-only numerical reference: a missing one fails the run instead of skipping it
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from helpers import perturbed
from network_guard import no_network
from test_text import TINY_VOCAB, cache_like_the_hub, hub_cache, save_tiny_tokenizer, tiny_text_config  # noqa: F401
from tinyldm import Autoencoder, AutoencoderConfig, UNet, UNetConfig
from tinyldm.checkpoint import load_model_file
from tinyldm.convert import (ConversionError, WeightsNotFound, load_autoencoder, load_stable_diffusion,
                             load_text_encoder, load_unet, save_compvis, save_diffusers, to_compvis_state_dict)
from tinyldm.schedule import ScheduleConfig
from tinyldm.text import CLIPTextEncoder, TextEncoderNotFound

CONTEXT = 32  # the tiny CLIP's width (tiny_text_config), the UNets' cross_attention_dim
TINY_UNET = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=CONTEXT, attention_head_dim=2,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8, sample_size=8)
TINY_VAE = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
# SD's scheduler, stepping as tinyldm's DDIM does: trailing timesteps, the last step to alpha_bar = 1, no clipping
DDIM = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=True,
            steps_offset=1, timestep_spacing="trailing")  # steps_offset: unused by "trailing", but pipelines want 1


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def diffusers_unet(**overrides):
    torch.manual_seed(0)
    # perturbed: diffusers zero-initialises nothing, but small weights hide little; equal outputs must mean equal maps
    return perturbed(diffusers.UNet2DConditionModel(**{**TINY_UNET, **overrides}), scale=0.02).eval()


def diffusers_vae(**overrides):
    torch.manual_seed(0)
    return perturbed(diffusers.AutoencoderKL(**{**TINY_VAE, **overrides}), scale=0.02).eval()


def tiny_tokenizer(folder):
    from transformers import CLIPTokenizer

    folder.mkdir(exist_ok=True)
    save_tiny_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(str(folder))


@torch.no_grad()
def assert_same_eps(ours: UNet, theirs, b: int = 3, in_channels: int = 4):
    x_t, context = randn(b, in_channels, 8, 8), randn(b, 5, CONTEXT, seed=1)
    k = torch.tensor([0, 499, 999])[:b]  # diffusers' timesteps; tinyldm's t = k + 1
    expected = theirs(x_t, k, encoder_hidden_states=context).sample
    torch.testing.assert_close(ours(x_t, k + 1, context=context), expected, atol=1e-5, rtol=1e-5)
    return x_t, k, context, expected


@torch.no_grad()
def assert_same_autoencoder(ours: Autoencoder, theirs):
    x = randn(2, 3, 16, 16).clamp(-1, 1)
    torch.testing.assert_close(ours.encode(x).mean, theirs.encode(x).latent_dist.mean, atol=1e-5, rtol=1e-5)
    z = randn(2, 4, 8, 8, seed=1)
    torch.testing.assert_close(ours.decode(z), theirs.decode(z).sample, atol=1e-5, rtol=1e-5)
    assert ours.scale_factor.item() == pytest.approx(theirs.config.scaling_factor)


# -- diffusers folders --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    dict(layers_per_block=2),  # SD v1's form: attention_head_dim is a number of heads, the same at every level
    dict(attention_head_dim=(1, 2)),  # heads per level with one head width (32): tinyldm's head_dim
    dict(down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2,
         resnet_time_scale_shift="scale_shift", norm_eps=1e-6, attention_head_dim=4),  # the course's res blocks
])
def test_a_diffusers_unet_folder_loads_with_equal_eps(tmp_path, overrides):
    theirs = diffusers_unet(**overrides)
    theirs.save_pretrained(tmp_path / "unet")
    with no_network():
        ours = load_unet(tmp_path / "unet")
    cfg = ours.config
    assert cfg.timestep_offset == 1 and cfg.norm_eps == theirs.config.norm_eps
    assert cfg.schedule == ScheduleConfig.stable_diffusion().to_dict()  # SD's, as no scheduler/ folder says otherwise
    x_t, k, context, expected = assert_same_eps(ours, theirs)
    # the offset is what makes it equal: the same weights embedding t instead of t - 1 compute something else
    ours.config = dataclasses.replace(cfg, timestep_offset=0)
    with torch.no_grad():
        assert (ours(x_t, k + 1, context=context) - expected).abs().max() > 1e-4


def test_a_diffusers_autoencoder_folder_loads_with_equal_encoding_and_decoding(tmp_path):
    theirs = diffusers_vae(scaling_factor=0.3)
    theirs.save_pretrained(tmp_path / "vae")
    with no_network():
        ours = load_autoencoder(tmp_path / "vae")
    assert ours.config.downsample_padding == "asymmetric" and ours.latent_shape((1, 3, 16, 16)) == (1, 4, 8, 8)
    assert_same_autoencoder(ours, theirs)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """(folder, pipeline): a tiny random StableDiffusionPipeline, as its save_pretrained writes it."""
    from transformers import CLIPTextModel

    root = tmp_path_factory.mktemp("tiny-sd")
    torch.manual_seed(0)
    pipe = diffusers.StableDiffusionPipeline(
        unet=diffusers_unet(), vae=diffusers_vae(), text_encoder=CLIPTextModel(tiny_text_config()).eval(),
        tokenizer=tiny_tokenizer(root / "tok"), scheduler=diffusers.DDIMScheduler(**DDIM), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(root / "sd")
    return root / "sd", pipe


def test_the_text_encoder_of_a_diffusers_folder_gives_clips_hidden_states(sd_folder):
    folder, pipe = sd_folder
    prompts = ["a red star", "low", ""]
    for path in (folder, folder / "text_encoder"):  # the component folder finds the tokenizer beside it
        with no_network():
            encoder = load_text_encoder(path)
            hidden, _ = encoder.encode(prompts)
        ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            torch.testing.assert_close(hidden, pipe.text_encoder(ids).last_hidden_state)
        assert isinstance(encoder, CLIPTextEncoder) and hidden.shape == (3, 77, CONTEXT)


def test_generate_makes_the_images_of_diffusers_stable_diffusion_pipeline(sd_folder):
    folder, pipe = sd_folder
    with no_network():
        sd = load_stable_diffusion(folder)
    prompts, s, steps, seed = ["a red star", "low"], 2.0, 10, 3
    ours = sd.generate(prompts, s=s, steps=steps, seed=seed, height=16, width=16)
    theirs = pipe(prompts, height=16, width=16, num_inference_steps=steps, guidance_scale=s + 1, eta=0.0,
                  generator=torch.Generator().manual_seed(seed), output_type="pt").images  # in [0, 1]
    assert ours.shape == theirs.shape == (2, 3, 16, 16)
    assert 0.2 < (ours.abs() < 0.99).float().mean()  # not saturated: the clamp to [-1, 1] hides no difference
    torch.testing.assert_close((ours + 1) / 2, theirs, atol=1e-4, rtol=0)


def test_inpaint_makes_the_images_of_diffusers_inpainting_pipeline(sd_folder, tmp_path):
    from tinyldm.data import MaskConfig, MaskGenerator

    folder, pipe = sd_folder
    unet9 = diffusers_unet(in_channels=9)  # SD's inpainting UNet: [z_t, mask, masked-image latent]
    vae = diffusers_vae(scaling_factor=0.3)
    with torch.no_grad():
        vae.quant_conv.bias[4:] = -30.0  # a sharp posterior: diffusers samples the masked image's latent, tinyldm
        # takes its mean; with SD's own autoencoder the two differ as little
    inpainting = diffusers.StableDiffusionInpaintPipeline(
        unet=unet9, vae=vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, scheduler=pipe.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    inpainting.set_progress_bar_config(disable=True)
    inpainting.save_pretrained(tmp_path / "sd-inpainting")
    with no_network():
        sd = load_stable_diffusion(tmp_path / "sd-inpainting")
    assert sd.unet.config.in_channels == 9
    image = (randn(2, 3, 32, 32).clamp(-1, 1) * 64).round() / 64  # exact in [0, 1] and back
    generator = MaskGenerator(MaskConfig(object=0), seed=0)
    mask = torch.stack([generator(i, 32) for i in (1, 2)])
    # 5 steps: diffusers' DDIM steps from t to t - T // steps, the next timestep only when steps divides T
    prompts, s, steps, seed = ["a red star", "low"], 2.0, 5, 3
    ours = sd.inpaint(prompts, image, mask, s=s, steps=steps, seed=seed)
    theirs = inpainting(prompts, image=(image + 1) / 2, mask_image=mask, height=32, width=32, guidance_scale=s + 1,
                        num_inference_steps=steps, eta=0.0, generator=torch.Generator().manual_seed(seed),
                        output_type="pt").images  # in [0, 1], not pasted
    torch.testing.assert_close((ours.raw + 1) / 2, theirs, atol=1e-4, rtol=0)
    known = mask.expand_as(image) == 0
    assert torch.equal(ours.images[known], image[known])  # tinyldm also pastes the known pixels back


def test_a_unet_from_the_hub_cache_loads_without_the_network(hub_cache, tmp_path):
    theirs = diffusers_unet()
    theirs.save_pretrained(tmp_path / "unet")
    cache_like_the_hub(hub_cache, "tiny/sd-unet", tmp_path / "unet")
    with no_network():
        ours = load_unet("tiny/sd-unet")
        assert_same_eps(ours, theirs)
        with pytest.raises(WeightsNotFound) as error:
            load_stable_diffusion()  # SD v1.5 by default: not in this (empty) cache
    message = str(error.value)
    assert "'stable-diffusion-v1-5/stable-diffusion-v1-5' are not on this machine" in message
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5 model_index.json" in message
    assert "unet/diffusion_pytorch_model.safetensors" in message and str(hub_cache) in message


# SD v1.5's unet/config.json and vae/config.json, as published (diffusers 0.6.0 wrote them)
SD_V1_5_UNET = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
                "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
                "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "downsample_padding": 1,
                "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
                "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
                "sample_size": 64, "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
SD_V1_5_VAE = {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
               "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
               "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
               "up_block_types": ["UpDecoderBlock2D"] * 4}


def test_sd_v1_5_configs_are_the_presets_and_the_full_size_layouts_are_diffusers():
    # at full size on the meta device (no weights): the renames, not only the tiny models' subset of them
    from tinyldm.convert import (COMPVIS, DIFFUSERS, UNET_PREFIX, VAE_PREFIX, _export_state,
                                 _unet_config_from_diffusers, _unet_modules, _vae_config_from_diffusers, _vae_modules)

    assert _unet_config_from_diffusers(SD_V1_5_UNET, ScheduleConfig.stable_diffusion(), "unet") == UNetConfig.sd_v1()
    assert _vae_config_from_diffusers(SD_V1_5_VAE, "vae") == (AutoencoderConfig.sd(), 0.18215)
    unet_config = {k: v for k, v in SD_V1_5_UNET.items() if not k.startswith("_")}
    vae_config = {k: v for k, v in SD_V1_5_VAE.items() if not k.startswith("_")}
    with torch.device("meta"):
        unet, theirs = UNet(UNetConfig.sd_v1()), diffusers.UNet2DConditionModel(**unet_config)
        ae, vae = Autoencoder(AutoencoderConfig.sd()), diffusers.AutoencoderKL(**vae_config)

    def shapes(state):
        return {k: tuple(v.shape) for k, v in state.items()}

    for ours, reference, modules, prefix, convert, config in (
            (unet, theirs, _unet_modules(unet.config), UNET_PREFIX, convert_ldm_unet_checkpoint, unet_config),
            (ae, vae, _vae_modules(ae.config), VAE_PREFIX, convert_ldm_vae_checkpoint, vae_config)):
        assert shapes(_export_state(ours, modules, DIFFUSERS, "")) == shapes(reference.state_dict())
        compvis = _export_state(ours, modules, COMPVIS, prefix)
        assert shapes(convert(compvis, config)) == shapes(reference.state_dict())  # diffusers' converter reads it


# -- CompVis single files -------------------------------------------------------------------------------------------

def tiny_sd(num_res_blocks: int = 1, attention_levels=(0,)):
    """tinyldm networks of SD v1's kind at a tiny size: the sd_v1() conventions, SD's padding, a tiny CLIP."""
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    cfg = UNetConfig.sd_v1(base_channels=32, channel_mult=(1, 2), num_res_blocks=num_res_blocks,
                           attention_levels=attention_levels, num_heads=2, context_dim=CONTEXT, norm_groups=8)
    ae = Autoencoder(AutoencoderConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4,
                                       downsample_padding="asymmetric"))
    ae.scale_factor.fill_(0.3)
    return perturbed(UNet(cfg).eval(), scale=0.02), perturbed(ae.eval(), scale=0.02), CLIPTextModel(tiny_text_config())


# (2, (0, 1)): as in SD, a level with attention and an upsampler (output_blocks.{i}.2.conv)
@pytest.mark.parametrize("num_res_blocks, attention_levels", [(1, (0,)), (2, (0, 1))])
def test_a_compvis_file_reads_in_diffusers_converters_and_back_in_tinyldm(tmp_path, num_res_blocks, attention_levels):
    unet, ae, clip = tiny_sd(num_res_blocks, attention_levels)
    text = CLIPTextEncoder(clip, tiny_tokenizer(tmp_path / "tokenizer"))
    path = save_compvis(tmp_path / "tiny-sd.safetensors", unet, ae, text)
    checkpoint = load_file(path)
    assert "model.diffusion_model.input_blocks.0.0.weight" in checkpoint and "first_stage_model.quant_conv.weight" in \
        checkpoint and "cond_stage_model.transformer.text_model.final_layer_norm.weight" in checkpoint  # SD v1.5's keys

    # diffusers' own single-file converters, given the configs of the same shapes, read the file into its models
    blocks = ["CrossAttn" if level in attention_levels else "" for level in (0, 1)]
    unet_config = {**TINY_UNET, "layers_per_block": num_res_blocks,
                   "down_block_types": [b + "DownBlock2D" for b in blocks],
                   "up_block_types": [b + "UpBlock2D" for b in reversed(blocks)]}
    theirs = diffusers.UNet2DConditionModel(**unet_config).eval()
    theirs.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, unet_config), strict=True)
    assert_same_eps(unet, theirs)
    vae = diffusers.AutoencoderKL(**TINY_VAE, scaling_factor=0.3).eval()
    vae.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, TINY_VAE), strict=True)
    assert_same_autoencoder(ae, vae)

    # and tinyldm reads it back: the file holds no config, so the tiny shapes are given
    with no_network():
        unet2 = load_unet(path, config=unet.config)
        ae2 = load_autoencoder(path, config=ae.config)
        text2 = load_text_encoder(path, tokenizer=tmp_path / "tokenizer", config=tiny_text_config())
    assert unet2.config == unet.config and ae2.scale_factor.item() == pytest.approx(0.3)
    assert_same_eps(unet2, theirs)
    assert_same_autoencoder(ae2, vae)
    torch.testing.assert_close(text2.encode(["a red star"])[0], text.encode(["a red star"])[0])


def test_a_nine_channel_inpainting_unet_loads_through_the_same_loader(tmp_path):
    unet, ae, _ = tiny_sd()
    inpainting = perturbed(unet.with_extra_input_channels(5), seed=1, scale=0.02)  # SD-inpainting: 4 + mask + latent
    path = save_compvis(tmp_path / "inpainting.safetensors", inpainting, ae)
    with no_network():
        # in_channels and context_dim come from the weights (conv_in, attn2.to_k), whatever the given config says
        loaded = load_unet(path, config=dataclasses.replace(unet.config, context_dim=7))
    assert loaded.config.in_channels == 9 and loaded.config.context_dim == CONTEXT
    theirs = diffusers.UNet2DConditionModel(**TINY_UNET, in_channels=9).eval()
    theirs.load_state_dict(convert_ldm_unet_checkpoint(load_file(path), TINY_UNET), strict=True)
    assert_same_eps(loaded, theirs, in_channels=9)


def test_a_compvis_file_of_other_shapes_says_what_sd_v1_expects(tmp_path):
    unet, ae, _ = tiny_sd()
    path = save_compvis(tmp_path / "tiny.safetensors", unet, ae)
    with pytest.raises(ConversionError, match=r"does not hold Stable Diffusion v1's UNet .*shapes differ \(model\."
                                              r"diffusion_model\.time_embed\.0\.weight: expected \[1280, 320\], "
                                              r"got \[128, 32\]"):
        load_unet(path)  # the default: SD v1's architecture (built on the meta device: no 860M parameters)


def test_save_diffusers_writes_a_folder_that_diffusers_and_tinyldm_read(tmp_path):
    unet, ae, clip = tiny_sd()
    text = CLIPTextEncoder(clip, tiny_tokenizer(tmp_path / "tok"))
    folder = save_diffusers(tmp_path / "sd", unet, ae, text)
    assert_same_eps(unet, diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").eval())
    assert_same_autoencoder(ae, diffusers.AutoencoderKL.from_pretrained(folder / "vae").eval())
    scheduler = diffusers.DDIMScheduler.from_pretrained(folder / "scheduler")
    assert {k: scheduler.config[k] for k in DDIM} == DDIM
    with no_network():
        sd = load_stable_diffusion(folder)
    assert sd.unet.config == unet.config and sd.autoencoder.config == ae.config
    torch.testing.assert_close(sd.text_encoder.encode(["a red star"])[0], text.encode(["a red star"])[0])


def test_files_saved_before_the_sd_fields_load_as_they_did():
    # the course's files predate norm_eps, timestep_offset and downsample_padding: the defaults are the old behaviour
    data = os.path.join(os.path.dirname(__file__), os.pardir, "data")
    unet_file = os.path.join(data, "unet-course.safetensors")
    ae_file = os.path.join(data, "autoencoder-course.safetensors")
    assert not {"norm_eps", "timestep_offset"} & set(load_model_file(unet_file, "unet")[1])
    assert "downsample_padding" not in load_model_file(ae_file, "autoencoder")[1]
    unet, ae = UNet.load(unet_file), Autoencoder.load(ae_file)
    assert unet.config.timestep_offset == 0
    assert {m.eps for m in unet.modules() if isinstance(m, torch.nn.GroupNorm)} == {1e-6}
    assert ae.config.downsample_padding == "symmetric"
    assert {type(m).__name__ for m in ae.encoder.down if not hasattr(m, "norm1")} == {"Conv2d"}
    assert {m.padding for m in ae.encoder.down if not hasattr(m, "norm1")} == {(1, 1)}


# -- bad inputs ------------------------------------------------------------------------------------------------------

class RunsCode:
    """Unpickling this creates the file `marker`: a stand-in for the code a malicious .ckpt would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickled_checkpoints_are_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "code-ran"
    (tmp_path / "sd.ckpt").write_bytes(pickle.dumps({"state_dict": RunsCode(marker)}, protocol=4))
    torch.save({"state_dict": {"model.diffusion_model.out.2.bias": torch.zeros(4)}}, tmp_path / "zip.safetensors")
    unet = tmp_path / "unet"
    diffusers_unet().save_pretrained(unet, safe_serialization=False)  # diffusion_pytorch_model.bin only
    for path in (tmp_path / "sd.ckpt", tmp_path / "zip.safetensors", unet):
        with pytest.raises(ConversionError, match=r"is a pickled PyTorch file, not safetensors\. Unpickling runs "
                                                  r"whatever code the file holds, so tinyldm refuses it\. Get the "
                                                  r"\.safetensors version"):
            load_unet(path)
    assert not marker.exists()
    (tmp_path / "text.safetensors").write_text("not tensors")
    with pytest.raises(ConversionError, match="text.safetensors is not a safetensors file"):
        load_autoencoder(tmp_path / "text.safetensors")


def test_folders_that_lack_files_say_which_and_how_to_get_them(tmp_path, sd_folder):
    with pytest.raises(WeightsNotFound, match="(?s)is neither a diffusers folder .*hf download"):
        load_unet(tmp_path)
    partial = tmp_path / "partial"  # a download that stopped half way
    shutil.copytree(sd_folder[0], partial, ignore=shutil.ignore_patterns("vae", "*.safetensors"))
    with pytest.raises(WeightsNotFound, match=r"(?s)has model_index.json\) but lacks vae/config.json\. .*hf download"):
        load_autoencoder(partial)
    with pytest.raises(WeightsNotFound, match=r"(?s)unet lacks diffusion_pytorch_model\.safetensors\. .*hf download"):
        load_unet(partial)
    with pytest.raises(ConversionError, match="describes a UNet2DConditionModel, expected a AutoencoderKL"):
        load_autoencoder(sd_folder[0] / "unet")


def test_a_tokenizer_missing_for_a_single_file_says_how_to_get_it(hub_cache, tmp_path):
    unet, ae, clip = tiny_sd()
    path = save_compvis(tmp_path / "sd.safetensors", unet, ae, CLIPTextEncoder(clip, tiny_tokenizer(tmp_path / "t")))
    with no_network(), pytest.raises(TextEncoderNotFound, match="CLIP's tokenizer: .*openai/clip-vit-large-patch14"):
        load_text_encoder(path, config=tiny_text_config())


def test_keys_that_do_not_match_are_named(tmp_path):
    unet, ae, _ = tiny_sd()
    state = to_compvis_state_dict(unet, ae)
    del state["model.diffusion_model.out.2.bias"]
    state["model.diffusion_model.extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "edited.safetensors")
    with pytest.raises(ConversionError, match=r"does not hold the UNet of the given config: 1 key missing "
                                              r"\(model\.diffusion_model\.out\.2\.bias\); 1 unexpected key "
                                              r"\(model\.diffusion_model\.extra\.weight\)"):
        load_unet(tmp_path / "edited.safetensors", config=unet.config)


@pytest.mark.parametrize("field, value", [("use_linear_projection", True), ("class_embed_type", "timestep"),
                                          ("addition_embed_type", "text"), ("flip_sin_to_cos", False),
                                          ("down_block_types", ["AttnDownBlock2D", "DownBlock2D"])])
def test_diffusers_unets_that_tinyldm_cannot_compute_are_refused(tmp_path, field, value):
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **TINY_UNET, field: value}))
    with pytest.raises(ConversionError, match="describes a UNet that tinyldm's cannot represent: .*" + field):
        load_unet(folder)


def test_a_v_prediction_scheduler_is_refused(tmp_path, sd_folder):
    folder = tmp_path / "sd"
    shutil.copytree(sd_folder[0], folder)
    file = folder / "scheduler" / "scheduler_config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), "prediction_type": "v_prediction"}))
    with pytest.raises(ConversionError, match="predicts eps .* prediction_type='v_prediction'"):
        load_unet(folder)


def test_networks_that_sd_layouts_cannot_hold_are_not_written(tmp_path):
    unet, ae, _ = tiny_sd()
    course = UNet(UNetConfig.tiny(context_dim=CONTEXT))  # embeds t itself: SD readers would see every t shifted
    with pytest.raises(ConversionError, match="timestep_offset=0"):
        save_compvis(tmp_path / "x.safetensors", course, ae)
    with pytest.raises(ConversionError, match="downsample_padding='symmetric'"):
        save_diffusers(tmp_path / "x", autoencoder=Autoencoder(AutoencoderConfig.tiny()))
    assert not os.path.exists(tmp_path / "x.safetensors")


def test_the_sd_finetune_recipe_runs_end_to_end_at_a_tiny_size(sd_folder, tmp_path, monkeypatch):
    # convert-sd -> train-diffusion --init (text condition through SD's own CLIP, gradient checkpointing, a caption for
    # every image of a folder) -> export-sd -> diffusers and tinyldm read the finetune back
    from PIL import Image

    from tinyldm.cli import main

    monkeypatch.setattr("tinyldm.recipes.BUILD_DIR", tmp_path / "build")
    folder, _ = sd_folder
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(photos / f"{i:05d}.png")
    with no_network():
        assert main(["convert-sd", str(folder), "--out", str(tmp_path / "sd")]) == 0
        base = UNet.load(tmp_path / "sd" / "unet.safetensors")
        assert main(["train-diffusion", "--data", str(photos), "--image-size", "32", "--init",
                     str(tmp_path / "sd" / "unet.safetensors"), "--autoencoder", str(tmp_path / "sd" / "autoencoder.safetensors"),
                     "--condition", "text", "--text-encoder", str(folder), "--caption", "a photo of a face",
                     "--grad-checkpointing", "--steps", "2", "--batch-size", "2", "--sample-every", "0",
                     "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "tuned.safetensors")]) == 0
        tuned = UNet.load(tmp_path / "tuned.safetensors")
        assert tuned.config == base.config and tuned.info["init"].endswith("unet.safetensors")
        assert tuned.info["condition"] == "text" and tuned.config.schedule == base.config.schedule
        assert main(["export-sd", "--unet", str(tmp_path / "tuned.safetensors"), "--autoencoder",
                     str(tmp_path / "sd" / "autoencoder.safetensors"), "--layout", "diffusers", "--out",
                     str(tmp_path / "out")]) == 0
        back = diffusers.UNet2DConditionModel.from_pretrained(str(tmp_path / "out" / "unet")).eval()
    assert_same_eps(tuned, back)
