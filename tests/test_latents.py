import torch

from tinyldm.autoencoder import Autoencoder, AutoencoderConfig
from tinyldm.data import Scenes
from tinyldm.latents import LatentDataset, encode_dataset, load_or_encode


def test_encode_cache_and_reload(tmp_path):
    ae = Autoencoder(AutoencoderConfig.tiny())
    ae.scale_factor.fill_(0.5)
    data = Scenes(size=32, length=7, seed=2, max_objects=2)
    cached = encode_dataset(ae, data, tmp_path / "lat.safetensors", batch_size=3, progress=False)
    assert len(cached) == 7 and cached.latents.shape == (7, 4, 8, 8)
    item = cached[4]
    assert item["caption"] == data[4]["caption"] and item["label"] == data[4]["label"]
    torch.testing.assert_close(item["attributes"], data[4]["attributes"])
    torch.testing.assert_close(item["latent"], ae.to_latent(data[4]["image"][None])[0], rtol=1e-5, atol=1e-5)
    assert cached.scale_factor == 0.5
    # reloading from disk gives the same tensors
    again = LatentDataset(tmp_path / "lat.safetensors")
    torch.testing.assert_close(again.latents, cached.latents)


def test_load_or_encode_reuses_only_a_matching_cache(tmp_path):
    path = tmp_path / "lat.safetensors"
    ae = Autoencoder(AutoencoderConfig.tiny())
    data = Scenes(size=32, length=3)
    load_or_encode(ae, data, path, progress=False)
    stamp = path.stat().st_mtime_ns
    load_or_encode(ae, data, path, progress=False)
    assert path.stat().st_mtime_ns == stamp  # same weights, same data: reused
    with torch.no_grad():
        next(ae.parameters()).add_(1.0)
    changed = load_or_encode(ae, data, path, progress=False)
    assert path.stat().st_mtime_ns != stamp  # other weights: encoded again
    assert len(changed) == 3
    bigger = load_or_encode(ae, Scenes(size=32, length=5), path, progress=False)
    assert len(bigger) == 5
