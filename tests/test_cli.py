import pytest

from tinyldm.autoencoder import Autoencoder
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


def test_unknown_preset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown autoencoder preset"):
        main(["train-autoencoder", "--preset", "huge", "--run-dir", str(tmp_path), "--out", str(tmp_path / "x")])
