"""Encode a dataset once, keep the latents on disk, train diffusion on them.

The autoencoder is frozen while the diffusion model trains, so encoding every image on every step would repeat the
same work thousands of times. tinyldm encodes once (the posterior mean times the scale factor, exactly what
:meth:`Autoencoder.to_latent` returns) and keeps the latents in a *cache folder* that scales from the course's 20k
scenes to FFHQ's 70k faces at 512 px (70k x [4, 64, 64] latents, 2.3 GB in float16):

    folder/
      plan.json                 what is being encoded (autoencoder fingerprint, dataset, shard size, dtype, flips)
      shard-00000.safetensors   latents [m, c, h, w] (and their horizontal flips), labels [m], attributes [m, ...]
      shard-00000.json          the shard's captions (and image paths): text stays out of the safetensors header,
      ...                       whose size is limited (100 MB), and is read once, not memory-mapped
      index.json                written last: the cache is complete

* Sharded and resumable: shards of ``shard_size`` items are written one by one, each atomically (its captions first,
  then its tensors), so a run killed while encoding goes on from the first missing shard when started again, and
  nothing half-written is ever read back.
* Memory-mapped: a :class:`LatentDataset` maps the shards' latents from disk (the safetensors layout is a JSON header
  and raw little-endian arrays, so numpy maps them in place); an item reads one latent, and a cache far larger than
  memory trains fine.
* Other tensors of an item (``keep``): stored beside its latent, memory-mapped the same way, and returned with it,
  such as an inpainting mask at the latent grid or a face-parsing map (:mod:`tinyldm.inpaint`).
* Horizontal flips (``flip=True``): each image is also encoded mirrored, and the dataset has 2n items (item n + i is
  the mirror of item i, with its label and caption). A flipped latent is not the flip of the latent (the encoder is
  not mirror-symmetric), hence encoding both. Only for data where left and right carry no meaning in the labels or
  captions.
"""

from __future__ import annotations

import bisect
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from . import distributed
from .autoencoder import Autoencoder
from .checkpoint import FORMAT, CheckpointError, atomic_path, fingerprint, remove_stale_temporaries

__all__ = ["LatentDataset", "encode_dataset", "load_or_encode", "IncompleteCache"]

KIND = "latents"
SHARD_SIZE = 4096  # items per shard: 4096 x [4, 64, 64] float16 latents (512 px images at f = 8) are 134 MB
DTYPES = {torch.float32: ("F32", np.float32), torch.float16: ("F16", np.float16)}
_NUMPY = {code: np_dtype for code, np_dtype in [*DTYPES.values(), ("I64", np.int64)]}  # what _mapped reads


class IncompleteCache(CheckpointError):
    """A latent cache folder whose encoding has not finished (or was made by another job)."""


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def _write_json(path: Path, value) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable JSON file of a latent cache ({e})") from None


