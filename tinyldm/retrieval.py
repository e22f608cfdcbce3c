"""Retrieval: an external memory of image embeddings, searched by nearest neighbours (notebook 08).

Retrieval-augmented diffusion (RDM; Blattmann et al. 2022, *Semi-Parametric Neural Image Synthesis*) conditions the
denoiser on the k nearest neighbours of a query in a database of CLIP image embeddings, instead of on a label or a
caption. The model stays small because the knowledge of what images look like sits in the database, which can be
swapped at sampling time. This module holds the parts that are not the denoiser:

* :class:`ImageEncoder`: images ``[b, 3, H, W]`` in [-1, 1] -> unit embeddings ``[b, d]``, frozen. Two
  implementations: :class:`SceneImageEncoder` (the image tower of the course's offline :class:`tinyldm.text.SceneCLIP`,
  whose text tower shares its embedding space) and :class:`CLIPImageEncoder` (the real CLIP image tower through
  ``transformers``: ViT-B/32 as in RDM, ViT-L/14 as in Stable Diffusion; local files only).
* :class:`Database`: L2-normalised embeddings ``[N, d]`` with the ids of their source items, built from any dataset,
  saved and loaded with safetensors together with the fingerprint of the encoder that made them.
* Search: :meth:`Database.search` returns the k most similar items of each query (cosine similarity = dot product of
  unit vectors). The default is exact: a chunked matrix product with a running top-k, on any device. It can leave
  out given ids (the query's own image) and near duplicates above a similarity. For large databases
  :meth:`Database.use_index` puts a FAISS index (flat, IVF or HNSW) behind the same call.
* :class:`RetrievalCondition`: k neighbour embeddings as the UNet's context ``[b, k, d]`` (through the same
  cross-attention as text hidden states), with the all-zero context as the null condition for classifier-free
  guidance.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, fingerprint, load_model_file, save_model_file
from .conditioning import drop_mask

__all__ = ["ImageEncoder", "SceneImageEncoder", "CLIPImageEncoder", "CLIP_VIT_B_32", "CLIP_IMAGE_FILES",
           "Database", "FaissIndex", "RetrievalError", "RetrievalCondition", "INDEX_KINDS", "neighbour_counts",
           "compute_neighbours", "load_or_compute_neighbours", "WithNeighbours"]

CLIP_VIT_B_32 = "openai/clip-vit-base-patch32"
# the files CLIPImageEncoder reads from a folder: the config and one weights file (no tokenizer)
CLIP_IMAGE_FILES = ("config.json", ("model.safetensors", "pytorch_model.bin"))
INDEX_KINDS = ("flat", "ivf", "hnsw")
KIND = "database"
INDEX_KIND = "faiss_index"

# CLIP's image normalisation (the mean and std of its training images, per RGB channel)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class RetrievalError(ValueError):
    """A database, a query or an index that does not fit what was asked."""


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        got = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise RetrievalError(f"expected images [b, 3, H, W] in [-1, 1], got {got}")
    return images


class ImageEncoder(nn.Module):
    """The interface: ``embed(images [b, 3, H, W] in [-1, 1]) -> unit vectors [b, dim]``, frozen.

    Subclasses set ``dim`` and ``name`` and implement ``_embed``. ``fingerprint`` identifies the weights: a
    database records it, and a query made with another encoder is refused. ``text_embeds(prompts)``, where the
    encoder has a text tower in the same space, embeds prompts for text queries.
    """

    dim: int
    name: str

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        images = _check_images(images)
        was_training = self.training
        self.eval()
        device = self.device
        out = torch.cat([self._embed(images[i:i + batch_size].to(device)).float()
                         for i in range(0, len(images), batch_size)]) if len(images) else torch.zeros(0, self.dim)
        self.train(was_training)
        return F.normalize(out, dim=-1)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def fingerprint(self) -> str:
        return fingerprint(self)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no text tower")


class SceneImageEncoder(ImageEncoder):
    """The image tower of a :class:`tinyldm.text.SceneCLIP` (the course's offline CLIP): 32 px scenes -> a small CNN
    -> a unit vector of ``embed_dim`` (128). Its text tower embeds prompts into the same space, so a prompt can
    stand in for images (``text_embeds``). The fingerprint is the whole SceneCLIP's, the same as its text side's."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        self.dim, self.name = clip.config.embed_dim, "SceneCLIP"

    def _embed(self, images):
        return self.clip.image_embeds(images)

    @torch.no_grad()
    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        was_training = self.clip.training
        out = self.clip.eval().text_embeds(prompts).float().cpu()
        self.clip.train(was_training)
        return out


class CLIPImageEncoder(ImageEncoder):
    """CLIP's image tower (``transformers``' CLIPVisionModelWithProjection): ``image_embeds`` of ``projection_dim``
    (512 for ViT-B/32, 768 for ViT-L/14), L2-normalised, as RDM's database uses them.

    Images are prepared as CLIP's image processor does: [-1, 1] -> [0, 1], the shorter side resized to the model's
    ``image_size`` (bicubic), a centre crop, then CLIP's per-channel mean and std. Build it from a model, or load
    with :meth:`from_pretrained` (local files only). ``text_embeds`` works when the folder also holds CLIP's text
    tower and tokenizer (a whole CLIP checkpoint, as the hub's openai/clip-* files are).
    """

    def __init__(self, model, name: str = "CLIP", text_model=None, tokenizer=None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.text_model = text_model.eval().requires_grad_(False) if text_model is not None else None
        self.tokenizer = tokenizer
        self.dim, self.name = model.config.projection_dim, name
        self.image_size = model.config.image_size
        self.register_buffer("mean", torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(cls, name_or_path: str = CLIP_VIT_B_32, device=None, dtype: torch.dtype | None = None,
                        text: bool = True) -> "CLIPImageEncoder":
        """Load from a folder or the Hugging Face cache, without network access (as
        :meth:`tinyldm.text.CLIPTextEncoder.from_pretrained`). Raises :class:`tinyldm.text.TextEncoderNotFound` with
        the download command when the files are absent. With ``text`` (default) the text tower is loaded too if the
        folder has it and a tokenizer."""
        from transformers import AutoConfig, CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection
        from transformers.utils import logging as hf_logging

        from .text import CLIP_FILES, _local_clip_folder, _missing_files

        folder = _local_clip_folder(name_or_path, CLIP_IMAGE_FILES)
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        whole = config.model_type == "clip"  # a whole CLIP (both towers), as the hub's openai/clip-* files are
        vision_config = config.vision_config if whole else config
        if whole:  # the projection width sits at the top of a whole CLIP's config
            vision_config.projection_dim = config.projection_dim
        kwargs = {"local_files_only": True, **({"dtype": dtype} if dtype is not None else {})}
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # each tower's loader would list the other tower's weights as unused
        try:
            model = CLIPVisionModelWithProjection.from_pretrained(str(folder), config=vision_config, **kwargs)
            text_model = tokenizer = None
            if text and whole and not _missing_files(folder, CLIP_FILES):  # the text tower and its tokenizer
                text_config = config.text_config
                text_config.projection_dim = config.projection_dim
                text_model = CLIPTextModelWithProjection.from_pretrained(str(folder), config=text_config, **kwargs)
                tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        return cls(model, Path(name_or_path).name, text_model, tokenizer).to(device or "cpu")

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> CLIP's pixel_values ``[b, 3, image_size, image_size]``."""
        x = (images.float() + 1) / 2
        side = self.image_size
        h, w = x.shape[-2:]
        scale = side / min(h, w)
        size = (max(side, round(h * scale)), max(side, round(w * scale)))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (size[0] - side) // 2, (size[1] - side) // 2
        x = x[..., top:top + side, left:left + side]
        return (x - self.mean) / self.std

    def _embed(self, images):
        dtype = next(self.model.parameters()).dtype
        return self.model(pixel_values=self.prepare(images).to(dtype)).image_embeds

    @torch.no_grad()
    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        if self.text_model is None:
            raise NotImplementedError(f"this CLIP image encoder ({self.name}) was loaded without a text tower: load "
                                      f"a whole CLIP checkpoint (with its tokenizer files) for text queries")
        from .text import _check_prompts

        tokens = self.tokenizer(_check_prompts(prompts), padding=True, truncation=True, return_tensors="pt")
        out = self.text_model(**{k: v.to(self.device) for k, v in tokens.items()}).text_embeds
        return F.normalize(out.float(), dim=-1).cpu()


# -- the database ----------------------------------------------------------------------------------

def _check_embeddings(x, dim: int | None, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
        got = f"shape {list(x.shape)} of {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise RetrievalError(f"expected {what} as a float tensor [n, d], got {got}")
    if dim is not None and x.shape[1] != dim:
        raise RetrievalError(f"expected {what} of width d = {dim} (the database's), got width {x.shape[1]}")
    return x


def _embeddings_fingerprint(x: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(x.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class Database:
    """An external image memory: unit embeddings ``[N, d]`` (float32) and ``ids [N]`` (int64) back to the items of
    the source dataset, with ``info`` (the encoder's name and fingerprint, the source dataset).

    Build with :meth:`build` (from a dataset and an encoder) or from embeddings you have; persist with
    :meth:`save` / :meth:`load`; query with :meth:`search`. :meth:`subset` makes a smaller database (a swapped one
    at sampling time).
    """

    def __init__(self, embeddings: torch.Tensor, ids: torch.Tensor | Sequence[int] | None = None,
                 info: dict | None = None, normalize: bool = True):
        embeddings = _check_embeddings(embeddings, None, "embeddings")
        if len(embeddings) == 0:
            raise RetrievalError("expected at least one embedding, got an empty database")
        embeddings = embeddings.detach().float().contiguous()
        self.embeddings = F.normalize(embeddings, dim=-1) if normalize else embeddings
        ids = torch.arange(len(embeddings)) if ids is None else torch.as_tensor(ids, dtype=torch.long).flatten()
        if len(ids) != len(embeddings):
            raise RetrievalError(f"expected one id per embedding ({len(embeddings)}), got {len(ids)}")
        if len(torch.unique(ids)) != len(ids):
            raise RetrievalError("expected distinct ids, got repeated ones")
        self.ids = ids
        self.info = dict(info or {})
        self.index: FaissIndex | None = None
        self._row_of: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- making one
    @classmethod
    @torch.no_grad()
    def build(cls, encoder: ImageEncoder, dataset: Dataset, batch_size: int = 256, ids: Sequence[int] | None = None,
              progress: bool = True, num_workers: int = 0) -> "Database":
        """Embed every item of ``dataset`` (items with "image") with ``encoder``, in batches, with a progress bar.
        ``ids`` default to the items' indices in ``dataset``."""
        if len(dataset) == 0:
            raise RetrievalError(f"expected a dataset with at least one item, got an empty {type(dataset).__name__}")
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        parts = [encoder.embed(batch["image"]).cpu()
                 for batch in tqdm(loader, desc="embed database", disable=not progress)]
        info = {"encoder": encoder.name, "encoder_fingerprint": encoder.fingerprint, "dataset": repr(dataset)}
        return cls(torch.cat(parts), ids, info)

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes of the embeddings and ids (what exact search needs, and all it needs)."""
        return self.embeddings.numel() * self.embeddings.element_size() + self.ids.numel() * self.ids.element_size()

    @property
    def bytes_per_embedding(self) -> float:
        return self.nbytes / len(self)

    @property
    def fingerprint(self) -> str:
        """A hash of the embeddings: an index file records it, and is refused by other embeddings."""
        return _embeddings_fingerprint(self.embeddings)

    def __repr__(self) -> str:
        src = f", encoder={self.info['encoder']}" if "encoder" in self.info else ""
        idx = f", index={self.index.kind}" if self.index is not None else ""
        return f"Database({len(self)} x {self.dim}{src}{idx}, {self.nbytes / 2**20:.1f} MiB)"

    def subset(self, keep: torch.Tensor | Sequence[int]) -> "Database":
        """A new database of the rows ``keep`` (a bool mask ``[N]`` or row numbers), with the same info."""
        keep = torch.as_tensor(keep)
        rows = keep.nonzero().flatten() if keep.dtype == torch.bool else keep.long()
        if len(rows) == 0:
            raise RetrievalError("this subset keeps no rows: the database would be empty")
        return Database(self.embeddings[rows], self.ids[rows], {**self.info, "subset_of": len(self)}, normalize=False)

    def rows_of(self, ids: torch.Tensor) -> torch.Tensor:
        """The row of each id in ``ids`` (any shape), -1 where the id is not in the database."""
        if self._row_of is None:
            sorted_ids, order = torch.sort(self.ids)
            self._row_of = (sorted_ids, order)
        sorted_ids, order = self._row_of
        ids = torch.as_tensor(ids, dtype=torch.long)
        pos = torch.searchsorted(sorted_ids, ids.flatten().contiguous()).clamp(max=len(sorted_ids) - 1)
        found = sorted_ids[pos] == ids.flatten()
        return torch.where(found, order[pos], torch.full_like(pos, -1)).view(ids.shape)

    # -- persistence
    def save(self, path: str | Path) -> Path:
        """One safetensors file: embeddings, ids, and info (encoder name and fingerprint, source), atomically."""
        return save_model_file(path, KIND, {"n": len(self), "dim": self.dim},
                               {"embeddings": self.embeddings, "ids": self.ids}, self.info)

    @classmethod
    def load(cls, path: str | Path) -> "Database":
        tensors, config, info = load_model_file(path, KIND)
        if set(tensors) != {"embeddings", "ids"} or list(tensors["embeddings"].shape) != [config["n"], config["dim"]]:
            raise CheckpointError(f"{path} is a damaged database file: expected embeddings [{config['n']}, "
                                  f"{config['dim']}] and ids, got {sorted(tensors)}")
        return cls(tensors["embeddings"], tensors["ids"], {**info, "path": str(path)}, normalize=False)

    def check_encoder(self, encoder: ImageEncoder) -> None:
        """Raise a RetrievalError if this database was built with another encoder than ``encoder``."""
        want = self.info.get("encoder_fingerprint")
        if want is not None and want != encoder.fingerprint:
            raise RetrievalError(
                f"this database was built with the encoder {self.info.get('encoder')!r} of fingerprint {want}, but "
                f"the query's encoder ({encoder.name}) has fingerprint {encoder.fingerprint}: their embeddings live "
                f"in different spaces. Build the database again with this encoder (Database.build).")

    # -- search
    def search(self, queries: torch.Tensor, k: int, exclude_ids: torch.Tensor | Sequence | None = None,
               max_similarity: float | None = None, encoder: ImageEncoder | None = None,
               exact: bool | None = None, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
        """The k most similar database items of each query: ``(similarities [q, k], rows [q, k])``, most similar
        first (``self.ids[rows]`` are the source ids, ``self.embeddings[rows]`` the neighbours).

        ``queries`` ``[q, d]`` are normalised here. ``exclude_ids`` ``[q, m]`` (-1 pads) leaves those source ids out
        of query i's answer, e.g. the query's own image; ``max_similarity`` leaves out near duplicates, items more
        similar than that. ``encoder``: the encoder that made the queries, checked against the database's. Exact
        search (the default without an index, or ``exact=True``) is a chunked matrix product on the database's
        device; with :meth:`use_index` a FAISS index answers instead.
        """
        queries = _check_embeddings(queries, self.dim, "queries")
        if encoder is not None:
            self.check_encoder(encoder)
        k = int(k)
        if not 1 <= k <= len(self):
            raise RetrievalError(f"expected k in 1..{len(self)} (the database's size), got k = {k}")
        queries = F.normalize(queries.detach().float(), dim=-1)
        exclude_rows = self._exclude_rows(exclude_ids, len(queries))
        if self.index is not None and not exact:
            sims, rows = self.index.search(queries, k, exclude_rows, max_similarity, self)
        else:
            sims, rows = self._exact(queries.to(self.embeddings.device), k, exclude_rows, max_similarity, chunk)
        if bool(torch.isinf(sims).any()):
            left = int(torch.isfinite(sims).sum(1).min())
            raise RetrievalError(f"only {left} database items are left for some query after the exclusions "
                                 f"(ids and similarity > {max_similarity}), fewer than k = {k}")
        return sims, rows

    def _exclude_rows(self, exclude_ids, q: int) -> torch.Tensor | None:
        if exclude_ids is None:
            return None
        ex = torch.as_tensor(exclude_ids, dtype=torch.long)
        if ex.ndim == 1:
            ex = ex[:, None]
        if ex.ndim != 2 or len(ex) != q:
            raise RetrievalError(f"expected exclude_ids [q, m] with one row per query ({q}), got shape {list(ex.shape)}")
        return torch.where(ex >= 0, self.rows_of(ex), torch.full_like(ex, -1))

    def _exact(self, queries, k, exclude_rows, max_similarity, chunk):
        """Chunks of the database x queries^T, each followed by a top-k merged into the running top-k: the peak
        memory is one [q, chunk] block, whatever N."""
        best_s = torch.full((len(queries), 0), -math.inf, device=queries.device)
        best_r = torch.zeros((len(queries), 0), dtype=torch.long, device=queries.device)
        for start in range(0, len(self), chunk):
            block = self.embeddings[start:start + chunk]
            s = queries @ block.T  # [q, chunk]: cosine similarities
            if max_similarity is not None:
                s = s.masked_fill(s > max_similarity, -math.inf)
            if exclude_rows is not None:
                local = exclude_rows.to(s.device) - start
                hit = (local >= 0) & (local < len(block)) & (exclude_rows.to(s.device) >= 0)
                qi = torch.arange(len(queries), device=s.device)[:, None].expand_as(local)
                s[qi[hit], local[hit]] = -math.inf
            top_s, top_r = s.topk(min(k, len(block)), dim=1)
            best_s, order = torch.cat([best_s, top_s], 1).topk(min(k, best_s.shape[1] + top_s.shape[1]), dim=1)
            best_r = torch.cat([best_r, top_r + start], 1).gather(1, order)
        return best_s.cpu(), best_r.cpu()

    def neighbours(self, rows: torch.Tensor) -> torch.Tensor:
        """The embeddings of ``rows`` ``[q, k]`` -> ``[q, k, d]``."""
        return self.embeddings[torch.as_tensor(rows, dtype=torch.long)]

    def query(self, queries: torch.Tensor, k: int, keep_query: bool = False, **search) -> torch.Tensor:
        """The condition for ``queries`` ``[q, d]``: their k nearest neighbours ``[q, k, d]``. With ``keep_query``
        the query itself comes first, followed by its k - 1 nearest neighbours (RDM's text prompts: the text
        embedding, then the images it retrieves). ``search``: as :meth:`search` (exclusions, encoder check)."""
        queries = F.normalize(_check_embeddings(queries, self.dim, "queries").float(), dim=-1)
        if keep_query and k == 1:
            return queries[:, None]
        _, rows = self.search(queries, k - 1 if keep_query else k, **search)
        found = self.neighbours(rows)
        return torch.cat([queries[:, None].to(found), found], 1) if keep_query else found

    def pseudo_queries(self, n: int, k: int, weights: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Conditions ``[n, k, d]`` for unconditional samples, RDM's way: draw n database items with probability
        proportional to ``weights`` (how often each is a neighbour of a training image, :func:`neighbour_counts`;
        default uniform), and return each one's k nearest neighbours (itself first)."""
        weights = torch.ones(len(self)) if weights is None else torch.as_tensor(weights, dtype=torch.float)
        if weights.shape != (len(self),) or not bool((weights >= 0).all()) or not weights.sum() > 0:
            raise RetrievalError(f"expected non-negative weights [{len(self)}] with a positive sum, got shape "
                                 f"{list(weights.shape)}")
        rows = torch.multinomial(weights, n, replacement=True, generator=generator)
        return self.query(self.embeddings[rows], k)

    # -- FAISS
    def use_index(self, kind: str = "hnsw", **params) -> "FaissIndex":
        """Build a FAISS index of the embeddings (see :class:`FaissIndex`) and answer ``search`` with it."""
        self.index = FaissIndex.build(self, kind, **params)
        return self.index

    def load_index(self, path: str | Path) -> "FaissIndex":
        """Load an index saved by :meth:`FaissIndex.save`, checked to be of these embeddings."""
        self.index = FaissIndex.load(path, self)
        return self.index


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency
        raise RetrievalError("the FAISS backend needs faiss-cpu: pip install faiss-cpu") from None
    return faiss


class FaissIndex:
    """A FAISS index over a database's embeddings, searched by inner product (= cosine for unit vectors).

    ``kind``: "flat" (exact, FAISS's own matmul), "ivf" (IndexIVFFlat: k-means into ``nlist`` cells, search the
    ``nprobe`` nearest cells), "hnsw" (IndexHNSWFlat: a navigable small-world graph of ``M`` links per node,
    ``ef_search`` candidates per query). Approximate indexes trade recall for speed; measure recall against
    exact search (``benchmarks/retrieval_search.py``). Exclusions are applied to an over-fetched answer (more
    results are asked for until k are left).
    """

    def __init__(self, index, kind: str, params: dict, embeddings_fingerprint: str):
        self.faiss_index, self.kind, self.params = index, kind, params
        self.embeddings_fingerprint = embeddings_fingerprint

    @classmethod
    def build(cls, db: Database, kind: str = "hnsw", nlist: int | None = None, nprobe: int = 16, M: int = 32,
              ef_construction: int = 80, ef_search: int = 64, train_size: int = 100_000, seed: int = 0
              ) -> "FaissIndex":
        """Build an index of ``db``'s embeddings. IVF: ``nlist`` cells (default sqrt(N), at least 39 vectors each,
        as FAISS's k-means wants), trained on ``train_size`` of the vectors drawn with ``seed``."""
        faiss = _faiss()
        if kind not in INDEX_KINDS:
            raise RetrievalError(f"expected an index kind in {INDEX_KINDS}, got {kind!r}")
        x = db.embeddings.cpu().numpy()
        d, ip = db.dim, faiss.METRIC_INNER_PRODUCT
        if kind == "flat":
            index, params = faiss.IndexFlatIP(d), {}
        elif kind == "ivf":
            nlist = nlist or max(1, min(round(math.sqrt(len(x))), len(x) // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, ip)
            sample = x[np.random.default_rng(seed).permutation(len(x))[:max(train_size, 39 * nlist)]]
            index.train(sample)
            index.nprobe, params = min(nprobe, nlist), {"nlist": nlist, "nprobe": min(nprobe, nlist)}
        else:
            index = faiss.IndexHNSWFlat(d, M, ip)
            index.hnsw.efConstruction, index.hnsw.efSearch = ef_construction, ef_search
            params = {"M": M, "ef_construction": ef_construction, "ef_search": ef_search}
        index.add(x)
        return cls(index, kind, params, db.fingerprint)

    @property
    def nbytes(self) -> int:
        """The index's size: the bytes FAISS writes for it (its vectors, lists or graph)."""
        return int(_faiss().serialize_index(self.faiss_index).size)

    def set(self, **params) -> None:
        """Change the search-time parameters: ``nprobe`` (ivf) or ``ef_search`` (hnsw)."""
        for name, value in params.items():
            if self.kind == "ivf" and name == "nprobe":
                self.faiss_index.nprobe = int(value)
            elif self.kind == "hnsw" and name == "ef_search":
                self.faiss_index.hnsw.efSearch = int(value)
            else:
                raise RetrievalError(f"a {self.kind} index has no search parameter {name!r}")
            self.params[name] = int(value)

    def search(self, queries, k, exclude_rows, max_similarity, db: Database):
        n = len(db)
        extra = (exclude_rows.shape[1] if exclude_rows is not None else 0)
        fetch = min(n, k + extra + (k if max_similarity is not None else 0))
        q = queries.cpu().numpy()
        while True:
            if self.kind == "hnsw":
                self.faiss_index.hnsw.efSearch = max(self.params["ef_search"], fetch)
            s, r = self.faiss_index.search(q, fetch)
            sims, rows = torch.from_numpy(s).float(), torch.from_numpy(r).long()
            bad = rows < 0
            if max_similarity is not None:
                bad |= sims > max_similarity
            if exclude_rows is not None:
                bad |= (rows[:, :, None] == exclude_rows[:, None, :]).any(-1) & (rows >= 0)
            sims = sims.masked_fill(bad, -math.inf)
            if int(torch.isfinite(sims).sum(1).min()) >= k or fetch >= n:
                break
            fetch = min(n, 2 * fetch)
        if self.kind == "hnsw":
            self.faiss_index.hnsw.efSearch = self.params["ef_search"]
        sims, order = sims.topk(k, dim=1)
        return sims, rows.gather(1, order)

    def save(self, path: str | Path) -> Path:
        """The index as bytes in a safetensors file, with the fingerprint of the embeddings it indexes."""
        data = torch.from_numpy(_faiss().serialize_index(self.faiss_index).copy())
        return save_model_file(path, INDEX_KIND, {"kind": self.kind, "params": self.params,
                                                  "ntotal": int(self.faiss_index.ntotal)},
                               {"index": data}, {"embeddings": self.embeddings_fingerprint})

    @classmethod
    def load(cls, path: str | Path, db: Database) -> "FaissIndex":
        tensors, config, extra = load_model_file(path, INDEX_KIND)
        if extra.get("embeddings") != db.fingerprint or config.get("ntotal") != len(db):
            raise RetrievalError(f"{path} indexes other embeddings ({config.get('ntotal')} vectors, fingerprint "
                                 f"{extra.get('embeddings')}) than this database ({len(db)} vectors, fingerprint "
                                 f"{db.fingerprint}): build the index again with Database.use_index")
        index = _faiss().deserialize_index(tensors["index"].numpy())
        return cls(index, config["kind"], config["params"], extra["embeddings"])


def neighbour_counts(rows: torch.Tensor, n: int) -> torch.Tensor:
    """How often each of the ``n`` database rows appears in ``rows`` (the neighbours of the training images): RDM's
    distribution for drawing pseudo-queries for unconditional samples."""
    return torch.bincount(torch.as_tensor(rows).flatten(), minlength=n)


# -- the condition ---------------------------------------------------------------------------------

class RetrievalCondition:
    """Retrieved neighbours as the UNet's context: ``batch[key]`` ``[b, >= k, d]`` (the cached neighbour embeddings,
    nearest first) -> ``{"context": [b, k, d]}``; the first k are kept, as in RDM. With probability p_uncond an
    item's context is dropped to zeros, the null condition of classifier-free guidance (RDM's choice).

    The unit embeddings are multiplied by sqrt(d), so that each component has unit variance like the LayerNorm'd
    hidden states of a text encoder; there is no learned projection (the cross-attention's key and value maps are
    the only ones). No mask: every token is a real neighbour.
    """

    def __init__(self, dim: int, k: int = 4, p_uncond: float = 0.1, key: str = "neighbours"):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"expected k (neighbours per image) as an int >= 1, got {k!r}")
        drop_mask(0, p_uncond)
        self.dim, self.k, self.p_uncond, self.key = dim, k, p_uncond, key

    def given(self, neighbours: torch.Tensor, device=None) -> dict[str, torch.Tensor]:
        """The model inputs for neighbour embeddings ``[b, m, d]`` (all m of them: any number of tokens works with
        cross-attention) or one query embedding per item ``[b, d]`` (as one token: e.g. a text embedding)."""
        x = torch.as_tensor(neighbours)
        if x.ndim == 2:
            x = x[:, None]
        if x.ndim != 3 or x.shape[-1] != self.dim or x.shape[1] < 1:
            raise ValueError(f"expected neighbour embeddings [b, m, {self.dim}] (or [b, {self.dim}]), got shape "
                             f"{list(x.shape)}")
        x = x.float() * math.sqrt(self.dim)
        return {"context": x.to(device) if device is not None else x}

    def null(self, b: int, device=None, length: int | None = None) -> dict[str, torch.Tensor]:
        """All-zero contexts ``[b, length, d]`` (default length k). The attention output of zero keys and values is
        zero, so the length does not change the model's answer; it only has to match the condition's for the
        batched guided pass."""
        return {"context": torch.zeros(b, length or self.k, self.dim, device=device)}

    def __call__(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        x = batch[self.key]
        if x.ndim != 3 or x.shape[1] < self.k:
            raise ValueError(f"expected batch[{self.key!r}] of shape [b, >= {self.k}, {self.dim}], got "
                             f"{list(x.shape)}")
        x = x[:, :self.k]
        drop = drop_mask(len(x), self.p_uncond, generator, x.device)
        return self.given(torch.where(drop[:, None, None], torch.zeros_like(x), x))

    def __repr__(self) -> str:
        return f"RetrievalCondition(dim={self.dim}, k={self.k}, p_uncond={self.p_uncond})"


# -- neighbours computed once, cached beside the latents ------------------------------------------

NEIGHBOURS_KIND = "neighbours"


@torch.no_grad()
def compute_neighbours(encoder: ImageEncoder, dataset: Dataset, db: Database, k: int = 20,
                       exclude_self: bool = False, max_similarity: float | None = None, batch_size: int = 256,
                       progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest database rows of every item of ``dataset`` (its "image" embedded by ``encoder``):
    ``(similarities [n, k], rows [n, k])``. ``exclude_self`` leaves out the database item whose id is the
    item's index (for a database built from the same dataset); ``max_similarity`` leaves out near duplicates."""
    db.check_encoder(encoder)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    sims, rows, start = [], [], 0
    for batch in tqdm(loader, desc="neighbours", disable=not progress):
        q = encoder.embed(batch["image"])
        exclude = torch.arange(start, start + len(q))[:, None] if exclude_self else None
        s, r = db.search(q, k, exclude_ids=exclude, max_similarity=max_similarity)
        sims.append(s), rows.append(r)
        start += len(q)
    return torch.cat(sims), torch.cat(rows)


def load_or_compute_neighbours(encoder: ImageEncoder, dataset: Dataset, db: Database, path: str | Path,
                               k: int = 20, exclude_self: bool = False, max_similarity: float | None = None,
                               progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`compute_neighbours`, cached in ``path`` (safetensors) and reused when the dataset, the database's
    embeddings, k and the exclusions are the same."""
    path = Path(path)
    info = {"dataset": repr(dataset), "database": db.fingerprint, "encoder": encoder.fingerprint, "k": k,
            "exclude_self": exclude_self, "max_similarity": max_similarity}
    if path.exists():
        try:
            tensors, config, _ = load_model_file(path, NEIGHBOURS_KIND)
            if config == info:
                return tensors["similarities"], tensors["rows"]
        except CheckpointError:
            pass  # not a neighbour cache (or a damaged one): compute again and replace it
    sims, rows = compute_neighbours(encoder, dataset, db, k, exclude_self, max_similarity, progress=progress)
    save_model_file(path, NEIGHBOURS_KIND, info, {"similarities": sims, "rows": rows})
    return sims, rows


class WithNeighbours(Dataset):
    """Items of ``dataset`` (cached latents, for instance) with ``"neighbours"``: the embeddings ``[k, d]`` of their
    k cached nearest database rows ``rows [n, >= k]``, nearest first. ``labels`` passes the dataset's through."""

    def __init__(self, dataset: Dataset, db: Database, rows: torch.Tensor, k: int | None = None):
        rows = torch.as_tensor(rows, dtype=torch.long)
        if rows.ndim != 2 or len(rows) != len(dataset):
            raise RetrievalError(f"expected neighbour rows [{len(dataset)}, k] (one row per item), got "
                                 f"{list(rows.shape)}")
        if len(rows) and (int(rows.max()) >= len(db) or int(rows.min()) < 0):
            raise RetrievalError(f"the neighbour rows point outside the database of {len(db)} items: they were "
                                 f"computed with another database")
        self.dataset, self.db, self.rows = dataset, db, rows[:, :k] if k is not None else rows

    @property
    def labels(self):
        return self.dataset.labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[i], "neighbours": self.db.embeddings[self.rows[i]]}

    def __repr__(self) -> str:
        return f"WithNeighbours({self.dataset!r}, k={self.rows.shape[1]}, {self.db!r})"
