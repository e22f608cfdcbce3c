"""Algorithm 1 (EpsLoss) in the trainer, and the course's diffusion pipeline end to end at tiny size."""
import pytest
import torch

from tinyldm.autoencoder import Autoencoder, AutoencoderConfig
from tinyldm.data import Scenes
from tinyldm.pretrained import train_diffusion
from tinyldm.sample import DDIM, sample
from tinyldm.schedule import NoiseSchedule
from tinyldm.train import EpsLoss, TrainConfig, Trainer
from tinyldm.unet import UNet, UNetConfig


class Latents(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"latent": self.x[i]}


def test_eps_loss_is_algorithm_1_by_hand():
    schedule = NoiseSchedule()
    torch.manual_seed(0)
    model = UNet(UNetConfig.tiny())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # leave the zero init, so the prediction matters
    x_0 = torch.randn(3, 4, 8, 8)
    loss, _ = EpsLoss(schedule)(model, {"latent": x_0}, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # replay the same draws, in the same order
    t = schedule.sample_t(3, generator=g)
    eps = torch.randn(x_0.shape, generator=g)
    x_t = schedule.alpha_bar[t].sqrt().view(3, 1, 1, 1) * x_0 + (1 - schedule.alpha_bar[t]).sqrt().view(3, 1, 1, 1) * eps
    expected = ((eps - model(x_t, t)) ** 2).mean()
    torch.testing.assert_close(loss, expected)


def test_zero_initialised_unet_starts_at_loss_one():
    # eps_theta = 0 at init, so the loss is E[eps^2] = 1: a quick check that nothing is scaled wrongly
    loss, _ = EpsLoss()(UNet(UNetConfig.tiny()), {"latent": torch.randn(64, 4, 8, 8)}, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(1.0, abs=0.05)


def test_overfit_one_batch():
    torch.manual_seed(0)
    data = Latents(torch.randn(4, 4, 8, 8))
    trainer = Trainer(UNet(UNetConfig.tiny()), EpsLoss(), data,
                      TrainConfig(steps=200, batch_size=4, lr=3e-3, warmup_steps=10, progress=False), device="cpu")
    history = trainer.fit()
    first, last = (sum(h["loss"] for h in part) / len(part) for part in (history[:10], history[-20:]))
    assert last < 0.5 * first, (first, last)


def test_train_diffusion_pipeline_tiny(tmp_path, monkeypatch):
    monkeypatch.setattr("tinyldm.pretrained.BUILD_DIR", tmp_path)
    ae = Autoencoder(AutoencoderConfig.tiny())
    tc = TrainConfig(steps=4, batch_size=4, warmup_steps=1, ckpt_every=2, progress=False)
    model, trainer = train_diffusion(ae, preset="tiny", n_images=8, train_config=tc, run_dir=tmp_path / "run",
                                     device="cpu", out=tmp_path / "unet.safetensors", sample_every=2)
    assert trainer.step == 4 and (tmp_path / "run" / "last.pt").exists()
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["step_0000002.png", "step_0000004.png"]
    loaded = UNet.load(tmp_path / "unet.safetensors")
    z = sample(loaded, DDIM(NoiseSchedule(), steps=3), (2, 4, 8, 8), generator=torch.Generator().manual_seed(0),
               progress=False)
    assert z.shape == (2, 4, 8, 8) and torch.isfinite(z).all()
    assert ae.from_latent(z).shape == (2, 3, 32, 32)
