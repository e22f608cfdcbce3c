"""Text encoders: prompts -> hidden states ``[b, L, d]`` and a mask ``[b, L]``, frozen, behind one interface.

Stable Diffusion v1 conditions its UNet on the *last hidden state* of CLIP ViT-L/14's text transformer: every
prompt is tokenised, padded to 77 tokens, and the ``[b, 77, 768]`` output goes to every cross-attention layer.
The course keeps that shape of the idea and offers two encoders with the same interface (:class:`TextEncoder`):

* :class:`CLIPTextEncoder`: the real thing, ``transformers``' CLIPTextModel and tokenizer. It loads from a local
  folder or the Hugging Face cache only (it never downloads, nor touches the network); :func:`clip_download_hint`
  says how to get it.
* :class:`SceneCLIP`: the offline default, a small CLIP-style model (a text transformer and an image CNN trained
  contrastively on the procedural scenes' captions by ``tinyldm train-text-encoder``). Its text side gives
  ``[b, 40, 128]``; its image side embeds the scenes for retrieval (:class:`tinyldm.retrieval.SceneImageEncoder`).

Both are frozen (``encode`` runs without gradients, in eval mode); the null prompt is the empty string "".
Prompts longer than the context are truncated with a warning (CLIP's tokenizer truncates too); pass
``truncate=False`` to get an error instead.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import images_at, strided_cnn
from .checkpoint import SavableModel

__all__ = ["TextEncoder", "WordTokenizer", "scene_vocabulary", "SceneCLIPConfig", "SceneCLIP", "clip_loss",
           "CLIPTextEncoder", "clip_download_hint", "TextEncoderNotFound", "CLIP_VIT_L_14", "CLIP_FILES",
           "CLIP_DOWNLOAD"]

CLIP_VIT_L_14 = "openai/clip-vit-large-patch14"


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"expected a list of prompt strings, got {prompts!r}"[:200])
    if len(prompts) == 0:
        raise ValueError("expected at least one prompt, got an empty list")
    return list(prompts)


class TextEncoder(nn.Module):
    """The interface: ``encode(prompts) -> (hidden [b, L, dim], mask [b, L] bool, True = a real token)``.

    Subclasses set ``dim`` and ``max_length`` (= L) and implement ``_encode``; ``encode`` freezes and checks.
    """

    dim: int
    max_length: int

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], truncate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = _check_prompts(prompts)
        was_training = self.training
        self.eval()
        hidden, mask = self._encode(prompts, truncate)
        self.train(was_training)
        return hidden, mask

    def _encode(self, prompts: list[str], truncate: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def _too_long(prompt: str, n_tokens: int, max_length: int, truncate: bool) -> None:
    message = (f"prompt has {n_tokens} tokens with its start and end tokens, more than the context of "
               f"{max_length}: {prompt[:80]!r}")
    if not truncate:
        raise ValueError(message)
    warnings.warn(message + f"; keeping the first {max_length}", stacklevel=4)


# -- the offline encoder ---------------------------------------------------------------------------

class WordTokenizer:
    """Lower-case words (runs of letters) -> ids ``[b, max_length]``: <bos> words <eos>, then <pad>.

    A word outside the vocabulary becomes <unk>, so any English prompt works; the words that matter for the
    scenes (colours, shapes, sizes, positions) are all in :func:`scene_vocabulary`.
    """

    specials = ("<pad>", "<bos>", "<eos>", "<unk>")

    def __init__(self, words: Sequence[str], max_length: int = 32):
        if max_length < 3:
            raise ValueError(f"max_length must leave room for <bos>, a word and <eos>: >= 3, got {max_length}")
        self.words = list(self.specials) + sorted(set(words) - set(self.specials))
        self.index = {w: i for i, w in enumerate(self.words)}
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.words)

    @staticmethod
    def split(prompt: str) -> list[str]:
        return re.findall(r"[a-z]+", prompt.lower())

    def __call__(self, prompts: Sequence[str], truncate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids int64 [b, max_length], mask bool [b, max_length])."""
        unk, L = self.index["<unk>"], self.max_length
        ids = torch.zeros(len(prompts), L, dtype=torch.long)  # <pad> = 0
        for i, prompt in enumerate(_check_prompts(prompts)):
            tokens = [1] + [self.index.get(w, unk) for w in self.split(prompt)] + [2]  # <bos> ... <eos>
            if len(tokens) > L:
                _too_long(prompt, len(tokens), L, truncate)
                tokens = tokens[:L - 1] + [2]
            ids[i, :len(tokens)] = torch.tensor(tokens)
        return ids, ids != 0

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [self.words[i] for i in ids.tolist() if i != 0]


def scene_vocabulary() -> list[str]:
    """Every word the scene captions can use (from the public tables of :mod:`tinyldm.data`)."""
    from . import data

    text = []
    for table in (data.COLOR_WORDS, data.SHAPE_WORDS, data.SIZE_WORDS, data.POSITION_WORDS, data.BACKGROUND_WORDS):
        text += [w for words in table.values() for w in words]
    text += list(data.OBJECT_TEMPLATES + data.JOIN_TEMPLATES + data.SCENE_TEMPLATES) + ["a an"]
    return sorted({w for line in text for w in WordTokenizer.split(re.sub(r"\{\w+\}", " ", line))})


