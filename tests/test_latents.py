import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from tinyldm.autoencoder import Autoencoder, AutoencoderConfig
from tinyldm.checkpoint import CheckpointError
from tinyldm.data import DataError, ImageFolder, Scenes
from tinyldm.latents import IncompleteCache, LatentDataset, encode_dataset, load_or_encode


def tiny_ae(scale: float = 0.5) -> Autoencoder:
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig.tiny())
    ae.scale_factor.fill_(scale)
    return ae


def test_encode_cache_and_reload_across_shards(tmp_path):
    ae = tiny_ae()
    data = Scenes(size=32, length=7, seed=2, max_objects=2)
    cached = encode_dataset(ae, data, tmp_path / "lat", batch_size=2, progress=False, shard_size=3)
    assert len(list((tmp_path / "lat").glob("shard-*.safetensors"))) == 3  # 3 + 3 + 1 items
    assert len(cached) == 7 and cached.latents.shape == (7, 4, 8, 8) and cached.shape == (4, 8, 8)
    for i in (0, 3, 4, 6, -1):
        item, want = cached[i], data[i % 7]
        assert item["caption"] == want["caption"] and item["label"] == want["label"]
        torch.testing.assert_close(item["attributes"], want["attributes"])
        torch.testing.assert_close(item["latent"], ae.to_latent(want["image"][None])[0], rtol=1e-5, atol=1e-5)
    assert cached.scale_factor == 0.5 and cached.labels.tolist() == [data[i]["label"] for i in range(7)]
    again = LatentDataset(tmp_path / "lat")  # reloading from disk gives the same tensors
    torch.testing.assert_close(again.latents, cached.latents)
    with pytest.raises(IndexError):
        again[7]


def test_items_are_memory_mapped_not_loaded(tmp_path):
    cached = encode_dataset(tiny_ae(), Scenes(size=32, length=4), tmp_path / "lat", progress=False)
    assert all(isinstance(m, np.memmap) for m in cached._maps)
    assert cached._all is None  # indexing items never reads the whole cache
    cached[2]
    assert cached._all is None
    copy = pickle.loads(pickle.dumps(cached))  # as a spawned DataLoader worker gets it: the maps reopened
    assert all(isinstance(m, np.memmap) for m in copy._maps) and len(pickle.dumps(cached)) < 10_000
    torch.testing.assert_close(copy[3]["latent"], cached[3]["latent"])


def test_float16_cache_halves_the_disk(tmp_path):
    ae, data = tiny_ae(), Scenes(size=32, length=6)
    full = encode_dataset(ae, data, tmp_path / "f32", progress=False)
    half = encode_dataset(ae, data, tmp_path / "f16", progress=False, dtype=torch.float16)
    size = {p.name: p.stat().st_size for p in (tmp_path / "f32/shard-00000.safetensors",)}
    assert (tmp_path / "f16/shard-00000.safetensors").stat().st_size < 0.7 * size["shard-00000.safetensors"]
    assert half[3]["latent"].dtype == torch.float32  # stored in float16, read as float32
    torch.testing.assert_close(half.latents, full.latents, rtol=2e-3, atol=2e-3)


def test_flips_double_the_items_with_the_mirrored_images_latents(tmp_path):
    ae, data = tiny_ae(), Scenes(size=32, length=3, seed=4)
    cached = encode_dataset(ae, data, tmp_path / "lat", progress=False, flip=True, shard_size=2)
    assert len(cached) == 6 and len(cached.labels) == 6 and cached.latents.shape[0] == 6
    mirrored = ae.to_latent(data[1]["image"][None].flip(-1))[0]
    torch.testing.assert_close(cached[4]["latent"], mirrored, rtol=1e-5, atol=1e-5)
    assert cached[4]["label"] == data[1]["label"] and cached[4]["caption"] == data[1]["caption"]
    assert not torch.allclose(cached[4]["latent"], cached[1]["latent"].flip(-1))  # why both are encoded


