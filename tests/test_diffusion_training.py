"""Algorithm 1 (EpsLoss) in the trainer, and the course's diffusion pipeline end to end at tiny size."""
import pytest
import torch

from tinyldm.autoencoder import Autoencoder, AutoencoderConfig
from tinyldm.conditioning import LabelCondition
from tinyldm.data import SIZES, UPRIGHT_ANGLES, Scenes
from tinyldm.pipeline import generate
from tinyldm.recipes import CONDITIONS, course_database, course_latents, course_scenes, train_diffusion, unet_needs
from tinyldm.retrieval import SceneImageEncoder
from tinyldm.sample import DDIM, sample
from tinyldm.schedule import NoiseSchedule, ScheduleConfig
from tinyldm.text import SceneCLIP, SceneCLIPConfig
from tinyldm.train import EpsLoss, TrainConfig, Trainer
from tinyldm.unet import PRESETS, UNet, UNetConfig

from helpers import perturbed


class Latents(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"latent": self.x[i]}


def test_eps_loss_is_algorithm_1_by_hand():
    schedule = NoiseSchedule()
    model = perturbed(UNet(UNetConfig.tiny()), scale=0.05)  # leave the zero init, so the prediction matters
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
    monkeypatch.setattr("tinyldm.recipes.BUILD_DIR", tmp_path)
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
    # the course's scenes by default (one large upright object), recorded in the file
    assert loaded.info["scenes"] == repr(course_scenes(8)) and "sizes=('large',), upright=True" in loaded.info["scenes"]


def test_course_scenes_are_large_and_upright_and_other_scenes_can_be_asked_for(tmp_path, monkeypatch):
    monkeypatch.setattr("tinyldm.recipes.BUILD_DIR", tmp_path)
    scenes = course_scenes(32, seed=1)
    assert all(o.size == "large" and o.angle == UPRIGHT_ANGLES[o.shape] for i in range(32) for o in scenes.objects(i)[0])
    ae = Autoencoder(AutoencoderConfig.tiny())
    every = course_latents(ae, 8, size=32, sizes=SIZES, upright=False)
    assert every.info["dataset"] == repr(Scenes(size=32, length=8, seed=0))
    assert course_latents(ae, 8, size=32).path != every.path  # separate caches, never mixed up


class LabelledLatents(Latents):
    def __init__(self, x, y):
        super().__init__(x)
        self.y = y

    def __getitem__(self, i):
        return {"latent": self.x[i], "label": int(self.y[i])}


def _conditional_trainer(out_dir, steps):
    torch.manual_seed(0)
    data = LabelledLatents(torch.randn(12, 4, 8, 8), torch.arange(12) % 3)
    model = UNet(UNetConfig.tiny(num_classes=3))
    return Trainer(model, EpsLoss(condition=LabelCondition(3, p_uncond=0.3)), data,
                   TrainConfig(steps=steps, batch_size=4, lr=3e-3, warmup_steps=2, ckpt_every=3, progress=False),
                   out_dir=out_dir, resume=True, device="cpu")


def test_diffusion_resume_equals_uninterrupted(tmp_path):
    # Algorithm 1 with label dropout: t, eps and the dropped labels of step k are functions of (seed, k)
    full = _conditional_trainer(tmp_path / "full", 6)
    full.fit()
    first = _conditional_trainer(tmp_path / "cut", 6)
    first.fit(steps=3)  # killed after the checkpoint at step 3
    resumed = _conditional_trainer(tmp_path / "cut", 6)
    assert resumed.step == 3
    resumed.fit()
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_conditional_eps_loss_passes_dropped_labels():
    seen = []

    def model(x_t, t, y):
        seen.append(y)
        return torch.zeros_like(x_t)

    batch = {"latent": torch.randn(1000, 1, 2, 2), "label": torch.zeros(1000, dtype=torch.long)}
    EpsLoss(condition=LabelCondition(5, p_uncond=0.25))(model, batch, torch.Generator().manual_seed(0))
    (y,) = seen
    assert set(y.tolist()) == {0, 5}  # the label, or the null label 5
    assert (y == 5).float().mean().item() == pytest.approx(0.25, abs=0.04)


