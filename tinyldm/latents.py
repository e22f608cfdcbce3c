"""Encode a dataset once, keep the latents on disk, train diffusion on them.

The autoencoder is frozen while the diffusion model trains, so encoding every image on every
step would repeat the same work thousands of times. The course encodes once (the posterior mean,
times the scale factor, exactly what :meth:`Autoencoder.to_latent` returns) and stores the latents
with each item's label, caption and attributes in one safetensors file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .autoencoder import Autoencoder
from .checkpoint import CheckpointError, fingerprint, load_model_file, save_model_file

KIND = "latents"


class LatentDataset(Dataset):
    """Cached latents. Item i: ``{"latent": [c, h, w], "label": int, "caption": str,
    "attributes": [k, 3]}`` (attributes only when the source dataset had them)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        tensors, self.info, extra = load_model_file(self.path, KIND)
        self.latents = tensors["latents"]
        self.labels = tensors["labels"]
        self.attributes = tensors.get("attributes")
        self.captions: list[str] = extra["captions"]

    @property
    def scale_factor(self) -> float:
        return self.info["scale_factor"]

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict:
        item = {"latent": self.latents[i], "label": int(self.labels[i]), "caption": self.captions[i]}
        if self.attributes is not None:
            item["attributes"] = self.attributes[i]
        return item

    def __repr__(self) -> str:
        return f"LatentDataset({self.path.name}: {len(self)} latents of shape {list(self.latents.shape[1:])})"


@torch.no_grad()
def encode_dataset(ae: Autoencoder, dataset: Dataset, path: str | Path, batch_size: int = 64,
                   device: str | torch.device | None = None, progress: bool = True) -> LatentDataset:
    """Encode every image of ``dataset`` (items with "image", and optionally "label", "caption",
    "attributes") with ``ae.to_latent`` and write them to ``path``. Returns the cached dataset."""
    device = torch.device(device) if device is not None else next(ae.parameters()).device
    was_training, ae = ae.training, ae.to(device).eval()
    latents, labels, captions, attributes = [], [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="encode", disable=not progress):
        latents.append(ae.to_latent(batch["image"].to(device)).cpu())
        labels.append(torch.as_tensor(batch.get("label", torch.zeros(len(batch["image"]), dtype=torch.long))))
        captions += list(batch.get("caption", [""] * len(batch["image"])))
        if "attributes" in batch:
            attributes.append(batch["attributes"])
    ae.train(was_training)
    tensors = {"latents": torch.cat(latents), "labels": torch.cat(labels).long()}
    if attributes:
        tensors["attributes"] = torch.cat(attributes)
    info = {"scale_factor": float(ae.scale_factor), "autoencoder": fingerprint(ae), "dataset": repr(dataset),
            "n": len(tensors["latents"])}
    save_model_file(path, KIND, info, tensors, extra={"captions": captions})
    return LatentDataset(path)


def load_or_encode(ae: Autoencoder, dataset: Dataset, path: str | Path, **kwargs) -> LatentDataset:
    """Reuse the cache at ``path`` if it was made from this autoencoder and dataset; else encode."""
    path = Path(path)
    if path.exists():
        try:
            cached = LatentDataset(path)
            if cached.info["autoencoder"] == fingerprint(ae) and cached.info["dataset"] == repr(dataset):
                return cached
        except CheckpointError:
            pass  # not a latent cache (or a damaged one): encode again and replace it
    return encode_dataset(ae, dataset, path, **kwargs)