@dataclass(frozen=True)
class SceneCLIPConfig:
    vocab: tuple[str, ...] = ()  # the tokenizer's words (without specials); default: scene_vocabulary()
    max_length: int = 40  # L: tokens per prompt, <bos> and <eos> included (the longest caption has 39)
    width: int = 128  # d: the hidden states' width, the UNet's context_dim
    layers: int = 2
    heads: int = 4
    embed_dim: int = 128  # the joint text/image space of the contrastive loss
    image_size: int = 32  # images are resized to this: colour and shape read fine at 32 px, at a quarter the cost
    image_widths: tuple[int, ...] = (16, 32, 64)  # one stride-2 stage each: 32 -> 16 -> 8 -> 4 px

    def __post_init__(self):
        object.__setattr__(self, "vocab", tuple(self.vocab) or tuple(scene_vocabulary()))
        object.__setattr__(self, "image_widths", tuple(self.image_widths))

    def to_dict(self) -> dict:
        return asdict(self)


class SceneCLIP(SavableModel, TextEncoder):
    """A small CLIP (Radford et al. 2021) for the procedural scenes.

    Text: word tokens + learned positions -> ``layers`` pre-norm transformer layers (bidirectional, padding
    masked) -> LayerNorm = the hidden states ``[b, L, width]`` that the UNet cross-attends to. Their masked mean,
    projected, is the text embedding. Image: a CNN -> mean pool -> projection. Both embeddings are unit vectors;
    ``clip_loss`` pulls matching (image, caption) pairs together.
    """

    kind = "text_encoder"
    config_class = SceneCLIPConfig

    def __init__(self, config: SceneCLIPConfig | None = None):
        super().__init__()
        self.config = c = config or SceneCLIPConfig()
        self.tokenizer = WordTokenizer(c.vocab, c.max_length)
        self.dim, self.max_length = c.width, c.max_length
        self.token_embed = nn.Embedding(len(self.tokenizer), c.width)
        self.pos_embed = nn.Parameter(torch.randn(c.max_length, c.width) * 0.02)
        layer = nn.TransformerEncoderLayer(c.width, c.heads, 4 * c.width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(c.width)
        self.text_proj = nn.Linear(c.width, c.embed_dim, bias=False)
        self.image_body = strided_cnn(c.image_widths)
        self.image_proj = nn.Linear(c.image_widths[-1], c.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def hidden_states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask ``[b, L]`` -> ``[b, L, width]`` (with gradients; ``encode`` is the frozen path)."""
        x = self.token_embed(ids) + self.pos_embed[: ids.shape[1]]
        return self.ln_final(self.transformer(x, src_key_padding_mask=~mask))

    def _encode(self, prompts, truncate):
        ids, mask = self.tokenizer(prompts, truncate)
        device = self.pos_embed.device
        ids, mask = ids.to(device), mask.to(device)
        return self.hidden_states(ids, mask), mask

    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit text embeddings ``[b, embed_dim]``."""
        ids, mask = (v.to(self.pos_embed.device) for v in self.tokenizer(_check_prompts(prompts)))
        h = self.hidden_states(ids, mask)
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[b, 3, H, W]`` in [-1, 1] -> unit image embeddings ``[b, embed_dim]``."""
        features = self.image_body(images_at(images, self.config.image_size)).mean(dim=(2, 3))
        return F.normalize(self.image_proj(features), dim=-1)


def clip_loss(model: SceneCLIP, batch: dict, generator: torch.Generator | None = None):
    """CLIP's symmetric contrastive loss on a batch of (image, caption) pairs: each image must pick its own
    caption among the batch's captions and vice versa (cross-entropy over cosine similarities / temperature)."""
    img = model.image_embeds(batch["image"])
    txt = model.text_embeds(list(batch["caption"]))
    logits = model.logit_scale.clamp(max=math.log(100)).exp() * img @ txt.T  # [b, b]
    target = torch.arange(len(img), device=img.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    return loss, {"acc_i2t": (logits.argmax(1) == target).float().mean().item()}


# -- the real CLIP ---------------------------------------------------------------------------------

# the files from_pretrained reads from a folder; a tuple lists alternatives (either weights file will do)
CLIP_FILES = ("config.json", "vocab.json", "merges.txt", ("model.safetensors", "pytorch_model.bin"))
# the files clip_download_hint asks for: CLIP_FILES, the tokenizer's settings (model_max_length 77) and the
# special tokens
CLIP_DOWNLOAD = ("config.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                 "model.safetensors")


class TextEncoderNotFound(FileNotFoundError):
    """The CLIP files are not on this machine (nothing is downloaded at run time)."""


def _hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)  # $HF_HUB_CACHE, else $HF_HOME/hub (default ~/.cache/huggingface/hub)


def clip_download_hint(name: str = CLIP_VIT_L_14) -> str:
    """How to get the files of ``name`` once, and where they go."""
    size = (" For ViT-L/14 that is 1.7 GB: model.safetensors holds the whole CLIP, of which the loader keeps the "
            "text transformer." if name == CLIP_VIT_L_14 else "")
    return (f"tinyldm never downloads at run time; get the files once with\n"
            f"    hf download {name} {' '.join(CLIP_DOWNLOAD)}\n"
            f"(`huggingface-cli download` before huggingface_hub 0.34).{size} They go to the Hugging Face cache, "
            f"{_hub_cache()}, where this loader finds them by the name {name!r}; or add --local-dir FOLDER to "
            f"the command and pass the folder's path.")


def _cached_snapshot(name: str, what: str = "CLIP weights", hint: Callable[..., str] = clip_download_hint,
                     error: type[FileNotFoundError] = TextEncoderNotFound) -> Path:
    """The folder of hub model ``name`` in the Hugging Face cache, found on disk alone.

    The cache keeps ``models--{org}--{model}/snapshots/{commit}/`` with ``refs/main`` naming the commit that was
    downloaded. huggingface_hub's own look-ups (hf_hub_download, snapshot_download) may reach the network even
    with ``local_files_only=True``, so the loader reads this layout itself. When ``name`` is not there, raises
    ``error`` saying that ``what`` is missing, with ``hint(name)`` (``hint()`` for a name that is no hub id).
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise error(f"{name!r} is neither a folder nor a hub model id ('org/name'). " + hint()) from None
    repo = _hub_cache() / ("models--" + name.replace("/", "--"))
    ref = repo / "refs" / "main"
    snapshot = repo / "snapshots" / ref.read_text().strip() if ref.is_file() else None
    if snapshot is None or not snapshot.is_dir():
        raise error(f"{what} {name!r} are not on this machine (not in the Hugging Face cache). " + hint(name))
    return snapshot


def _missing_files(folder: Path, files: tuple) -> list[str]:
    """The entries of ``files`` (names, or tuples of alternatives) that ``folder`` lacks."""
    missing = []
    for names in files:
        names = names if isinstance(names, tuple) else (names,)
        if not any((folder / n).is_file() for n in names):
            missing.append(" or ".join(names))
    return missing


def _local_clip_folder(name_or_path: str, files: tuple = CLIP_FILES) -> Path:
    """``name_or_path`` if it is a folder, else its snapshot in the hub cache; checked to hold ``files``."""
    folder = Path(name_or_path).expanduser()
    is_folder = folder.is_dir()
    if not is_folder:
        folder = _cached_snapshot(name_or_path)
    missing = _missing_files(folder, files)
    if missing:
        raise TextEncoderNotFound(f"{folder} lacks {', '.join(missing)}. "
                                  + clip_download_hint(CLIP_VIT_L_14 if is_folder else name_or_path))
    return folder


class CLIPTextEncoder(TextEncoder):
    """CLIP's text transformer as Stable Diffusion v1 uses it: prompts padded (and truncated) to the tokenizer's
    ``model_max_length`` (77), ``last_hidden_state`` ``[b, 77, 768]`` for ViT-L/14, and the attention mask.

    Build it from a transformers ``CLIPTextModel`` and ``CLIPTokenizer``, or load with :meth:`from_pretrained`.
    """

    def __init__(self, model, tokenizer):
        super().__init__()
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self.dim = model.config.hidden_size
        self.max_length = int(min(tokenizer.model_max_length, model.config.max_position_embeddings))

    @classmethod
    def from_pretrained(cls, name_or_path: str = CLIP_VIT_L_14, device=None,
                        dtype: torch.dtype | None = None) -> "CLIPTextEncoder":
        """Load from a folder or the Hugging Face cache, without any network access, whatever the environment.

        ``name_or_path`` is a folder that holds :data:`CLIP_FILES`, or a hub model id (``"org/name"``) whose
        files are in the cache. Raises :class:`TextEncoderNotFound`, with the command that gets the files, when
        they are not there, naming the missing files of a folder that lacks some.
        """
        from transformers import CLIPTextModel, CLIPTokenizer

        folder = str(_local_clip_folder(name_or_path))
        # given a folder, transformers reads its files and never calls the hub
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        model = CLIPTextModel.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
        return cls(model, tokenizer).to(device or "cpu")

    def _encode(self, prompts, truncate):
        L = self.max_length
        for prompt in prompts:
            n = len(self.tokenizer(prompt)["input_ids"])  # with <|startoftext|> and <|endoftext|>
            if n > L:
                _too_long(prompt, n, L, truncate)
        tokens = self.tokenizer(prompts, padding="max_length", max_length=L, truncation=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        # no attention_mask into the model, as in Stable Diffusion: CLIP was trained with its causal mask only, so
        # the padding positions hold end-of-text states; the mask is returned for models that want to hide them
        out = self.model(input_ids=tokens["input_ids"].to(device))
        return out.last_hidden_state, tokens["attention_mask"].to(device).bool()