def test_train_diffusion_class_and_text_tiny(tmp_path, monkeypatch):
    monkeypatch.setattr("tinyldm.recipes.BUILD_DIR", tmp_path)
    ae = Autoencoder(AutoencoderConfig.tiny())
    tc = TrainConfig(steps=2, batch_size=4, warmup_steps=1, progress=False)
    model, _ = train_diffusion(ae, preset="tiny", n_images=8, train_config=tc, device="cpu", condition="class",
                               out=tmp_path / "class.safetensors", run_dir=tmp_path / "c", sample_every=2)
    assert model.config.num_classes == 24 and (tmp_path / "c" / "samples" / "step_0000002.png").exists()
    encoder = SceneCLIP(SceneCLIPConfig(width=16, layers=1, heads=2, embed_dim=8, image_widths=(8,)))
    model, trainer = train_diffusion(ae, preset="tiny", n_images=8, train_config=tc, device="cpu", condition="text",
                                     text_encoder=encoder, hold_out=[0, 1, 2, 3, 4, 5])
    assert model.config.context_dim == 16
    assert all(trainer.dataset[i]["label"] >= 6 for i in range(len(trainer.dataset)))
    with pytest.raises(ValueError, match="condition one of 'none', 'class', 'text', 'retrieval', got 'labels'"):
        train_diffusion(ae, preset="tiny", n_images=8, train_config=tc, condition="labels")


def test_generate_guides_decodes_and_is_seeded():
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig.tiny())
    model = perturbed(UNet(UNetConfig.tiny(num_classes=3, eps_skip=True)), scale=0.05).eval()  # output depends on y
    cond = LabelCondition(3)
    labels = torch.tensor([0, 1, 2, 0, 1])
    schedule = model.schedule
    a = generate(model, ae, cond.given(labels), cond.null(5), s=3.0, sampler=DDIM(schedule, steps=3),
                 batch_size=2, latent_shape=(4, 8, 8))
    b = generate(model, ae, cond.given(labels), cond.null(5), s=3.0, sampler=DDIM(schedule, steps=3),
                 batch_size=2, latent_shape=(4, 8, 8))
    assert a.shape == (5, 3, 32, 32) and torch.equal(a, b)
    # by hand: chunks of 2 with noise from seed + chunk, eps_null + (1 + s)(eps_y - eps_null) (diffusers' form)
    by_hand = []
    for k, part in enumerate(labels.split(2)):
        sampler = DDIM(schedule, steps=3)
        x = sampler.init_noise((len(part), 4, 8, 8), generator=torch.Generator().manual_seed(k))
        for t in sampler.timesteps:
            tt = torch.full((len(part),), t)
            eps_y, eps_null = model(x, tt, part), model(x, tt, torch.full_like(part, 3))
            x = sampler.step(x, t, eps_null + 4.0 * (eps_y - eps_null))
        by_hand.append(ae.from_latent(x))
    torch.testing.assert_close(a, torch.cat(by_hand), rtol=1e-4, atol=1e-5)
    swapped = generate(model, ae, cond.null(5), cond.given(labels), s=3.0, sampler=DDIM(schedule, steps=3),
                       batch_size=2, latent_shape=(4, 8, 8))
    assert not torch.allclose(a, swapped, atol=1e-3)
    # the default sampler is DDIM 20 on the model's own training schedule
    cosine = perturbed(UNet(UNetConfig.tiny(schedule=ScheduleConfig.cosine().to_dict())), scale=0.05).eval()
    default = generate(cosine, ae, n=2, latent_shape=(4, 8, 8))
    explicit = generate(cosine, ae, n=2, latent_shape=(4, 8, 8), sampler=DDIM(NoiseSchedule(ScheduleConfig.cosine()),
                                                                             steps=20))
    assert torch.equal(default, explicit)
    with pytest.raises(ValueError, match="give n"):
        generate(model, ae)
    with pytest.raises(ValueError, match="needs null"):
        generate(model, ae, cond.given(labels), s=3.0)