def _mapped(path: Path, name: str) -> np.ndarray:
    """The tensor ``name`` of a safetensors file, memory-mapped read-only (float16, float32 or int64)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    entry = header[name]
    dtype = _NUMPY[entry["dtype"]]
    begin, _ = entry["data_offsets"]
    return np.memmap(path, dtype=dtype, mode="r", offset=8 + n + begin, shape=tuple(entry["shape"]))


class LatentDataset(Dataset):
    """A complete latent cache folder (see the module docstring). Item i: ``{"latent": float32 [c, h, w],
    "label": int, "caption": str}`` plus ``"attributes"`` when the source dataset had them, and the tensors it was
    asked to ``keep`` (floats as float32).

    ``latents``, ``labels`` and ``attributes`` give all items at once as tensors: fine for the course's caches
    (20k x [4, 16, 16] is 20 MB); for a cache larger than memory, index items instead (``latents`` reads every
    shard into memory).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index_file = self.path / "index.json"
        if not index_file.is_file():
            if self.path.is_file():
                raise CheckpointError(f"{self.path} is a file; a latent cache is a folder (made by encode_dataset)")
            done = len(list(self.path.glob("shard-*.safetensors"))) if self.path.is_dir() else 0
            raise IncompleteCache(f"{self.path} is not a complete latent cache (no index.json; {done} shards "
                                  f"written): its encoding did not finish. Run load_or_encode (or the training "
                                  f"command) again to finish it.")
        index = _read_json(index_file)
        if index.get("format") != FORMAT or index.get("kind") != KIND:
            raise CheckpointError(f"{index_file} is not the index of a tinyldm latent cache")
        self.info, self.flip = index["info"], bool(index["flip"])
        self.kept = tuple(index.get("keep", ()))
        from safetensors.torch import load_file

        self._files = [self.path / f"{shard}.safetensors" for shard in index["shards"]]
        self._open_maps()
        labels, attributes, self.captions = [], [], []
        for shard, file in zip(index["shards"], self._files):
            tensors = load_file(str(file), device="cpu")  # labels, attributes: small; latents: mapped
            labels.append(tensors["labels"])
            if "attributes" in tensors:
                attributes.append(tensors["attributes"])
            self.captions += _read_json(self.path / f"{shard}.json")["captions"]
        self._ends = np.cumsum([len(m) for m in self._maps]).tolist()
        self.n = self._ends[-1] if self._ends else 0  # images; with flips the dataset has 2n items
        self._labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
        self._attributes = torch.cat(attributes) if attributes else None
        self.shape = tuple(index["shape"])  # [c, h, w] of one latent
        self._all = None

    def _open_maps(self) -> None:
        self._maps = [_mapped(file, "latents") for file in self._files]
        self._mapped_flips = [_mapped(file, "flipped") for file in self._files] if self.flip else []
        self._kept_maps = {key: [_mapped(file, f"keep.{key}") for file in self._files] for key in self.kept}

    def __getstate__(self) -> dict:
        # sent to DataLoader workers (spawned processes): the maps are reopened there, not copied
        return {k: v for k, v in self.__dict__.items() if k not in ("_maps", "_mapped_flips", "_kept_maps", "_all")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _all=None)
        self._open_maps()

    @property
    def scale_factor(self) -> float:
        return self.info["scale_factor"]

    def __len__(self) -> int:
        return 2 * self.n if self.flip else self.n

    def _row(self, maps: list[np.ndarray], i: int) -> torch.Tensor:
        """Row i (of all shards) of a mapped tensor, as a tensor of its own (a copy: the maps are read-only)."""
        k = bisect.bisect_right(self._ends, i)
        row = maps[k][i - (self._ends[k - 1] if k else 0)]
        return torch.from_numpy(np.array(row, dtype=np.float32 if row.dtype.kind == "f" else row.dtype))

    def _latent(self, i: int) -> torch.Tensor:
        flipped, i = divmod(i, self.n)
        return self._row(self._mapped_flips if flipped else self._maps, i)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a latent cache of {len(self)} items")
        i %= len(self)
        j = i % self.n  # the source image (a flipped item keeps its label and caption)
        item = {"latent": self._latent(i), "label": int(self._labels[j]), "caption": self.captions[j]}
        if self._attributes is not None:
            item["attributes"] = self._attributes[j]
        for key, maps in self._kept_maps.items():
            item[key] = self._row(maps, j)
        return item

    @property
    def latents(self) -> torch.Tensor:
        """Every latent ``[len, c, h, w]`` float32, in memory (read once, then kept)."""
        if self._all is None:
            parts = [torch.from_numpy(np.array(m, dtype=np.float32)) for m in self._maps + self._mapped_flips]
            self._all = torch.cat(parts) if parts else torch.zeros(0, *self.shape)
        return self._all

    @property
    def labels(self) -> torch.Tensor:
        """Every item's label ``[len]`` int64."""
        return self._labels.repeat(2) if self.flip else self._labels

    @property
    def attributes(self) -> torch.Tensor | None:
        if self._attributes is None:
            return None
        return torch.cat([self._attributes] * 2) if self.flip else self._attributes

    def __repr__(self) -> str:
        flips = " with flips" if self.flip else ""
        return f"LatentDataset({self.path.name}: {len(self)} latents of shape {list(self.shape)}{flips})"


def _plan(ae: Autoencoder, dataset: Dataset, shard_size: int, dtype: torch.dtype, flip: bool,
          keep: tuple[str, ...] = ()) -> dict:
    plan = {"format": FORMAT, "kind": KIND + "-plan", "autoencoder": fingerprint(ae), "dataset": repr(dataset),
            "n": len(dataset), "shard_size": shard_size, "dtype": DTYPES[dtype][0], "flip": flip}
    return {**plan, "keep": list(keep)} if keep else plan  # caches made before ``keep`` existed stay valid


