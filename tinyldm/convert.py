"""Stable Diffusion v1.x weights in tinyldm's own networks, from local files only; and back out to SD's layouts.

    load_stable_diffusion(path) -> StableDiffusion(unet: UNet, autoencoder: Autoencoder, text_encoder: CLIPTextEncoder)
    sd.generate(["a photo of a cat"], s=6.5)            # images [1, 3, 512, 512] in [-1, 1]

``path`` is one of two layouts that SD's weights come in:

* a **diffusers folder**: ``model_index.json`` with ``unet/``, ``vae/``, ``text_encoder/`` (each a ``config.json`` and
  the weights), ``tokenizer/`` and ``scheduler/``; or one component folder alone (``load_unet("sd/unet")``). The
  architecture comes from the config.json files.
* a **single-file checkpoint** in the original CompVis layout (``v1-5-pruned-emaonly.safetensors``): keys
  ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (autoencoder), ``cond_stage_model.transformer.*``
  (CLIP text). It holds no config: the architecture is SD v1's (``UNetConfig.sd_v1()``, ``AutoencoderConfig.sd()``,
  CLIP ViT-L/14), with the UNet's input channels and context width read from its weights, so SD's 9-channel
  inpainting model loads the same way. CLIP's tokenizer is not in the file: ``tokenizer=`` a folder (or hub id).

or the hub id of a diffusers folder in the Hugging Face cache (default ``stable-diffusion-v1-5/stable-diffusion-v1-5``).
Nothing is ever downloaded: the cache is read as it lies on disk (:func:`tinyldm.text._cached_snapshot`), and
:func:`sd_download_hint` says how to get the files once. Only safetensors files are read; pickled ``.ckpt`` / ``.bin``
files are refused (unpickling a file runs whatever code it holds), and no code from a model repository is run.

The networks are tinyldm's (:class:`tinyldm.unet.UNet`, :class:`tinyldm.autoencoder.Autoencoder`), not wrappers:
their layers are LDM's, so loading is renaming (``docs/stable-diffusion.md`` has the table). What differed from SD is
behind config fields that ``sd_v1()`` / ``sd()`` set: GroupNorm eps 1e-5 in the UNet's res blocks
(``UNetConfig.norm_eps``), the time embedding of diffusers' k = t - 1 (``UNetConfig.timestep_offset = 1``; tinyldm's
t stays 1..T, see :mod:`tinyldm.schedule`), and the encoder's right-and-bottom padding before each stride-2 conv
(``AutoencoderConfig.downsample_padding``). A converted UNet is called as any tinyldm UNet,
``unet(x_t, t, context=c)`` with x_t ``[b, 4, 64, 64]``, t in 1..T and c ``[b, 77, 768]``, and predicts eps.

Out: :func:`save_compvis` writes a single CompVis-layout file, :func:`save_diffusers` a diffusers folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .autoencoder import Autoencoder, AutoencoderConfig
from .checkpoint import CheckpointError, atomic_path
from .conditioning import TextCondition
from .inpaint import Inpainting, concat_kind, inpaint
from .pipeline import generate
from .sample import DDIM, Spacing
from .schedule import BetaSchedule, NoiseSchedule, ScheduleConfig
from .text import CLIP_VIT_L_14, CLIPTextEncoder, TextEncoderNotFound, _cached_snapshot, _hub_cache, \
    _local_clip_folder
from .unet import UNet, UNetConfig

__all__ = ["StableDiffusion", "load_stable_diffusion", "load_unet", "load_autoencoder", "load_text_encoder",
           "save_compvis", "save_diffusers", "to_compvis_state_dict", "find_weights", "sd_download_hint",
           "vit_l_14_text_config", "WeightsNotFound", "ConversionError", "SD_V1_5", "SD_INPAINTING"]

SD_V1_5 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# Stable Diffusion's inpainting model: SD v1.2's weights finetuned with a 9-channel input (z_t, mask, masked image's
# latent), the 5 new channels zero-initialised; the same files as SD_V1_5's, loaded by the same functions
SD_INPAINTING = "stable-diffusion-v1-5/stable-diffusion-inpainting"
# what sd_download_hint asks for: the diffusers folder's safetensors weights and configs, ~4.3 GB in float32 (the
# repository also holds pickled .bin copies, float16 variants and single-file checkpoints, which --include "unet/*"
# would fetch too)
SD_FILES = ("model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/vocab.json",
            "tokenizer/merges.txt", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json")
# CLIP's tokenizer: vocab.json and merges.txt (SD v1.5's tokenizer/), or tokenizer.json alone (what transformers 5
# saves)
TOKENIZER_FILES = (("vocab.json", "tokenizer.json"), ("merges.txt", "tokenizer.json"))
SD_SCALE_FACTOR = 0.18215  # SD v1's latent scale (diffusers' scaling_factor), not stored in CompVis files

# the CompVis single file: one key prefix per network
UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
COMPVIS, DIFFUSERS = "compvis", "diffusers"  # the two layouts of SD's weights
WEIGHTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
CLASSES = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel"}


class WeightsNotFound(FileNotFoundError):
    """The weights are not on this machine, or not all of them (nothing is downloaded at run time)."""


class ConversionError(CheckpointError):
    """Files that are there but cannot become tinyldm's networks: pickles, other keys or shapes than expected, or a
    config that tinyldm's networks cannot represent (and, on export, a network that SD's layouts cannot)."""


def sd_download_hint(name: str = SD_V1_5) -> str:
    """How to get SD v1.5's files once, and where they go."""
    return (f"tinyldm never downloads at run time; get the weights once (about 4.3 GB) with\n"
            f"    hf download {name} {' '.join(SD_FILES)}\n"
            f"(`huggingface-cli download` before huggingface_hub 0.34). They go to the Hugging Face cache, "
            f"{_hub_cache()}, where the loaders find them by the name {name!r}; or add --local-dir FOLDER to the "
            f"command and pass the folder's path. A single-file checkpoint works too"
            + (f" (e.g. `hf download {name} v1-5-pruned-emaonly.safetensors`)" if name == SD_V1_5 else "")
            + ", with tokenizer= a folder holding CLIP's vocab.json and merges.txt.")


# -- reading files ---------------------------------------------------------------------------------------------------