def test_min_snr_weighting_by_hand():
    schedule = NoiseSchedule()
    model = perturbed(UNet(UNetConfig.tiny()), scale=0.05)
    x_0 = torch.randn(6, 4, 8, 8)
    loss, _ = EpsLoss(schedule, snr_gamma=5.0)(model, {"latent": x_0}, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    t = schedule.sample_t(6, generator=g)
    eps = torch.randn(x_0.shape, generator=g)
    with torch.no_grad():
        per_item = ((eps - model(schedule.q_sample(x_0, t, eps), t)) ** 2).mean(dim=(1, 2, 3))
    snr = schedule.alpha_bar[t] / (1 - schedule.alpha_bar[t])
    expected = (torch.minimum(snr, torch.tensor(5.0)) / snr * per_item).mean()
    torch.testing.assert_close(loss.detach(), expected)
    with pytest.raises(ValueError, match="snr_gamma must be None or > 0"):
        EpsLoss(schedule, snr_gamma=0)


def test_x0_weighting_by_hand_is_the_x0_error_where_noise_dominates():
    schedule = NoiseSchedule()
    model = perturbed(UNet(UNetConfig.tiny()), scale=0.05)
    x_0 = torch.randn(16, 4, 8, 8)
    loss, _ = EpsLoss(schedule, x0_cap=20.0)(model, {"latent": x_0}, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = schedule.sample_t(16, generator=g)
    eps = torch.randn(x_0.shape, generator=g)
    x_t = schedule.q_sample(x_0, t, eps)
    with torch.no_grad():
        eps_hat = model(x_t, t)
    per_item = ((eps - eps_hat) ** 2).mean(dim=(1, 2, 3))
    ab = schedule.alpha_bar[t]
    x0_error = ((x_0 - (x_t - (1 - ab).sqrt().view(-1, 1, 1, 1) * eps_hat) / ab.sqrt().view(-1, 1, 1, 1)) ** 2
                ).mean(dim=(1, 2, 3))  # the x_0 that eps_hat implies, against the true one
    weight = ((1 - ab) / ab).clamp(1, 20)
    torch.testing.assert_close(loss.detach(), (weight * per_item).mean())
    between = (weight > 1) & (weight < 20)  # there the weighted eps error is exactly the x_0 error
    assert between.any()
    torch.testing.assert_close(weight[between] * per_item[between], x0_error[between], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="give one of them"):
        EpsLoss(schedule, snr_gamma=5.0, x0_cap=20.0)
    with pytest.raises(ValueError, match="x0_cap must be None or >= 1"):
        EpsLoss(schedule, x0_cap=0.5)


def test_train_diffusion_goes_on_from_a_saved_unet(tmp_path, monkeypatch):
    monkeypatch.setattr("tinyldm.recipes.BUILD_DIR", tmp_path)
    ae = Autoencoder(AutoencoderConfig.tiny())
    tc = TrainConfig(steps=2, batch_size=4, warmup_steps=1, progress=False, ema_decay=None)
    first, _ = train_diffusion(ae, preset="tiny", n_images=8, train_config=tc, device="cpu", condition="class",
                               out=tmp_path / "first.safetensors")
    # init with "course" as the preset: the network comes from the file, not the preset
    more, trainer = train_diffusion(ae, preset="course", n_images=8, train_config=tc, device="cpu",
                                    condition="class", init=tmp_path / "first.safetensors")
    assert more.config == first.config
    before = trainer.history[0]["loss"]
    fresh, fresh_trainer = train_diffusion(ae, preset="tiny", n_images=8, train_config=tc, device="cpu",
                                           condition="class")
    assert before != fresh_trainer.history[0]["loss"]  # the same batch, but from the trained weights
    assert any(not torch.equal(a, b) for a, b in zip(more.state_dict().values(), first.state_dict().values()))
    with pytest.raises(ValueError, match="num_classes is 24 there, this run needs None"):
        train_diffusion(ae, preset="tiny", n_images=8, train_config=tc, condition="none",
                        init=tmp_path / "first.safetensors")


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("condition", CONDITIONS)
def test_every_preset_takes_every_condition(preset, condition):
    """The recipe tells any preset what a run needs (sd_v1 brings CLIP's 768-wide cross-attention, which an
    unconditional or class run must drop). Checked on the meta device: shapes and code paths, no memory."""
    context_dim = 16 if condition in ("text", "retrieval") else None
    cfg = UNetConfig.preset(preset, **unet_needs(condition, 4, ScheduleConfig.ddpm(), context_dim))
    b, side = 2, 8 * cfg.downsample
    inputs = {"none": {}, "class": {"y": torch.tensor([0, 24])},
              "text": {"context": torch.zeros(b, 5, 16), "context_mask": torch.ones(b, 5, dtype=torch.bool)},
              "retrieval": {"context": torch.zeros(b, 4, 16)}}  # k = 4 neighbour embeddings, no mask
    with torch.device("meta"):
        model = UNet(cfg)
        kwargs = {k: v.to("meta") for k, v in inputs[condition].items()}
        eps = model(torch.zeros(b, 4, side, side), torch.tensor([1, 1000]), **kwargs)
    assert eps.shape == (b, 4, side, side)
    assert (cfg.num_classes is not None) == (condition == "class")
    assert cfg.context_dim == context_dim


def test_train_diffusion_runs_every_small_preset_with_every_condition(tmp_path, monkeypatch):
    monkeypatch.setattr("tinyldm.recipes.BUILD_DIR", tmp_path)
    ae = Autoencoder(AutoencoderConfig.tiny())
    encoder = SceneCLIP(SceneCLIPConfig(width=16, layers=1, heads=2, embed_dim=8, image_widths=(8,)))
    image_encoder = SceneImageEncoder(encoder)
    database = course_database(image_encoder, n=16, progress=False)
    tc = TrainConfig(steps=1, batch_size=2, warmup_steps=1, progress=False)
    for preset in ("tiny", "course"):
        for condition in CONDITIONS:
            model, trainer = train_diffusion(ae, preset=preset, n_images=4, train_config=tc, device="cpu",
                                             condition=condition, text_encoder=encoder, image_encoder=image_encoder,
                                             database=database)
            assert trainer.step == 1 and model.config.eps_skip
