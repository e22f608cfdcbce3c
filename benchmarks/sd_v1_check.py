"""Stable Diffusion v1.x's real weights in tinyldm against the same weights in diffusers: how far apart they compute.

Loads the weights (a diffusers folder, a CompVis single ``.safetensors`` file, or a hub id whose files are in the
Hugging Face cache; default SD v1.5's) into tinyldm (``tinyldm.convert.load_stable_diffusion``) and into diffusers
(``from_pretrained`` for a folder; for a single file diffusers' own CompVis converters with SD v1.5's published
configs), then prints the max abs difference of

* the text encoder's hidden states ``[1, 77, 768]`` for the prompt;
* the UNet's eps ``[1, 4, h, w]`` for one x_t, t = 500 (diffusers' k = 499) and the prompt's hidden states;
* the autoencoder's decoding ``[1, 3, H, W]`` of one random latent;
* one guided image: tinyldm's ``StableDiffusion.generate`` (DDIM, eta 0, s = 6.5) against diffusers'
  ``StableDiffusionPipeline`` with a DDIMScheduler that steps as tinyldm's DDIM does (trailing timesteps,
  alpha_bar = 1 at the end) and guidance_scale = s + 1 = 7.5, the same seed (so the same initial noise), 20 steps.

each next to the reference's largest value, for scale. Float32 on either side computes the same operations in other
orders and libraries, so expect ~1e-5 relative, more for the image (20 steps of a guided ODE amplify it). Nothing is
downloaded: without the weights the script says where to put them and exits 0.

Command and time (float32; 2 CPU cores: ~15 minutes at 512 px, most of it the 2 x 20 guided UNet steps; a GPU:
seconds):

    .venv/bin/python benchmarks/sd_v1_check.py                                    # SD v1.5 from the hub cache
    .venv/bin/python benchmarks/sd_v1_check.py PATH/stable-diffusion-v1-5         # a diffusers folder
    .venv/bin/python benchmarks/sd_v1_check.py v1-5-pruned-emaonly.safetensors --tokenizer PATH/tokenizer
    .venv/bin/python benchmarks/sd_v1_check.py --device cuda --save build/sd_v1_check.png
    .venv/bin/python benchmarks/sd_v1_check.py --quick                            # 256 px, 4 steps
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import torch

import _common as C
from tinyldm.convert import (SD_V1_5, TEXT_PREFIX, WeightsNotFound, find_weights, load_stable_diffusion,
                             vit_l_14_text_config)
from tinyldm.text import TextEncoderNotFound

# SD v1.5's unet/config.json and vae/config.json (a single file has no config; diffusers would fetch these)
SD_UNET_CONFIG = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                      attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, sample_size=64,
                      down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                      up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD_VAE_CONFIG = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32,
                     down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                     scaling_factor=0.18215, sample_size=512)


def diffusers_pipeline(source, sd, dtype: torch.dtype):
    """diffusers' StableDiffusionPipeline on the same files, with the tokenizer tinyldm loaded (not under test)."""
    import diffusers
    from diffusers.loaders import single_file_utils as single
    from transformers import CLIPTextModel

    if source.is_dir():
        kw = dict(local_files_only=True, use_safetensors=True, torch_dtype=dtype)
        unet = diffusers.UNet2DConditionModel.from_pretrained(source / "unet", **kw)
        vae = diffusers.AutoencoderKL.from_pretrained(source / "vae", **kw)
        text = CLIPTextModel.from_pretrained(source / "text_encoder", **kw)
    else:
        from safetensors.torch import load_file

        checkpoint = load_file(str(source))
        in_channels = checkpoint["model.diffusion_model.input_blocks.0.0.weight"].shape[1]  # 9: inpainting
        unet_config = {**SD_UNET_CONFIG, "in_channels": in_channels}
        unet = diffusers.UNet2DConditionModel(**unet_config)
        unet.load_state_dict(single.convert_ldm_unet_checkpoint(checkpoint, unet_config), strict=True)
        vae = diffusers.AutoencoderKL(**SD_VAE_CONFIG)
        vae.load_state_dict(single.convert_ldm_vae_checkpoint(checkpoint, SD_VAE_CONFIG), strict=True)
        text = CLIPTextModel(vit_l_14_text_config())
        state = single.convert_ldm_clip_checkpoint({k: v for k, v in checkpoint.items() if k.startswith(TEXT_PREFIX)})
        # transformers >= 5.6 has no text_model level in CLIPTextModel; older files and versions do
        own = set(text.state_dict())
        state = {k if k in own else k.removeprefix("text_model."): v for k, v in state.items()}
        text.load_state_dict({k: v for k, v in state.items() if not k.endswith("position_ids")}, strict=True)
        unet, vae, text = (m.to(dtype) for m in (unet, vae, text))
    scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        clip_sample=False, set_alpha_to_one=True, steps_offset=1,
                                        timestep_spacing="trailing")
    pipe = diffusers.StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=sd.text_encoder.tokenizer,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    return pipe