def find_weights(path=SD_V1_5) -> Path:
    """The local file or folder that the loaders read for ``path``: ``path`` itself if it exists, else the snapshot
    of the hub id ``path`` in the Hugging Face cache, found on disk alone; else a WeightsNotFound that says how to
    get the files."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    if p.is_absolute() or str(path).startswith((".", "~")) or p.suffix in (".safetensors", ".ckpt", ".bin", ".pt"):
        raise WeightsNotFound(f"there is no file or folder at {p}. " + sd_download_hint())
    return _cached_snapshot(str(path), "Stable Diffusion weights", sd_download_hint, WeightsNotFound)


def _refuse_pickle(path: Path) -> None:
    raise ConversionError(
        f"{path} is a pickled PyTorch file, not safetensors. Unpickling runs whatever code the file holds, so tinyldm "
        f"refuses it. Get the .safetensors version of the same weights (SD v1.5 has both: "
        f"v1-5-pruned-emaonly.safetensors, or the diffusers folder, see sd_download_hint()), or convert the file once, "
        f"somewhere you can afford to run it, with safetensors.torch.save_file.")


def _open_safetensors(path: Path):
    """A safetensors handle on ``path`` (reading its header only; nothing in a safetensors file can run)."""
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        with open(path, "rb") as f:
            head = f.read(4)
        # torch.save writes a zip archive (PK..), older versions a bare pickle (protocol byte 0x80)
        if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
            _refuse_pickle(path)
        raise ConversionError(f"{path} is not a safetensors file ({e})") from None


class _Tensors(Mapping):
    """The tensors of one or more safetensors files (a sharded checkpoint), each read when asked for: an SD UNet is
    3.4 GB. A key may be renamed (:meth:`rename`) without reading its tensor."""

    def __init__(self, files: Sequence[Path]):
        self.where = str(files[0]) if len(files) == 1 else str(files[0].parent)
        self._stored = {}  # key -> (handle, the key it is stored under)
        for file in files:
            handle = _open_safetensors(file)
            self._stored.update({k: (handle, k) for k in handle.keys()})

    def __getitem__(self, key: str) -> torch.Tensor:
        handle, stored = self._stored[key]
        return handle.get_tensor(stored)

    def shape(self, key: str) -> list[int]:
        handle, stored = self._stored[key]
        return list(handle.get_slice(stored).get_shape())

    def __iter__(self) -> Iterator[str]:
        return iter(self._stored)

    def __len__(self) -> int:
        return len(self._stored)

    def rename(self, old: str, new: str) -> None:
        self._stored[new] = self._stored.pop(old)


def _component(root: Path, name: str) -> tuple[Path, dict]:
    """(folder, its config.json) of component ``name`` (unet, vae, text_encoder) of a diffusers folder ``root``, which
    may be the component folder itself."""
    if (root / "model_index.json").is_file():
        folder = root / name
        if not (folder / "config.json").is_file():
            raise WeightsNotFound(f"{root} is a diffusers folder (it has model_index.json) but lacks "
                                  f"{name}/config.json. " + sd_download_hint())
    elif (root / "config.json").is_file():
        folder = root
    else:
        raise WeightsNotFound(f"{root} is neither a diffusers folder (model_index.json with unet/, vae/, "
                              f"text_encoder/, tokenizer/) nor one of its component folders (config.json and the "
                              f"weights). " + sd_download_hint())
    config = json.loads((folder / "config.json").read_text())
    found = config.get("_class_name") or (config.get("architectures") or [None])[0]
    if found != CLASSES[name] and not (name == "text_encoder" and config.get("model_type") == "clip_text_model"):
        raise ConversionError(f"{folder / 'config.json'} describes a {found}, expected a {CLASSES[name]} "
                              f"(Stable Diffusion v1's {name})")
    return folder, config


def _weights(folder: Path, stem: str) -> _Tensors:
    """The safetensors weights of a diffusers component folder: ``{stem}.safetensors``, its float16 variant, or the
    shards that ``{stem}.safetensors.index.json`` lists."""
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
        if (folder / name).is_file():
            return _Tensors([folder / name])
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise WeightsNotFound(f"{folder} lacks the shards {', '.join(missing)} that {index.name} lists. "
                                  + sd_download_hint())
        return _Tensors([folder / s for s in shards])
    for name in (f"{stem}.bin", f"{stem}.fp16.bin"):
        if (folder / name).is_file():
            _refuse_pickle(folder / name)
    raise WeightsNotFound(f"{folder} lacks {stem}.safetensors. " + sd_download_hint())


# -- the renames -----------------------------------------------------------------------------------------------------
# Every tinyldm layer with weights is one _Module: its name here, in CompVis' layout and in diffusers'. Loading and
# saving both read this one table, in opposite directions.

class _Module(NamedTuple):
    ours: str
    compvis: tuple[str, ...]  # more than one name: the tensors are concatenated along dim 0 (the VAE's q, k, v)
    diffusers: tuple[str, ...]
    linear: bool = False  # diffusers stores it as a Linear [out, in]; tinyldm and CompVis as a 1x1 conv


def _names(names) -> tuple[str, ...]:
    return names if isinstance(names, tuple) else (names,)


def _block(ours: str, compvis: str, diffusers: str, local) -> list[_Module]:
    """The layers of one block: ``local`` is (ours, compvis, diffusers[, linear]) names inside it."""
    return [_Module(f"{ours}.{o}" if o else ours, tuple(f"{compvis}.{n}" if n else compvis for n in _names(c)),
                    tuple(f"{diffusers}.{n}" if n else diffusers for n in _names(d)), *rest)
            for o, c, d, *rest in local]


_LAYER = (("", "", ""),)  # a block that is one layer (a conv, a norm)
_UNET_RES = (("norm1", "in_layers.0", "norm1"), ("conv1", "in_layers.2", "conv1"),
             ("emb_proj", "emb_layers.1", "time_emb_proj"), ("norm2", "out_layers.0", "norm2"),
             ("conv2", "out_layers.3", "conv2"), ("skip", "skip_connection", "conv_shortcut"))
# LDM's transformer names are diffusers' names too
_TRANSFORMER = tuple((o, n, n) for o, n in (
    ("norm", "norm"), ("proj_in", "proj_in"), ("proj_out", "proj_out"),
    *((f"norm{i}", f"transformer_blocks.0.norm{i}") for i in (1, 2, 3)),
    *((f"{a}.{p}", f"transformer_blocks.0.{a}.{p}") for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v")),
    *((f"{a}.to_out", f"transformer_blocks.0.{a}.to_out.0") for a in ("attn1", "attn2")),
    ("ff.proj", "transformer_blocks.0.ff.net.0.proj"), ("ff.out", "transformer_blocks.0.ff.net.2")))
_VAE_RES = (("norm1", "norm1", "norm1"), ("conv1", "conv1", "conv1"), ("norm2", "norm2", "norm2"),
            ("conv2", "conv2", "conv2"), ("skip", "nin_shortcut", "conv_shortcut"))
_VAE_ATTN = (("norm", "norm", "group_norm"), ("qkv", ("q", "k", "v"), ("to_q", "to_k", "to_v"), True),
             ("proj", "proj_out", "to_out.0", True))


def _unet_modules(cfg: UNetConfig) -> list[_Module]:
    """tinyldm's ``down[i]`` is CompVis' ``input_blocks[i + 1]`` (``conv_in`` is ``input_blocks[0]``), ``mid`` is
    ``middle_block``, ``up[i]`` is ``output_blocks[i]``; diffusers groups the same layers by level."""
    attn, levels, n_res = set(cfg.attention_levels), len(cfg.channel_mult), cfg.num_res_blocks
    m = _block("time_embed.0", "time_embed.0", "time_embedding.linear_1", _LAYER)
    m += _block("time_embed.2", "time_embed.2", "time_embedding.linear_2", _LAYER)
    m += _block("conv_in", "input_blocks.0.0", "conv_in", _LAYER)
    i = 0
    for level in range(levels):
        for r in range(n_res):
            m += _block(f"down.{i}.0", f"input_blocks.{i + 1}.0", f"down_blocks.{level}.resnets.{r}", _UNET_RES)
            if level in attn:
                m += _block(f"down.{i}.1", f"input_blocks.{i + 1}.1", f"down_blocks.{level}.attentions.{r}",
                            _TRANSFORMER)
            i += 1
        if level < levels - 1:
            m += _block(f"down.{i}.0", f"input_blocks.{i + 1}.0.op", f"down_blocks.{level}.downsamplers.0.conv",
                        _LAYER)
            i += 1
    m += _block("mid.0", "middle_block.0", "mid_block.resnets.0", _UNET_RES)
    m += _block("mid.1", "middle_block.1", "mid_block.attentions.0", _TRANSFORMER)
    m += _block("mid.2", "middle_block.2", "mid_block.resnets.1", _UNET_RES)
    i = 0
    for u, level in enumerate(reversed(range(levels))):
        for r in range(n_res + 1):
            m += _block(f"up.{i}.0", f"output_blocks.{i}.0", f"up_blocks.{u}.resnets.{r}", _UNET_RES)
            j = 1
            if level in attn:
                m += _block(f"up.{i}.1", f"output_blocks.{i}.1", f"up_blocks.{u}.attentions.{r}", _TRANSFORMER)
                j = 2
            if level > 0 and r == n_res:
                m += _block(f"up.{i}.{j}.conv", f"output_blocks.{i}.{j}.conv", f"up_blocks.{u}.upsamplers.0.conv",
                            _LAYER)
            i += 1
    m += _block("out.0", "out.0", "conv_norm_out", _LAYER)
    m += _block("out.2", "out.2", "conv_out", _LAYER)
    return m


def _vae_modules(cfg: AutoencoderConfig) -> list[_Module]:
    """The encoder's ``down`` and the decoder's ``up`` are flat in tinyldm; CompVis indexes both by level (the
    decoder's ``up.{n-1}``, the lowest resolution, runs first), diffusers' decoder by order (``up_blocks.0`` first)."""
    levels, n_res = len(cfg.channel_mult), cfg.num_res_blocks
    m = _block("encoder.conv_in", "encoder.conv_in", "encoder.conv_in", _LAYER)
    i = 0
    for level in range(levels):
        for r in range(n_res):
            m += _block(f"encoder.down.{i}", f"encoder.down.{level}.block.{r}",
                        f"encoder.down_blocks.{level}.resnets.{r}", _VAE_RES)
            i += 1
        if level < levels - 1:
            m += _block(f"encoder.down.{i}", f"encoder.down.{level}.downsample.conv",
                        f"encoder.down_blocks.{level}.downsamplers.0.conv", _LAYER)
            i += 1
    m += _block("decoder.conv_in", "decoder.conv_in", "decoder.conv_in", _LAYER)
    for part in ("encoder", "decoder"):
        m += _block(f"{part}.mid.0", f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", _VAE_RES)
        if cfg.mid_attention:
            m += _block(f"{part}.mid.1", f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0", _VAE_ATTN)
        m += _block(f"{part}.mid.2", f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", _VAE_RES)
        m += _block(f"{part}.out.0", f"{part}.norm_out", f"{part}.conv_norm_out", _LAYER)
        m += _block(f"{part}.out.2", f"{part}.conv_out", f"{part}.conv_out", _LAYER)
    i = 0
    for u, level in enumerate(reversed(range(levels))):
        for r in range(n_res + 1):
            m += _block(f"decoder.up.{i}", f"decoder.up.{level}.block.{r}", f"decoder.up_blocks.{u}.resnets.{r}",
                        _VAE_RES)
            i += 1
        if level > 0:  # decoder.up.{i} is the nearest upsampling (no weights), its conv follows
            m += _block(f"decoder.up.{i + 1}", f"decoder.up.{level}.upsample.conv",
                        f"decoder.up_blocks.{u}.upsamplers.0.conv", _LAYER)
            i += 2
    m += _block("quant_conv", "quant_conv", "quant_conv", _LAYER)
    m += _block("post_quant_conv", "post_quant_conv", "post_quant_conv", _LAYER)
    return m


def _text_modules(model: nn.Module, inner: str) -> list[_Module]:
    """CLIP's names are the same everywhere but for a ``text_model.`` level that some files (and transformers
    versions before 5.6) have: ``inner`` is the source's."""
    modules = {k.rsplit(".", 1)[0] for k in model.state_dict()}
    return [_Module(m, (inner + m.removeprefix("text_model."),), (inner + m.removeprefix("text_model."),))
            for m in sorted(modules)]


