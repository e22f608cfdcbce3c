
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from tinyldm.autoencoder import Autoencoder, AutoencoderConfig
from tinyldm.checkpoint import (CheckpointError, atomic_path, load_model_file, load_training_state,
                                fingerprint, save_model_file, save_training_state)


def test_autoencoder_round_trip(tmp_path):
    ae = Autoencoder(AutoencoderConfig.tiny())
    ae.scale_factor.fill_(0.37)
    path = ae.save(tmp_path / "ae.safetensors", psnr=31.5)
    loaded = Autoencoder.load(path)
    assert loaded.config == ae.config
    assert float(loaded.scale_factor) == pytest.approx(0.37)
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(loaded.decode(loaded.encode(x).mode()), ae.eval().decode(ae.encode(x).mode()))
    assert load_model_file(path, "autoencoder")[2] == {"psnr": 31.5}


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not safetensors")
    with pytest.raises(CheckpointError, match="is not a safetensors checkpoint"):
        Autoencoder.load(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a tinyldm checkpoint"):
        Autoencoder.load(foreign)
    with pytest.raises(CheckpointError, match="no checkpoint file at"):
        Autoencoder.load(tmp_path / "missing.safetensors")


def test_wrong_kind_and_wrong_config(tmp_path):
    other = save_model_file(tmp_path / "lat.safetensors", "latents", {}, {"latents": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="holds a 'latents' model, expected a 'autoencoder'"):
        Autoencoder.load(other)
    # weights of the tiny model under the config of another: the mismatch is named
    tiny = Autoencoder(AutoencoderConfig.tiny())
    bad = save_model_file(tmp_path / "bad.safetensors", "autoencoder",
                          AutoencoderConfig.course().to_dict(), tiny.state_dict())
    with pytest.raises(CheckpointError, match="does not fit this model config"):
        Autoencoder.load(bad)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "state.pt"
    save_training_state(path, {"format": "tinyldm", "step": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("killed mid-write")
    assert load_training_state(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left behind


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_training_state(tmp_path / "state.pt", {"format": "tinyldm"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


class Evil:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_training_state_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "tinyldm", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="is not a tinyldm training state") as info:
        load_training_state(path)
    # say why, and never pass on torch's hint to load with weights_only=False (that would run the file's code)
    assert "could run code" in str(info.value) and "weights_only" not in str(info.value)
    assert info.value.__cause__ is None and "--restart" in str(info.value)
    plain = tmp_path / "plain.pt"
    torch.save({"step": 3}, plain)
    with pytest.raises(CheckpointError, match="is not a tinyldm training state"):
        load_training_state(plain)


def test_fingerprint_follows_the_weights_not_the_object():
    a = Autoencoder(AutoencoderConfig.tiny())
    b = Autoencoder(AutoencoderConfig.tiny())
    b.load_state_dict(a.state_dict())
    assert fingerprint(a) == fingerprint(b) and len(fingerprint(a)) == 16
    with torch.no_grad():
        next(b.parameters()).view(-1)[0].add_(1e-3)
    assert fingerprint(a) != fingerprint(b)


def test_unknown_config_fields_are_a_clear_error(tmp_path):
    ae = Autoencoder(AutoencoderConfig.tiny())
    save_model_file(tmp_path / "future.safetensors", "autoencoder", {**ae.config.to_dict(), "warp_drive": 1},
                    ae.state_dict())
    with pytest.raises(CheckpointError, match="config that this version of tinyldm cannot read.*warp_drive"):
        Autoencoder.load(tmp_path / "future.safetensors")