@torch.no_grad()
def encode_dataset(ae: Autoencoder, dataset: Dataset, path: str | Path, batch_size: int = 64,
                   device: str | torch.device | None = None, progress: bool = True, shard_size: int = SHARD_SIZE,
                   dtype: torch.dtype = torch.float32, flip: bool = False, num_workers: int = 0,
                   resume: bool = True, keep: tuple[str, ...] = ()) -> LatentDataset:
    """Encode every image of ``dataset`` (items with "image" ``[3, H, W]`` in [-1, 1], and optionally "label",
    "caption", "attributes", "path") with ``ae.to_latent`` into the cache folder ``path``; return it.

    ``shard_size`` items per shard; ``dtype`` float32 or float16 (half the disk, about 1e-3 relative rounding);
    ``flip`` also encodes every image mirrored; ``num_workers`` DataLoader processes decode images in parallel (image
    folders). With ``resume`` (the default) shards already written by the same job (same autoencoder, dataset and
    settings) are kept and encoding goes on after them; another job's folder is cleared first. ``keep``: names of
    other tensors of every item to store beside its latent (floats in ``dtype``, integers as int64); the dataset's
    items return them under the same names.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be an int >= 1, got {shard_size!r}")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: nothing to encode")
    path = Path(path)
    keep = tuple(keep)
    if flip and keep:
        raise ValueError(f"flip=True mirrors the images but not the kept tensors {keep}: encode without flips")
    plan = _plan(ae, dataset, shard_size, dtype, flip, keep)
    if path.exists() and not (resume and path.is_dir() and (path / "plan.json").is_file()
                              and _read_json(path / "plan.json") == plan):
        if path.is_dir():
            shutil.rmtree(path)  # another job's cache (or a finished one being remade): start afresh
        else:
            path.unlink()  # an old single-file cache
    path.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)  # half-written files of a killed run
    (path / "index.json").unlink(missing_ok=True)
    _write_json(path / "plan.json", plan)

    device = torch.device(device) if device is not None else next(ae.parameters()).device
    was_training, ae = ae.training, ae.to(device).eval()
    n_shards = -(-len(dataset) // shard_size)
    shards = []
    bar = tqdm(total=len(dataset), desc="encode", disable=not progress, dynamic_ncols=True)
    for k in range(n_shards):
        name, part = _shard_name(k), range(k * shard_size, min(len(dataset), (k + 1) * shard_size))
        shards.append(name)
        if (path / f"{name}.safetensors").is_file():  # written by the killed run: keep it
            bar.update(len(part))
            continue
        latents, flipped, labels, captions, paths, attributes = [], [], [], [], [], []
        kept: dict[str, list[torch.Tensor]] = {key: [] for key in keep}
        loader = DataLoader(Subset(dataset, list(part)), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers)
        for batch in loader:
            x = batch["image"].to(device)
            latents.append(ae.to_latent(x).to(dtype).cpu())
            if flip:
                flipped.append(ae.to_latent(x.flip(-1)).to(dtype).cpu())
            b = len(x)
            labels.append(torch.as_tensor(batch.get("label", torch.zeros(b, dtype=torch.long))).long())
            captions += list(batch.get("caption", [""] * b))
            paths += list(batch.get("path", []))
            if "attributes" in batch:
                attributes.append(batch["attributes"])
            for key in keep:
                if key not in batch:
                    raise ValueError(f"keep names {key!r}, which the dataset's items do not have (they have "
                                     f"{sorted(batch)})")
                v = torch.as_tensor(batch[key])
                kept[key].append(v.to(dtype) if v.is_floating_point() else v.long())
            bar.update(b)
        tensors = {"latents": torch.cat(latents), "labels": torch.cat(labels)}
        if flip:
            tensors["flipped"] = torch.cat(flipped)
        if attributes:
            tensors["attributes"] = torch.cat(attributes)
        tensors.update({f"keep.{key}": torch.cat(v) for key, v in kept.items()})
        # captions first, tensors last: a shard's .safetensors exists only when all of it is on disk
        _write_json(path / f"{name}.json", {"captions": captions, "paths": paths})
        with atomic_path(path / f"{name}.safetensors") as tmp:
            save_file({key: v.contiguous() for key, v in tensors.items()}, str(tmp))
    bar.close()
    ae.train(was_training)
    shape = list(_mapped(path / f"{shards[0]}.safetensors", "latents").shape[1:])
    info = {"scale_factor": float(ae.scale_factor), "autoencoder": plan["autoencoder"], "dataset": plan["dataset"],
            "n": len(dataset)}
    _write_json(path / "index.json", {"format": FORMAT, "kind": KIND, "info": info, "shards": shards,
                                      "shape": shape, "dtype": plan["dtype"], "flip": flip, "keep": list(keep)})
    return LatentDataset(path)


def load_or_encode(ae: Autoencoder, dataset: Dataset, path: str | Path, **kwargs) -> LatentDataset:
    """Reuse the cache folder at ``path`` if it was made from this autoencoder and dataset (and settings); finish it
    if its encoding was interrupted; else encode. ``kwargs`` as :func:`encode_dataset`. In a distributed run process
    0 encodes and the others then load what it wrote."""
    with distributed.main_first():
        return _load_or_encode(ae, dataset, Path(path), **kwargs)


def _load_or_encode(ae: Autoencoder, dataset: Dataset, path: Path, **kwargs) -> LatentDataset:
    if (path / "index.json").is_file():
        try:
            cached = LatentDataset(path)
            plan = _read_json(path / "plan.json")
            want = _plan(ae, dataset, kwargs.get("shard_size", SHARD_SIZE), kwargs.get("dtype", torch.float32),
                         kwargs.get("flip", False), tuple(kwargs.get("keep", ())))
            if plan == want:
                return cached
        except CheckpointError:
            pass  # damaged: encode again
    return encode_dataset(ae, dataset, path, **kwargs)