class Failing(Scenes):
    """Scenes whose item ``fail_at`` raises (a run killed while encoding), counting the items read."""

    def __init__(self, *args, fail_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_at, self.read = fail_at, []

    def __getitem__(self, i):
        if i == self.fail_at:
            raise KeyboardInterrupt
        self.read.append(i)
        return super().__getitem__(i)


def test_a_killed_encoding_is_never_read_as_complete_and_resumes_where_it_stopped(tmp_path):
    ae, path = tiny_ae(), tmp_path / "lat"
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(ae, Failing(size=32, length=7, fail_at=5), path, batch_size=2, progress=False, shard_size=2)
    assert sorted(p.name for p in path.glob("shard-*.safetensors")) == ["shard-00000.safetensors",
                                                                       "shard-00001.safetensors"]
    with pytest.raises(IncompleteCache, match="did not finish"):
        LatentDataset(path)
    resumed_data = Failing(size=32, length=7)  # the same dataset (same repr), now readable to the end
    resumed = load_or_encode(ae, resumed_data, path, batch_size=2, progress=False, shard_size=2)
    assert min(resumed_data.read) == 4  # the two finished shards (items 0..3) were kept
    fresh = encode_dataset(ae, Scenes(size=32, length=7), tmp_path / "fresh", batch_size=2, progress=False,
                           shard_size=2)
    torch.testing.assert_close(resumed.latents, fresh.latents)
    assert resumed.captions == fresh.captions


def test_load_or_encode_reuses_only_a_matching_cache(tmp_path):
    path = tmp_path / "lat"
    ae = tiny_ae()
    data = Scenes(size=32, length=3)
    load_or_encode(ae, data, path, progress=False)
    stamp = (path / "index.json").stat().st_mtime_ns
    load_or_encode(ae, data, path, progress=False)
    assert (path / "index.json").stat().st_mtime_ns == stamp  # same weights, same data: reused
    with torch.no_grad():
        next(ae.parameters()).add_(1.0)
    changed = load_or_encode(ae, data, path, progress=False)
    assert (path / "index.json").stat().st_mtime_ns != stamp  # other weights: encoded again
    assert len(changed) == 3
    assert len(load_or_encode(ae, Scenes(size=32, length=5), path, progress=False)) == 5
    assert len(load_or_encode(ae, Scenes(size=32, length=5), path, progress=False, flip=True)) == 10


def test_a_file_or_an_empty_folder_is_not_a_cache(tmp_path):
    (tmp_path / "lat.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file; a latent cache is a folder"):
        LatentDataset(tmp_path / "lat.safetensors")
    with pytest.raises(IncompleteCache):
        LatentDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="dtype must be"):
        encode_dataset(tiny_ae(), Scenes(size=32, length=2), tmp_path / "x", dtype=torch.bfloat16)


def _write_images(folder, names, size=(40, 30)):
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        pixels = np.full((size[1], size[0], 3), 40 * i, np.uint8)
        Image.fromarray(pixels).save(folder / name)


def test_image_folder_reads_captions_beside_images_and_labels_from_subfolders(tmp_path):
    _write_images(tmp_path, ["cats/a.png", "cats/b.jpg", "dogs/c.png"])
    (tmp_path / "cats/a.txt").write_text("a grey cat\n")
    data = ImageFolder(tmp_path, 16, caption="a photo", labels_from_folders=True)
    assert data.classes == ["cats", "dogs"] and [data[i]["label"] for i in range(3)] == [0, 0, 1]
    assert [data[i]["caption"] for i in range(3)] == ["a grey cat", "a photo", "a photo"]
    cached = encode_dataset(tiny_ae(), data, tmp_path.parent / "folder-lat", progress=False)
    assert cached.captions == ["a grey cat", "a photo", "a photo"] and cached.labels.tolist() == [0, 0, 1]
    assert cached.shape == (4, 4, 4)
    with pytest.raises(DataError, match="every image in a subfolder"):
        _write_images(tmp_path, ["loose.png"])
        ImageFolder(tmp_path, 16, labels_from_folders=True)


def test_an_unreadable_image_fails_with_its_name(tmp_path):
    _write_images(tmp_path, ["a.png"])
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    data = ImageFolder(tmp_path, 16)
    with pytest.raises(DataError, match="broken.jpg"):
        encode_dataset(tiny_ae(), data, tmp_path.parent / "lat", progress=False)