def max_diff(ours: torch.Tensor, theirs: torch.Tensor) -> list[str]:
    ours, theirs = ours.detach().float().cpu(), theirs.detach().float().cpu()
    return [str(list(ours.shape)), f"{(ours - theirs).abs().max().item():.2e}", f"{theirs.abs().max().item():.3g}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", default=SD_V1_5,
                        help="a diffusers folder, a CompVis .safetensors file or a hub id in the cache (default "
                             "%(default)s)")
    parser.add_argument("--tokenizer", help="for a single file: a folder with CLIP's vocab.json and merges.txt "
                                            "(default: CLIP ViT-L/14's in the hub cache)")
    parser.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--s", type=float, default=6.5, help="guidance scale s (diffusers' guidance_scale = s + 1)")
    parser.add_argument("--size", type=int, default=512, help="image height and width in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--save", help="write the two images side by side (tinyldm left) to this PNG")
    C.add_common_args(parser)
    args = parser.parse_args()
    if args.quick:
        args.size, args.steps = 256, 4
    device = C.setup(args)
    dtype = getattr(torch, args.dtype)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()  # not the advice to install accelerate, twice
    transformers.utils.logging.set_verbosity_error()
    C.banner("Stable Diffusion v1 weights: tinyldm vs. diffusers", device)

    try:
        source = find_weights(args.path)
        sd = load_stable_diffusion(args.path, tokenizer=args.tokenizer, device=device, dtype=dtype)
    except (WeightsNotFound, TextEncoderNotFound) as e:
        print(f"The weights are not here, so there is nothing to check.\n\n{e}")
        return 0
    print(f"loaded {source} into tinyldm: UNet {json.dumps(sd.unet.config.to_dict())}", flush=True)
    pipe = diffusers_pipeline(source, sd, dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    print("loaded the same files into diffusers", flush=True)

    rows = []
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        hidden, _ = sd.text_encoder.encode([args.prompt])
        ids = sd.text_encoder.tokenizer([args.prompt], padding="max_length", max_length=77, truncation=True,
                                        return_tensors="pt").input_ids.to(device)
        rows.append(["text encoder hidden states", *max_diff(hidden, pipe.text_encoder(ids).last_hidden_state)])
        c, h, w = sd.latent_shape(args.size, args.size)
        x_t = torch.randn(1, c, h, w, generator=g).to(device, dtype)
        t = 500
        eps_ours = sd.unet(x_t, t, context=hidden)
        k = sd.schedule.to_diffusers_timestep(t)
        eps_theirs = pipe.unet(x_t, k, encoder_hidden_states=hidden).sample
        rows.append([f"UNet eps at t = {t} (diffusers k = {k})", *max_diff(eps_ours, eps_theirs)])
        z = torch.randn(1, c, h, w, generator=g).to(device, dtype)
        rows.append(["autoencoder decode", *max_diff(sd.autoencoder.decode(z), pipe.vae.decode(z).sample)])
        print(f"generating one {args.size} px image with each, {args.steps} DDIM steps, s = {args.s} ...", flush=True)
        ours = sd.generate([args.prompt], s=args.s, steps=args.steps, seed=args.seed, height=args.size,
                           width=args.size, device=device)
        theirs = pipe([args.prompt], height=args.size, width=args.size, num_inference_steps=args.steps,
                      guidance_scale=args.s + 1, eta=0.0, generator=torch.Generator(device).manual_seed(args.seed),
                      output_type="pt").images
        rows.append([f"image, {args.steps} steps, s = {args.s} (in [0, 1])", *max_diff((ours + 1) / 2, theirs)])
    print()
    print(C.markdown_table(["quantity", "shape", "max abs difference", "reference max abs"], rows))
    if args.save:
        from PIL import Image

        from tinyldm.viz import image_grid

        Image.fromarray(image_grid(torch.cat([ours, theirs.cpu() * 2 - 1]), nrow=2)).save(args.save)
        print(f"\nwrote {args.save} (tinyldm left, diffusers right)")
    print(f"\n{args.dtype}, {C.environment(device)}" + ("\n--quick: smoke-test sizes." if args.quick else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