def _first(items: list[str], n: int = 3, sep: str = ", ") -> str:
    return sep.join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _count(items: list, what: str) -> str:
    return f"{len(items)} {what}{'s' if len(items) != 1 else ''}"


def _import_state(model: nn.Module, modules: list[_Module], layout: str, tensors: _Tensors, prefix: str,
                  what: str, ignore: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """``model``'s state dict, read from ``tensors`` (keys ``prefix`` + the ``layout`` names), without the keys that
    are no layer's (the autoencoder's scale_factor). Every expected key must be there with the expected shape, and
    every key under ``prefix`` must be used (but those that contain one of ``ignore``); else a ConversionError says
    what was expected and what came."""
    table = {m.ours: m for m in modules}
    state, missing, wrong, used = {}, [], [], set()
    for key, want in model.state_dict().items():
        if "." not in key:
            continue
        module, param = key.rsplit(".", 1)
        entry = table[module]
        names = [f"{prefix}{n}.{param}" for n in getattr(entry, layout)]
        absent = [n for n in names if n not in tensors]
        if absent:
            missing += absent
            continue
        used.update(names)
        parts = [tensors[n] for n in names]
        if entry.linear and layout == DIFFUSERS:
            parts = [p[..., None, None] if p.ndim == 2 else p for p in parts]  # Linear [out, in] = conv [out, in, 1, 1]
        tensor = torch.cat(parts) if len(parts) > 1 else parts[0]
        if tensor.shape != want.shape:
            got = " + ".join(str([*p.shape]) for p in parts)
            wrong.append(f"{' + '.join(names)}: expected {[*want.shape]}, got {got}")
        state[key] = tensor
    unexpected = sorted(k for k in tensors if k.startswith(prefix) and k not in used
                        and not any(part in k for part in ignore))
    problems = []
    if missing:
        problems.append(f"{_count(missing, 'key')} missing ({_first(missing)})")
    if unexpected:
        problems.append(f"{_count(unexpected, 'unexpected key')} ({_first(unexpected)})")
    if wrong:
        problems.append(f"{_count(wrong, 'shape')} differ{'s' if len(wrong) == 1 else ''} ({_first(wrong, 2, '; ')})")
    if problems:
        raise ConversionError(f"{tensors.where} does not hold {what}: " + "; ".join(problems))
    return state


def _export_state(model: nn.Module, modules: list[_Module], layout: str, prefix: str) -> dict[str, torch.Tensor]:
    """``model``'s state dict under the ``layout`` names (the inverse of :func:`_import_state`), on its device."""
    table = {m.ours: m for m in modules}
    out = {}
    for key, tensor in model.state_dict().items():
        if "." not in key:  # no layer's (the autoencoder's scale_factor): the caller places it
            continue
        module, param = key.rsplit(".", 1)
        entry = table[module]
        names = getattr(entry, layout)
        for name, part in zip(names, tensor.detach().chunk(len(names))):
            if entry.linear and layout == DIFFUSERS and part.ndim == 4:
                part = part[:, :, 0, 0]  # conv [out, in, 1, 1] -> Linear [out, in]
            out[f"{prefix}{name}.{param}"] = part.contiguous()
    return out


def _finish(model: nn.Module, state: dict[str, torch.Tensor], where, device, dtype):
    """``model``, built on the meta device (no random init of 860M parameters that the file replaces anyway), holding
    ``state``, in ``dtype`` (default float32) on ``device``."""
    model.load_state_dict(state, assign=True)
    model.info = {"path": str(where)}
    return model.to(device=device or "cpu", dtype=dtype or torch.float32).eval()


# -- configs: diffusers' config.json <-> tinyldm's ---------------------------------------------------------------------

# config.json fields that tinyldm's UNet represents only with these values (SD v1's; absent = diffusers' default)
_UNET_FIXED = {
    "center_input_sample": (False,), "flip_sin_to_cos": (True,), "freq_shift": (0,), "act_fn": ("silu",),
    "mid_block_type": ("UNetMidBlock2DCrossAttn",), "downsample_padding": (1,), "mid_block_scale_factor": (1,),
    "only_cross_attention": (False,), "dual_cross_attention": (False,), "use_linear_projection": (False,),
    "transformer_layers_per_block": (1,), "reverse_transformer_layers_per_block": (None,),
    "encoder_hid_dim": (None,), "encoder_hid_dim_type": (None,), "class_embed_type": (None,),
    "addition_embed_type": (None,), "num_class_embeds": (None,), "time_embedding_type": ("positional",),
    "time_embedding_act_fn": (None,), "timestep_post_act": (None,), "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,), "conv_out_kernel": (3,), "projection_class_embeddings_input_dim": (None,),
    "attention_type": ("default",), "class_embeddings_concat": (False,), "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1, 1.0), "mid_block_only_cross_attention": (None, False),
    "cross_attention_norm": (None,), "addition_time_embed_dim": (None,),
}
_VAE_FIXED = {"act_fn": ("silu",), "use_quant_conv": (True,), "use_post_quant_conv": (True,),
              "shift_factor": (None,), "latents_mean": (None,), "latents_std": (None,)}


def _refuse_fields(config: dict, fixed: dict, where, network: str) -> None:
    def fits(value, allowed):
        return value in allowed or (isinstance(value, list) and all(v in allowed for v in value))

    bad = [f"{k}={config[k]!r} (representable: {' or '.join(repr(v) for v in fixed[k])})"
           for k in fixed if k in config and not fits(config[k], fixed[k])]
    if bad:
        raise ConversionError(f"{where} describes a {network} that tinyldm's cannot represent: {'; '.join(bad)}")


def _per_level(config: dict, key: str, n: int, where) -> list:
    value = config[key]
    value = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(value) != n:
        raise ConversionError(f"{where}: {key} has {len(value)} entries, expected one per level ({n})")
    return value


def _widths(config: dict, where) -> tuple[int, tuple[int, ...]]:
    """block_out_channels -> (base_channels, channel_mult)."""
    widths = list(config["block_out_channels"])
    base = widths[0]
    if any(w % base for w in widths):
        raise ConversionError(f"{where}: block_out_channels {widths} are not all multiples of the first, as "
                              f"tinyldm's base_channels * channel_mult must be")
    return base, tuple(w // base for w in widths)


def _unet_config_from_diffusers(config: dict, schedule: ScheduleConfig, where) -> UNetConfig:
    """tinyldm's UNetConfig for a diffusers UNet2DConditionModel config.json (its unset fields at diffusers'
    defaults), refusing what tinyldm's UNet cannot compute."""
    defaults = {"in_channels": 4, "out_channels": 4, "block_out_channels": (320, 640, 1280, 1280),
                "layers_per_block": 2, "attention_head_dim": 8, "num_attention_heads": None,
                "cross_attention_dim": 1280, "norm_num_groups": 32, "norm_eps": 1e-5, "dropout": 0.0,
                "resnet_time_scale_shift": "default", "time_embedding_dim": None,
                "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3}
    config = {**defaults, **config}
    _refuse_fields(config, _UNET_FIXED, where, "UNet")
    base, mult = _widths(config, where)
    levels = len(mult)
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    attention = tuple(i for i, b in enumerate(down) if b == "CrossAttnDownBlock2D")
    expected_up = ["CrossAttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(range(levels))]
    problems = []
    if any(b not in ("CrossAttnDownBlock2D", "DownBlock2D") for b in down) or len(down) != levels:
        problems.append(f"down_block_types {down} (representable: CrossAttnDownBlock2D or DownBlock2D, one per level)")
    if up != expected_up:
        problems.append(f"up_block_types {up} (representable: the mirror of the down blocks, {expected_up})")
    if not attention:
        problems.append("no cross-attention level (the mid block cross-attends, tinyldm's only with one)")
    if config["resnet_time_scale_shift"] not in ("default", "scale_shift"):
        problems.append(f"resnet_time_scale_shift={config['resnet_time_scale_shift']!r}")
    if config["time_embedding_dim"] not in (None, 4 * base):
        problems.append(f"time_embedding_dim={config['time_embedding_dim']} (representable: {4 * base})")
    n_res = set(_per_level(config, "layers_per_block", levels, where))
    context = set(_per_level(config, "cross_attention_dim", levels, where))
    if len(n_res) > 1 or len(context) > 1:
        problems.append("layers_per_block and cross_attention_dim must be the same at every level")
    if problems:
        raise ConversionError(f"{where} describes a UNet that tinyldm's cannot represent: " + "; ".join(problems))
    # attention_head_dim is the number of heads in UNet2DConditionModel (diffusers issue 2011); the mid block takes the
    # last level's
    heads = _per_level(config, "num_attention_heads" if config["num_attention_heads"] else "attention_head_dim",
                       levels, where)
    used = sorted(set(attention) | {levels - 1})
    if len({heads[i] for i in used}) == 1:
        shape_of_heads = {"num_heads": heads[used[0]]}
    else:  # one head width at every level: tinyldm's head_dim
        shape_of_heads = {"head_dim": base * mult[used[0]] // heads[used[0]]}
    cfg = UNetConfig(
        in_channels=config["in_channels"], out_channels=config["out_channels"], base_channels=base, channel_mult=mult,
        num_res_blocks=n_res.pop(), attention_levels=attention, context_dim=context.pop(),
        norm_groups=config["norm_num_groups"], norm_eps=float(config["norm_eps"]), dropout=float(config["dropout"]),
        scale_shift=config["resnet_time_scale_shift"] == "scale_shift", schedule=schedule.to_dict(),
        timestep_offset=1, **shape_of_heads)
    if any(cfg.heads(cfg.width(i)) != heads[i] for i in used):
        raise ConversionError(f"{where}: {heads} heads per level is neither one number of heads nor one head width, "
                              f"which is all tinyldm's UNetConfig can express (num_heads or head_dim)")
    return cfg


def _diffusers_unet_config(cfg: UNetConfig) -> dict:
    """The config.json of the diffusers UNet2DConditionModel that computes what tinyldm's UNet of ``cfg`` does."""
    levels = range(len(cfg.channel_mult))
    attn = set(cfg.attention_levels)
    heads = [cfg.heads(cfg.width(i)) for i in levels]
    return {"_class_name": CLASSES["unet"], "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "block_out_channels": [cfg.width(i) for i in levels], "layers_per_block": cfg.num_res_blocks,
            "down_block_types": ["CrossAttnDownBlock2D" if i in attn else "DownBlock2D" for i in levels],
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "up_block_types": ["CrossAttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(levels)],
            "attention_head_dim": heads[0] if len(set(heads)) == 1 else heads,
            "cross_attention_dim": cfg.context_dim, "norm_num_groups": cfg.norm_groups, "norm_eps": cfg.norm_eps,
            "dropout": cfg.dropout, "resnet_time_scale_shift": "scale_shift" if cfg.scale_shift else "default",
            "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu", "downsample_padding": 1,
            "use_linear_projection": False, "center_input_sample": False}


def _vae_config_from_diffusers(config: dict, where) -> tuple[AutoencoderConfig, float]:
    """(tinyldm's AutoencoderConfig, scale_factor) for a diffusers AutoencoderKL config.json."""
    config = {"in_channels": 3, "out_channels": 3, "block_out_channels": (64,), "layers_per_block": 1,
              "latent_channels": 4, "norm_num_groups": 32, "scaling_factor": SD_SCALE_FACTOR,
              "mid_block_add_attention": True, "down_block_types": ("DownEncoderBlock2D",),
              "up_block_types": ("UpDecoderBlock2D",), **config}
    _refuse_fields(config, _VAE_FIXED, where, "autoencoder")
    base, mult = _widths(config, where)
    blocks = {*config["down_block_types"], *config["up_block_types"]}
    if blocks - {"DownEncoderBlock2D", "UpDecoderBlock2D"} or config["in_channels"] != config["out_channels"] \
            or len(config["down_block_types"]) != len(mult):
        raise ConversionError(f"{where} describes an autoencoder that tinyldm's cannot represent: it needs "
                              f"DownEncoderBlock2D / UpDecoderBlock2D blocks, one per level, and out_channels = "
                              f"in_channels")
    cfg = AutoencoderConfig(in_channels=config["in_channels"], latent_channels=config["latent_channels"],
                            base_channels=base, channel_mult=mult, num_res_blocks=config["layers_per_block"],
                            mid_attention=config["mid_block_add_attention"], norm_groups=config["norm_num_groups"],
                            downsample_padding="asymmetric")  # diffusers' encoder pads as LDM's
    return cfg, float(config["scaling_factor"])


def _diffusers_vae_config(cfg: AutoencoderConfig, scale_factor: float) -> dict:
    n = len(cfg.channel_mult)
    return {"_class_name": CLASSES["vae"], "in_channels": cfg.in_channels, "out_channels": cfg.in_channels,
            "latent_channels": cfg.latent_channels, "block_out_channels": [cfg.base_channels * m for m in
                                                                           cfg.channel_mult],
            "layers_per_block": cfg.num_res_blocks, "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n, "norm_num_groups": cfg.norm_groups, "act_fn": "silu",
            "mid_block_add_attention": cfg.mid_attention, "scaling_factor": scale_factor}


_BETA_SCHEDULES = {"linear": BetaSchedule.LINEAR, "scaled_linear": BetaSchedule.SCALED_LINEAR,
                   "squaredcos_cap_v2": BetaSchedule.COSINE}


def _schedule_of(folder: Path) -> ScheduleConfig:
    """The training schedule from the ``scheduler/`` folder beside a UNet folder (SD's when there is none)."""
    file = folder.parent / "scheduler" / "scheduler_config.json"
    if not file.is_file():
        return ScheduleConfig.stable_diffusion()
    config = json.loads(file.read_text())
    kind = _BETA_SCHEDULES.get(config.get("beta_schedule", "linear"))
    if config.get("prediction_type", "epsilon") != "epsilon" or config.get("trained_betas") or kind is None:
        raise ConversionError(f"{file}: tinyldm's UNet predicts eps on a linear, scaled_linear or cosine schedule; "
                              f"this scheduler has prediction_type={config.get('prediction_type')!r}, "
                              f"beta_schedule={config.get('beta_schedule')!r}")
    return ScheduleConfig(kind, T=config.get("num_train_timesteps", 1000), beta_1=config.get("beta_start", 1e-4),
                          beta_T=config.get("beta_end", 0.02))


def _diffusers_scheduler_config(schedule: ScheduleConfig) -> dict:
    """A DDIMScheduler that steps as tinyldm's DDIM sampler does (trailing timesteps, alpha_bar_0 = 1, no clipping)."""
    name = {v: k for k, v in _BETA_SCHEDULES.items()}[schedule.kind]
    return {"_class_name": "DDIMScheduler", "num_train_timesteps": schedule.T, "beta_start": schedule.beta_1,
            "beta_end": schedule.beta_T, "beta_schedule": name, "prediction_type": "epsilon", "clip_sample": False,
            "set_alpha_to_one": True, "steps_offset": 1, "timestep_spacing": Spacing.TRAILING.value}


def vit_l_14_text_config():
    """transformers' CLIPTextConfig of CLIP ViT-L/14's text transformer, SD v1's text encoder: width 768, 12 layers
    of 12 heads, 77 positions (hidden states ``[b, 77, 768]``), as in SD v1.5's text_encoder/config.json."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                          projection_dim=768, layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1)


# -- loading ---------------------------------------------------------------------------------------------------------

def _compvis_unet_config(tensors: _Tensors, config: UNetConfig) -> UNetConfig:
    """``config`` with in_channels and context_dim read from the weights: conv_in ``[320, in, 3, 3]`` (9 channels for
    inpainting) and the cross-attention keys ``[width, context_dim]``."""
    conv_in = f"{UNET_PREFIX}input_blocks.0.0.weight"
    to_k = next((k for k in tensors if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")), None)
    if conv_in not in tensors or to_k is None:
        raise ConversionError(f"{tensors.where} is not a Stable Diffusion v1 checkpoint in the CompVis layout: it has "
                              f"no {conv_in} or attn2.to_k weights (it starts with {_first(sorted(tensors))})")
    return replace(config, in_channels=tensors.shape(conv_in)[1], context_dim=tensors.shape(to_k)[1])


def _check_unet(cfg: UNetConfig, layout: str, exporting: bool = False, model: UNet | None = None) -> None:
    """Raise a ConversionError when SD's ``layout`` cannot hold a UNet of ``cfg``."""
    problems = []
    if cfg.context_dim is None or not cfg.attention_levels:
        problems.append("no cross-attention (SD's transformer blocks always have it)")
    if cfg.num_classes is not None:
        problems.append("class labels (num_classes)")
    if cfg.eps_skip:
        problems.append("eps_skip=True")
    if cfg.time_embed_mult != 4:
        problems.append(f"time_embed_mult={cfg.time_embed_mult} (SD: 4)")
    if exporting and cfg.timestep_offset != 1:
        problems.append(f"timestep_offset={cfg.timestep_offset}: readers of SD's layouts embed diffusers' k = t - 1 "
                        f"(timestep_offset = 1), so this model would see every time shifted")
    if exporting and layout == COMPVIS and cfg.norm_eps != 1e-5:
        problems.append(f"norm_eps={cfg.norm_eps} (a CompVis file carries no config; its readers use SD's 1e-5)")
    if model is not None and any(m.num_groups != cfg.norm_groups for m in model.modules()
                                 if isinstance(m, nn.GroupNorm)):
        problems.append(f"widths that norm_groups={cfg.norm_groups} does not divide (tinyldm then uses fewer groups)")
    if problems:
        raise ConversionError(f"SD's {layout} layout cannot hold this UNet: " + "; ".join(problems))


def _check_autoencoder(model: Autoencoder, layout: str) -> None:
    cfg, problems = model.config, []
    if cfg.downsample_padding != "asymmetric":
        problems.append("downsample_padding='symmetric' (SD pads right and bottom: 'asymmetric')")
    if layout == COMPVIS and not cfg.mid_attention:
        problems.append("mid_attention=False (LDM's autoencoder always has it)")
    if cfg.in_channels != 3:
        problems.append(f"in_channels={cfg.in_channels}")
    if any(m.num_groups != cfg.norm_groups for m in model.modules() if isinstance(m, nn.GroupNorm)):
        problems.append(f"widths that norm_groups={cfg.norm_groups} does not divide")
    if problems:
        raise ConversionError(f"SD's {layout} layout cannot hold this autoencoder: " + "; ".join(problems))


def load_unet(path, config: UNetConfig | None = None, device=None, dtype: torch.dtype | None = None) -> UNet:
    """SD v1's UNet as a tinyldm UNet: eps = unet(x_t ``[b, 4, 64, 64]``, t in 1..T, context=``[b, 77, 768]``).

    ``path``: a diffusers folder (its ``unet/``), a ``unet/`` folder, a CompVis single file, or a hub id in the
    cache. The config comes from the folder's config.json (and the schedule from ``scheduler/``, SD's if absent); for
    a single file it is ``config`` (default ``UNetConfig.sd_v1()``) with in_channels and context_dim read from the
    weights. dtype: the networks' (default float32, whatever the file holds)."""
    source = find_weights(path)
    if source.is_file():
        tensors = _Tensors([source])
        given = config is not None
        cfg = _compvis_unet_config(tensors, config or UNetConfig.sd_v1())
        _check_unet(cfg, COMPVIS)
        prefix, layout = UNET_PREFIX, COMPVIS
        what = "the UNet of the given config" if given else "Stable Diffusion v1's UNet (SD 2.x and SDXL differ)"
    else:
        if config is not None:
            raise ValueError("config= is for single-file checkpoints; a diffusers folder's config.json says it")
        folder, d = _component(source, "unet")
        cfg = _unet_config_from_diffusers(d, _schedule_of(folder), folder / "config.json")
        tensors, prefix, layout = _weights(folder, WEIGHTS["unet"]), "", DIFFUSERS
        what = "the UNet that its config.json describes"
    with torch.device("meta"):
        model = UNet(cfg)
    state = _import_state(model, _unet_modules(cfg), layout, tensors, prefix, what)
    return _finish(model, state, source, device, dtype)


def load_autoencoder(path, config: AutoencoderConfig | None = None, device=None,
                     dtype: torch.dtype | None = None) -> Autoencoder:
    """SD v1's autoencoder (diffusers' AutoencoderKL) as a tinyldm Autoencoder with its ``scale_factor`` (0.18215):
    images ``[b, 3, 512, 512]`` in [-1, 1] <-> latents ``[b, 4, 64, 64]``.

    ``path`` as in :func:`load_unet` (``vae/`` of a diffusers folder). A single file takes ``config`` (default
    ``AutoencoderConfig.sd()``) and its ``scale_factor`` key if it has one (LDM's ``scale_by_std``), else SD's."""
    source = find_weights(path)
    if source.is_file():
        tensors = _Tensors([source])
        cfg, layout, prefix, ignore = config or AutoencoderConfig.sd(), COMPVIS, VAE_PREFIX, (f"{VAE_PREFIX}loss.",)
        scale = tensors["scale_factor"].item() if "scale_factor" in tensors else SD_SCALE_FACTOR
        what = "the autoencoder of the given config" if config else "Stable Diffusion v1's autoencoder"
    else:
        if config is not None:
            raise ValueError("config= is for single-file checkpoints; a diffusers folder's config.json says it")
        folder, d = _component(source, "vae")
        cfg, scale = _vae_config_from_diffusers(d, folder / "config.json")
        tensors, layout, prefix, ignore = _weights(folder, WEIGHTS["vae"]), DIFFUSERS, "", ()
        what = "the autoencoder that its config.json describes"
        # older diffusers named the attention query, key, value, proj_attn; some published files still do
        for key in list(tensors):
            for old, new in ((".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."),
                             (".proj_attn.", ".to_out.0.")):
                if old in key:
                    tensors.rename(key, key.replace(old, new))
    with torch.device("meta"):
        model = Autoencoder(cfg)
    # LDM's training loss (LPIPS, discriminator) sits under first_stage_model.loss in some files
    state = _import_state(model, _vae_modules(cfg), layout, tensors, prefix, what, ignore)
    state["scale_factor"] = torch.tensor(scale)
    return _finish(model, state, source, device, dtype)


def _tokenizer(name_or_path):
    """CLIPTokenizer from a folder with TOKENIZER_FILES, or from the hub cache; never from the network."""
    from transformers import CLIPTokenizer

    try:
        folder = _local_clip_folder(str(name_or_path), files=TOKENIZER_FILES)
    except TextEncoderNotFound as e:
        raise TextEncoderNotFound(f"CLIP's tokenizer: {e}") from None
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def load_text_encoder(path, tokenizer=None, config=None, device=None,
                      dtype: torch.dtype | None = None) -> CLIPTextEncoder:
    """SD v1's CLIP text encoder: prompts -> hidden states ``[b, 77, 768]`` (``encode``), as SD conditions on them.

    ``path`` as in :func:`load_unet` (``text_encoder/`` of a diffusers folder). The tokenizer: ``tokenizer`` (a
    folder with CLIP's vocab.json and merges.txt, or a hub id in the cache), else the diffusers folder's
    ``tokenizer/``, else CLIP ViT-L/14's in the cache. A single file takes ``config`` (a transformers
    CLIPTextConfig, default :func:`vit_l_14_text_config`)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    source = find_weights(path)
    if source.is_file():
        tensors, prefix, layout = _Tensors([source]), TEXT_PREFIX, COMPVIS
        config = config or vit_l_14_text_config()
        what = "CLIP ViT-L/14's text transformer"
        tokenizer_at = tokenizer or CLIP_VIT_L_14
    else:
        if config is not None:
            raise ValueError("config= is for single-file checkpoints; a diffusers folder's config.json says it")
        folder, d = _component(source, "text_encoder")
        config = CLIPTextConfig.from_dict(d)
        tensors, prefix, layout = _weights(folder, WEIGHTS["text_encoder"]), "", DIFFUSERS
        what = "the text transformer that its config.json describes"
        sibling = folder.parent / "tokenizer"
        tokenizer_at = tokenizer or (sibling if sibling.is_dir() else CLIP_VIT_L_14)
    model = CLIPTextModel(config)
    inner = "text_model." if any(k.startswith(prefix + "text_model.") for k in tensors) else ""
    state = _import_state(model, _text_modules(model, inner), layout, tensors, prefix, what,
                          ignore=(".position_ids",))  # a buffer that older transformers saved
    model.load_state_dict(state)
    encoder = CLIPTextEncoder(model, _tokenizer(tokenizer_at))
    return encoder.to(device=device or "cpu", dtype=dtype or torch.float32)


@dataclass
class StableDiffusion:
    """SD v1's three networks in tinyldm, and text-to-image with tinyldm's own pipeline.

    The noise schedule is the UNet's (``unet.schedule``: scaled linear, beta 0.00085..0.012, T = 1000), which every
    tinyldm sampler takes. The null condition of guidance is the empty prompt, as in SD."""

    unet: UNet
    autoencoder: Autoencoder
    text_encoder: CLIPTextEncoder

    @property
    def schedule(self) -> NoiseSchedule:
        return self.unet.schedule

    def latent_shape(self, height: int = 512, width: int = 512) -> tuple[int, int, int]:
        """(c, h, w) of the latents of ``height`` x ``width`` images: (4, 64, 64) at 512 px."""
        f = self.autoencoder.f
        if height % (f * self.unet.config.downsample) or width % (f * self.unet.config.downsample):
            raise ValueError(f"height and width must be multiples of {f * self.unet.config.downsample} "
                             f"(f = {f} times the UNet's downsampling), got {height}x{width}")
        return self.autoencoder.config.latent_channels, height // f, width // f

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], s: float = 6.5, steps: int = 20, seed: int = 0, height: int = 512,
                 width: int = 512, sampler=None, batch_size: int = 4, device=None,
                 progress: bool = False) -> torch.Tensor:
        """Images ``[len(prompts), 3, height, width]`` in [-1, 1]: :func:`tinyldm.pipeline.generate` with guidance
        scale s (diffusers' guidance_scale = s + 1; SD's default 7.5 is s = 6.5), DDIM with ``steps`` steps unless
        ``sampler``, and the text encoder's hidden states unmasked, as SD v1 used them."""
        condition = TextCondition(self.text_encoder, use_mask=False)
        return generate(self.unet, self.autoencoder, condition.given(list(prompts)), condition.null(len(prompts)),
                        s=s, sampler=sampler or DDIM(self.schedule, steps), seed=seed, batch_size=batch_size,
                        latent_shape=self.latent_shape(height, width), device=device, progress=progress)

    @torch.no_grad()
    def inpaint(self, prompts: Sequence[str], image: torch.Tensor, mask: torch.Tensor, s: float = 6.5,
                steps: int = 20, seed: int = 0, method: str | None = None, sampler=None, batch_size: int = 4,
                device=None, progress: bool = False) -> Inpainting:
        """Fill the holes of ``image`` ``[b, 3, H, W]`` (in [-1, 1]) where ``mask`` ``[b, 1, H, W]`` is 1, as the
        prompts ask: :func:`tinyldm.inpaint.inpaint`. With Stable Diffusion's inpainting weights (a 9-channel UNet)
        the model sees the mask and the masked image's latent (method "model", the default for them); the plain
        weights inpaint by latent blending (the default for them) or "repaint". The mask meets the latent grid as in
        SD's own pipeline (nearest). ``.raw`` is what diffusers' StableDiffusionInpaintPipeline returns, ``.images``
        the same with the known pixels pasted back exactly."""
        self.latent_shape(*image.shape[-2:])  # checks the size
        method = method or ("model" if concat_kind(self.unet) == "inpaint" else "blend")
        condition = TextCondition(self.text_encoder, use_mask=False)
        return inpaint(self.unet, self.autoencoder, image, mask, condition.given(list(prompts)),
                       condition.null(len(prompts)), s=s, method=method, sampler=sampler or DDIM(self.schedule, steps),
                       seed=seed, mask_resize="nearest", batch_size=batch_size, device=device, progress=progress)


def load_stable_diffusion(path=SD_V1_5, tokenizer=None, device=None,
                          dtype: torch.dtype | None = None) -> StableDiffusion:
    """SD v1.x from a diffusers folder, a CompVis single file or a hub id in the cache (default SD v1.5's; see
    :func:`sd_download_hint`). ``tokenizer`` as in :func:`load_text_encoder`."""
    return StableDiffusion(load_unet(path, device=device, dtype=dtype),
                           load_autoencoder(path, device=device, dtype=dtype),
                           load_text_encoder(path, tokenizer, device=device, dtype=dtype))


# -- saving ----------------------------------------------------------------------------------------------------------

def to_compvis_state_dict(unet: UNet | None = None, autoencoder: Autoencoder | None = None,
                          text_encoder: CLIPTextEncoder | None = None) -> dict[str, torch.Tensor]:
    """The networks under CompVis' keys (``model.diffusion_model.*``, ``first_stage_model.*``,
    ``cond_stage_model.transformer.text_model.*``); the autoencoder's scale factor as ``scale_factor``."""
    state = {}
    if unet is not None:
        _check_unet(unet.config, COMPVIS, exporting=True, model=unet)
        state.update(_export_state(unet, _unet_modules(unet.config), COMPVIS, UNET_PREFIX))
    if autoencoder is not None:
        _check_autoencoder(autoencoder, COMPVIS)
        state.update(_export_state(autoencoder, _vae_modules(autoencoder.config), COMPVIS, VAE_PREFIX))
        state["scale_factor"] = autoencoder.scale_factor.detach().float().cpu().clone()
    if text_encoder is not None:
        state.update(_export_state(text_encoder.model, _text_modules(text_encoder.model, "text_model."), COMPVIS,
                                   TEXT_PREFIX))
    return {k: v.cpu() for k, v in state.items()}



def save_compvis(path, unet: UNet, autoencoder: Autoencoder, text_encoder: CLIPTextEncoder | None = None) -> Path:
    """Write the networks as one CompVis-layout safetensors file (:func:`to_compvis_state_dict`), atomically, as
    SD v1's single-file checkpoints are: what other SD tools and :func:`load_stable_diffusion` read. The file has no
    config, so its readers assume SD v1's (a UNet must have SD's conventions: ``norm_eps`` 1e-5, ``timestep_offset``
    1; the autoencoder SD's padding)."""
    state = to_compvis_state_dict(unet, autoencoder, text_encoder)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"written_by": "tinyldm.convert.save_compvis"})
    return Path(path)


def _write_component(folder: Path, name: str, config: dict, state: dict[str, torch.Tensor]) -> None:
    folder = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2))
    with atomic_path(folder / f"{WEIGHTS[name]}.safetensors") as tmp:
        save_file({k: v.cpu() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})


def save_diffusers(folder, unet: UNet | None = None, autoencoder: Autoencoder | None = None,
                   text_encoder: CLIPTextEncoder | None = None) -> Path:
    """Write the networks given as a diffusers folder: ``unet/`` (and ``scheduler/``, a DDIMScheduler that steps as
    tinyldm's DDIM does), ``vae/``, ``text_encoder/`` and ``tokenizer/``, and ``model_index.json`` when all three are
    given. diffusers' ``from_pretrained`` reads it, and so does :func:`load_stable_diffusion`."""
    folder = Path(folder)
    if unet is not None:
        _check_unet(unet.config, DIFFUSERS, exporting=True, model=unet)
        _write_component(folder, "unet", _diffusers_unet_config(unet.config),
                         _export_state(unet, _unet_modules(unet.config), DIFFUSERS, ""))
        with atomic_path(folder / "scheduler" / "scheduler_config.json") as tmp:
            tmp.write_text(json.dumps(_diffusers_scheduler_config(ScheduleConfig(**unet.config.schedule)), indent=2))
    if autoencoder is not None:
        _check_autoencoder(autoencoder, DIFFUSERS)
        _write_component(folder, "vae", _diffusers_vae_config(autoencoder.config, autoencoder.scale_factor.item()),
                         _export_state(autoencoder, _vae_modules(autoencoder.config), DIFFUSERS, ""))
    if text_encoder is not None:
        text_encoder.model.save_pretrained(folder / "text_encoder")
        text_encoder.tokenizer.save_pretrained(folder / "tokenizer")
    if unet is not None and autoencoder is not None and text_encoder is not None:
        index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", CLASSES["unet"]],
                 "vae": ["diffusers", CLASSES["vae"]], "text_encoder": ["transformers", CLASSES["text_encoder"]],
                 "tokenizer": ["transformers", type(text_encoder.tokenizer).__name__],
                 "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
                 "feature_extractor": [None, None], "requires_safety_checker": False}
        with atomic_path(folder / "model_index.json") as tmp:
            tmp.write_text(json.dumps(index, indent=2))
    return folder
