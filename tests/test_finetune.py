"""Real data at any size from the command line, and finetuning a UNet on other data at another resolution."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tinyldm.autoencoder import Autoencoder, AutoencoderConfig
from tinyldm.cli import main
from tinyldm.recipes import freeze_parameters, image_data, train_diffusion
from tinyldm.schedule import ScheduleConfig
from tinyldm.train import TrainConfig
from tinyldm.unet import UNet, UNetConfig


@pytest.fixture
def build(tmp_path, monkeypatch):
    monkeypatch.setattr("tinyldm.recipes.BUILD_DIR", tmp_path / "build")
    return tmp_path


def photo_folder(folder, n=12, size=(48, 40)):
    """A folder of small random photos of several sizes and formats, some with captions beside them."""
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = size[0] + 8 * (i % 3), size[1]
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(sub / f"{i:05d}.{'png' if i % 3 else 'jpg'}")
        if i % 4 == 0:
            (sub / f"{i:05d}.txt").write_text(f"photo number {i}")
    return folder


def save_tiny_ae(path):
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig.tiny())
    ae.save(path)
    return ae


def test_the_cli_trains_on_an_image_folder_at_two_sizes(build, capsys):
    photos = photo_folder(build / "photos")
    save_tiny_ae(build / "ae.safetensors")
    for size in (32, 64):
        out = build / f"unet{size}.safetensors"
        assert main(["train-diffusion", "--data", str(photos), "--image-size", str(size), "--preset", "tiny",
                     "--autoencoder", str(build / "ae.safetensors"), "--steps", "2", "--batch-size", "4",
                     "--sample-every", "0", "--schedule", "cosine", "--flip", "--run-dir", str(build / f"run{size}"),
                     "--out", str(out)]) == 0
        unet = UNet.load(out)
        assert unet.info["image_size"] == size and unet.info["source"] == str(photos) and unet.info["flip"]
        assert unet.config.schedule["kind"] == "cosine"
        # 12 photos: the last tenth (one) is held out, the other 11 are trained on, each also mirrored
        assert "22 latents of shape [4, %d, %d]" % (size // 4, size // 4) in unet.info["data"]
    caches = sorted(p.name for p in (build / "build" / "latents").iterdir())
    assert len(caches) == 2 and all(c.startswith("imagefolder-") for c in caches)


def test_folder_data_splits_off_its_last_tenth_and_reads_classes_from_subfolders(build):
    photos = photo_folder(build / "photos", n=20)
    train, held = image_data(str(photos), 16, None), image_data(str(photos), 16, None, split="held_out")
    # sorted by path: a/00001 .. a/00019, b/00000 .. b/00018; the last two are held out
    assert len(train) == 18 and [held[i]["path"][-11:] for i in range(2)] == ["b/00016.png", "b/00018.jpg"]
    assert "[train split]" in repr(train) and "b/00018.jpg" in repr(train)  # the cache key names the files
    labelled = image_data(str(photos), 16, 5, labels_from_folders=True)
    assert len(labelled) == 5 and {labelled[i]["label"] for i in range(5)} == {0, 1}  # spread over both classes
    held = image_data(str(photos), 16, None, split="held_out", labels_from_folders=True)
    assert [held[i]["label"] for i in range(2)] == [0, 1]  # the last of each class
    with pytest.raises(ValueError, match="'scenes', 'faces' or a folder of images"):
        image_data(str(build / "nowhere"), 16)


def test_class_conditional_training_on_a_folder_uses_its_subfolders(build):
    ae = save_tiny_ae(build / "ae.safetensors")
    unet, _ = train_diffusion(ae, "tiny", n_images=8, data=str(photo_folder(build / "photos")), image_size=32,
                              condition="class", train_config=TrainConfig(steps=1, batch_size=4, progress=False))
    assert unet.config.num_classes == 2  # folders a and b


def test_finetune_a_checkpoint_of_another_resolution_and_data(build):
    ae = save_tiny_ae(build / "ae.safetensors")
    tc = TrainConfig(steps=2, batch_size=4, progress=False)
    base, _ = train_diffusion(ae, "tiny", n_images=8, train_config=tc, out=build / "base.safetensors")
    assert base.info["image_size"] == 64 and base.info["source"] == "scenes"
    tuned, trainer = train_diffusion(ae, init=build / "base.safetensors", n_images=8, data="faces", image_size=32,
                                     train_config=tc, freeze=["down", "time_embed"])
    assert tuned.info["image_size"] == 32 and tuned.info["source"] == "faces" and tuned.info["init"]
    before, after = base.state_dict(), tuned.state_dict()
    frozen = [k for k in before if k.startswith(("down.", "time_embed."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # frozen parts kept their weights
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("up."))
    assert not any(p.requires_grad for n, p in trainer.model.named_parameters() if n.startswith("down."))
    # the init's schedule is kept unless another is asked for, and then the run is refused
    with pytest.raises(ValueError, match="schedule"):
        train_diffusion(ae, init=build / "base.safetensors", n_images=8, train_config=tc,
                        schedule=ScheduleConfig.cosine())


def test_freeze_names_must_exist():
    unet = UNet(UNetConfig.tiny())
    with pytest.raises(ValueError, match="no parameters named 'encoder'.*conv_in"):
        freeze_parameters(unet, ["encoder"])
    freeze_parameters(unet, ["mid.0"])
    assert not unet.mid[0].conv1.weight.requires_grad and unet.mid[1].proj_in.weight.requires_grad


def test_an_image_size_the_unet_cannot_take_is_refused(build):
    ae = Autoencoder(AutoencoderConfig.tiny())
    with pytest.raises(ValueError, match="multiples of 2"):  # 36 px at f = 4: 9 x 9 latents, tiny halves once
        train_diffusion(ae, "tiny", n_images=4, data="faces", image_size=36,
                        train_config=TrainConfig(steps=1, batch_size=2, progress=False))


def test_the_cli_says_what_data_it_takes(build, capsys):
    save_tiny_ae(build / "ae.safetensors")
    assert main(["train-diffusion", "--data", "ffhq-not-here", "--autoencoder", str(build / "ae.safetensors"),
                 "--run-dir", str(build / "run")]) == 2
    assert "expected 'scenes', 'faces' or a folder of images" in capsys.readouterr().err


def test_fsd_every_logs_a_curve_that_survives_a_resume(build):
    from tinyldm.metrics import Judge, JudgeConfig

    save_tiny_ae(build / "ae.safetensors")
    Judge(JudgeConfig.faces(widths=(4, 8, 8, 8), feature_dim=8)).save(build / "judge.safetensors")
    args = ["train-diffusion", "--data", "faces", "--image-size", "32", "--preset", "tiny", "--autoencoder",
            str(build / "ae.safetensors"), "--judge", str(build / "judge.safetensors"), "--fsd-every", "1",
            "--batch-size", "2", "--n-images", "8", "--sample-every", "0", "--run-dir", str(build / "run")]
    assert main(args + ["--steps", "1"]) == 0
    assert main(args + ["--steps", "2"]) == 0  # resumed at step 1
    curve = [json.loads(line) for line in (build / "run" / "fsd.jsonl").read_text().splitlines()]
    assert [c["step"] for c in curve] == [1, 2] and all(c["fsd"] >= 0 and c["n"] == 256 for c in curve)
    assert main(args[:2] + [str(build)] + args[3:] + ["--steps", "1"]) == 2  # a folder has no judge


def test_evaluate_reads_a_face_model_with_the_face_judge(build, capsys):
    from tinyldm.metrics import Judge, JudgeConfig

    save_tiny_ae(build / "ae.safetensors")
    Judge(JudgeConfig.faces(widths=(4, 8, 8, 8), feature_dim=8)).save(build / "judge.safetensors")
    for condition in ("none", "class"):
        out = build / f"{condition}.safetensors"
        assert main(["train-diffusion", "--data", "faces", "--image-size", "32", "--preset", "tiny", "--condition",
                     condition, "--autoencoder", str(build / "ae.safetensors"), "--steps", "1", "--batch-size", "2",
                     "--n-images", "4", "--sample-every", "0", "--run-dir", str(build / condition), "--out",
                     str(out)]) == 0
        capsys.readouterr()
        assert main(["evaluate", str(out), "--autoencoder", str(build / "ae.safetensors"), "--judge",
                     str(build / "judge.safetensors"), "--n", "15", "--steps", "1", "--image-size", "64"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["n"] == 15 and result["image_size"] == 64 and result["fsd"] >= 0
        # a class model is also read: the asked hair colour and mouth, 15 classes (one sample each)
        assert ("class" in result) == (condition == "class")
