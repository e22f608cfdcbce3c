import dataclasses

import pytest
import torch

from tinyldm.autoencoder import Autoencoder, AutoencoderConfig
from tinyldm.cli import main
from tinyldm.checkpoint import load_training_state


def test_train_autoencoder_then_resume_then_info(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "ae.safetensors"
    args = ["train-autoencoder", "--preset", "tiny", "--size", "32", "--crop", "16", "--batch-size", "4",
            "--n-images", "16", "--ckpt-every", "2", "--run-dir", str(run), "--out", str(out)]
    assert main(args + ["--steps", "2"]) == 0
    assert load_training_state(run / "last.pt")["step"] == 2
    assert main(args + ["--steps", "4"]) == 0  # picks the run up at step 2
    assert "resuming" in capsys.readouterr().out
    assert load_training_state(run / "last.pt")["step"] == 4
    ae = Autoencoder.load(out)
    assert ae.config.base_channels == 8 and float(ae.scale_factor) > 0
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kind='autoencoder'" in printed and '"psnr"' in printed


def test_fine_tune_an_autoencoder_with_a_new_kl_weight(tmp_path):
    start, out = tmp_path / "start.safetensors", tmp_path / "ae.safetensors"
    first = Autoencoder(AutoencoderConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                          mid_attention=False, kl_weight=1e-6))
    first.save(start)
    assert main(["train-autoencoder", "--init", str(start), "--kl-weight", "0.5", "--size", "32", "--crop", "0",
                 "--batch-size", "4", "--n-images", "8", "--steps", "2", "--run-dir", str(tmp_path / "run"),
                 "--out", str(out)]) == 0
    ae = Autoencoder.load(out)
    # the architecture comes from --init (f = 2 here, unlike any preset); only the KL weight changed
    assert ae.config == dataclasses.replace(first.config, kl_weight=0.5)
    changed = [k for k, v in ae.state_dict().items() if k != "scale_factor" and not torch.equal(v, first.state_dict()[k])]
    assert changed, "fine-tuning left every weight as it was"


def test_unknown_preset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown autoencoder preset"):
        main(["train-autoencoder", "--preset", "huge", "--run-dir", str(tmp_path), "--out", str(tmp_path / "x")])


def test_train_text_encoder_then_text_diffusion(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("tinyldm.recipes.BUILD_DIR", tmp_path)
    text = tmp_path / "text.safetensors"
    assert main(["train-text-encoder", "--steps", "2", "--batch-size", "4", "--out", str(text)]) == 0
    assert "zero-shot accuracy" in capsys.readouterr().out
    ae = Autoencoder(AutoencoderConfig.tiny())
    ae.save(tmp_path / "ae.safetensors")
    assert main(["train-diffusion", "--preset", "tiny", "--condition", "text", "--text-encoder", str(text),
                 "--autoencoder", str(tmp_path / "ae.safetensors"), "--hold-out", "0,1", "--n-images", "8",
                 "--steps", "2", "--batch-size", "4", "--sample-every", "0", "--run-dir", str(tmp_path / "run"),
                 "--out", str(tmp_path / "unet.safetensors")]) == 0
    assert main(["info", str(tmp_path / "unet.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert '"condition": "text"' in printed and '"hold_out"' in printed and '"context_dim": 128' in printed
