import dataclasses
import json

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
    from tinyldm.metrics import Judge, JudgeConfig
    Judge(JudgeConfig(widths=(4, 8, 8, 8), feature_dim=8)).save(tmp_path / "judge.safetensors")
    assert main(["evaluate", str(tmp_path / "unet.safetensors"), "--autoencoder", str(tmp_path / "ae.safetensors"),
                 "--judge", str(tmp_path / "judge.safetensors"), "--text-encoder", str(text), "--per-class", "1",
                 "--steps", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 24 and result["held_out"]["n"] == 2  # one prompt each for the held-out labels 0 and 1


def _weights(path):
    from safetensors.torch import load_file
    return load_file(str(path))


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_same_command_with_the_same_seed_gives_the_same_weights(tmp_path, monkeypatch):
    """--seed fixes a fresh run (initial weights included), not only a resumed one; another seed differs."""
    monkeypatch.setattr("tinyldm.recipes.BUILD_DIR", tmp_path)
    ae_args = ["train-autoencoder", "--preset", "tiny", "--size", "32", "--crop", "16", "--whole-image-steps", "1",
               "--batch-size", "4", "--n-images", "16", "--steps", "3"]
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert main(ae_args + ["--seed", seed, "--run-dir", str(tmp_path / f"ae-{name}")]) == 0
    a, b, c = (_weights(tmp_path / f"ae-{name}" / "model.safetensors") for name in "abc")
    assert _same(a, b) and not _same(a, c)
    unet_args = ["train-diffusion", "--preset", "tiny", "--condition", "class", "--autoencoder",
                 str(tmp_path / "ae-a" / "model.safetensors"), "--n-images", "8", "--steps", "2", "--batch-size", "4",
                 "--sample-every", "0"]
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert main(unet_args + ["--seed", seed, "--run-dir", str(tmp_path / f"unet-{name}")]) == 0
    a, b, c = (_weights(tmp_path / f"unet-{name}" / "model.safetensors") for name in "abc")
    assert _same(a, b) and not _same(a, c)


def test_training_writes_into_its_run_folder_not_into_data(tmp_path, monkeypatch):
    from tinyldm.config import DATA_DIR
    monkeypatch.setattr("tinyldm.recipes.BUILD_DIR", tmp_path)
    shipped = {p: p.read_bytes() for p in DATA_DIR.glob("*.safetensors")}
    assert main(["train-judge", "--steps", "1", "--batch-size", "4", "--run-dir", str(tmp_path / "judge")]) == 0
    assert (tmp_path / "judge" / "model.safetensors").is_file()
    assert {p: p.read_bytes() for p in DATA_DIR.glob("*.safetensors")} == shipped


def test_a_missing_autoencoder_file_is_an_error_not_a_stand_in(tmp_path, capsys):
    code = main(["train-diffusion", "--autoencoder", str(tmp_path / "nope.safetensors"), "--steps", "1",
                 "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "--autoencoder" in err and "no such file" in err and "tinyldm train-autoencoder" in err
    assert not (tmp_path / "run").exists()
    ae = Autoencoder(AutoencoderConfig.tiny())
    ae.save(tmp_path / "ae.safetensors")
    code = main(["train-diffusion", "--condition", "text", "--autoencoder", str(tmp_path / "ae.safetensors"),
                 "--text-encoder", str(tmp_path / "none.safetensors"), "--run-dir", str(tmp_path / "run")])
    assert code == 2 and "--text-encoder" in capsys.readouterr().err


@pytest.mark.parametrize("content, expected", [
    (None, "no such file"),
    (b"\x00" * 7, "not a readable safetensors file"),
    ("truncated", "not a readable safetensors file"),
])
def test_info_on_a_bad_file_says_what_is_wrong_without_a_traceback(tmp_path, capsys, content, expected):
    path = tmp_path / "model.safetensors"
    if content == "truncated":
        Autoencoder(AutoencoderConfig.tiny()).save(path)
        path.write_bytes(path.read_bytes()[:300])
    elif content is not None:
        path.write_bytes(content)
    assert main(["info", str(path)]) == 2
    captured = capsys.readouterr()
    assert expected in captured.err and "Traceback" not in captured.err + captured.out


def test_info_on_a_foreign_safetensors_file(tmp_path, capsys):
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    assert main(["info", str(tmp_path / "other.safetensors")]) == 0
    assert "not written by tinyldm" in capsys.readouterr().out


def test_train_on_large_upright_scenes_then_evaluate(tmp_path, monkeypatch, capsys):
    """--sizes / --upright pick the training scenes (recorded in the file); evaluate samples and judges it."""
    from tinyldm.metrics import Judge, JudgeConfig
    monkeypatch.setattr("tinyldm.recipes.BUILD_DIR", tmp_path)
    ae, judge = tmp_path / "ae.safetensors", tmp_path / "judge.safetensors"
    Autoencoder(AutoencoderConfig.tiny()).save(ae)
    Judge(JudgeConfig(widths=(4, 8, 8, 8), feature_dim=8)).save(judge)
    for condition in ("class", "none"):
        out = tmp_path / f"{condition}.safetensors"
        assert main(["train-diffusion", "--preset", "tiny", "--condition", condition, "--autoencoder", str(ae),
                     "--sizes", "large", "--upright", "--n-images", "8", "--steps", "1", "--batch-size", "4",
                     "--sample-every", "0", "--run-dir", str(tmp_path / condition), "--out", str(out)]) == 0
        assert main(["info", str(out)]) == 0
        assert "sizes=('large',), upright=True" in capsys.readouterr().out
        assert main(["evaluate", str(out), "--autoencoder", str(ae), "--judge", str(judge), "--per-class", "1",
                     "--steps", "2"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["n"] == 24
        if condition == "class":
            assert 0 <= result["all"] <= result["shape"] <= 1 and 0 <= result["color"] <= 1
        else:
            assert sorted(result["shapes"]) == sorted(["circle", "square", "triangle", "star"])
            assert abs(sum(result["shapes"].values()) - 1) < 1e-3


def test_bad_sizes_flag_is_a_usage_error(tmp_path, capsys):
    assert main(["train-diffusion", "--sizes", "large,huge", "--run-dir", str(tmp_path / "run")]) == 2
    assert "expected a comma-separated list of small, large" in capsys.readouterr().err


def test_evaluate_with_another_autoencoder_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("tinyldm.recipes.BUILD_DIR", tmp_path)
    ae, other = tmp_path / "ae.safetensors", tmp_path / "other.safetensors"
    Autoencoder(AutoencoderConfig.tiny()).save(ae)
    torch.manual_seed(1)
    Autoencoder(AutoencoderConfig.tiny()).save(other)
    assert main(["train-diffusion", "--preset", "tiny", "--autoencoder", str(ae), "--n-images", "8", "--steps", "1",
                 "--batch-size", "4", "--sample-every", "0", "--run-dir", str(tmp_path / "run")]) == 0
    assert main(["evaluate", str(tmp_path / "run" / "model.safetensors"), "--autoencoder", str(other)]) == 2
    err = capsys.readouterr().err
    assert "autoencoder" in err and "--autoencoder" in err and "Traceback" not in err
