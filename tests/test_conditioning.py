"""Classifier-free guidance and the conditions: the formula, the null label / empty prompt, dropout rates."""
import diffusers  # the test-only reference: a missing one fails the run
import pytest
import torch

from tinyldm.conditioning import Guided, LabelCondition, TextCondition, drop_mask, guided_eps
from tinyldm.sample import DDIM, DDPM, DPMSolverPP2M, sample
from tinyldm.schedule import NoiseSchedule, ScheduleConfig
from tinyldm.text import SceneCLIP, SceneCLIPConfig
from tinyldm.unet import UNet, UNetConfig

from helpers import perturbed


def _perturbed(model):
    return perturbed(model, scale=0.05).eval()  # leave the zero init, so outputs depend on y


@pytest.fixture(scope="module")
def class_model():
    return _perturbed(UNet(UNetConfig.tiny(num_classes=5)))


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return SceneCLIP(SceneCLIPConfig(width=16, layers=1, heads=2, embed_dim=8, image_widths=(8,))).eval()


@pytest.mark.parametrize("s", [0.0, 1.0, 3.0, 7.5])
def test_guided_sampling_equals_diffusers_pipeline_convention_end_to_end(class_model, s):
    """The reference is diffusers' pipelines, written independently of tinyldm: two forward passes (the null
    condition and the condition), noise_pred = uncond + w (cond - uncond) with guidance_scale w = 1 + s, and
    diffusers' own DDIMScheduler stepping on its timesteps k = t - 1. tinyldm: Guided (one batched pass, the seed's
    eps + s (eps - eps_null)) inside tinyldm's sampling loop. Swapping the conditional and the null path, or using
    w = s, makes the two disagree."""
    schedule = NoiseSchedule()
    cond = LabelCondition(5)
    y = torch.tensor([0, 3, 4])
    ours = sample(Guided(class_model, cond.given(y), cond.null(3), s), DDIM(schedule, steps=10), (3, 4, 8, 8),
                  generator=torch.Generator().manual_seed(0), progress=False)

    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                  clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    ref.set_timesteps(10)
    latents = torch.randn((3, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    null = torch.full((3,), 5)
    with torch.no_grad():
        for k in ref.timesteps:
            t = torch.full((3,), int(k) + 1)  # diffusers' timestep k is our t - 1
            noise_uncond, noise_cond = class_model(latents, t, null), class_model(latents, t, y)
            noise_pred = noise_uncond + (1 + s) * (noise_cond - noise_uncond)
            latents = ref.step(noise_pred, k, latents).prev_sample
    swapped = Guided(class_model, cond.null(3), cond.given(y), s) if s else Guided(class_model, cond.null(3), s=0.0)
    assert not torch.allclose(ours, sample(swapped, DDIM(schedule, steps=10), (3, 4, 8, 8),
                                           generator=torch.Generator().manual_seed(0), progress=False))
    torch.testing.assert_close(ours, latents, rtol=1e-4, atol=1e-4 * latents.abs().max().item())


@pytest.mark.parametrize("s", [0.0, 1.0, 3.0])
def test_guided_model_equals_two_forward_passes_by_hand(class_model, s):
    cond = LabelCondition(5)
    x_t, t, y = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 999]), torch.tensor([0, 3, 4])
    with torch.no_grad():
        eps_c = class_model(x_t, t, y=y)
        eps_u = class_model(x_t, t, y=torch.full((3,), 5))
        got = Guided(class_model, cond.given(y), cond.null(3), s=s)(x_t, t)
    torch.testing.assert_close(got, eps_c + s * (eps_c - eps_u), atol=1e-5, rtol=1e-5)


def test_guided_model_makes_one_batched_forward_pass(class_model):
    calls = []
    handle = class_model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    cond = LabelCondition(5)
    with torch.no_grad():
        Guided(class_model, cond.given([1, 2]), cond.null(2), s=3.0)(torch.randn(2, 4, 8, 8), torch.tensor([5, 5]))
    handle.remove()
    assert calls == [4]


@pytest.mark.parametrize("sampler", [DDPM(NoiseSchedule(ScheduleConfig(T=20, beta_T=0.2))),
                                     DDIM(NoiseSchedule(), steps=4), DPMSolverPP2M(NoiseSchedule(), steps=4)],
                         ids=lambda s: type(s).__name__)
def test_guidance_works_with_every_sampler(class_model, sampler):
    cond = LabelCondition(5)
    model = Guided(class_model, cond.given([0, 1]), cond.null(2), s=3.0)
    with torch.no_grad():
        x = sample(model, sampler, (2, 4, 8, 8), generator=torch.Generator().manual_seed(0), progress=False)
    assert x.shape == (2, 4, 8, 8) and torch.isfinite(x).all()


def test_guidance_without_a_null_condition_is_an_error(class_model):
    with pytest.raises(ValueError, match="needs the null condition"):
        Guided(class_model, LabelCondition(5).given([0]), None, s=3.0)
    Guided(class_model, LabelCondition(5).given([0]), None, s=0.0)  # s = 0 needs none


def test_null_label_path_is_the_unconditional_model(class_model):
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 200])
    with torch.no_grad():
        torch.testing.assert_close(class_model(x_t, t, **LabelCondition(5).null(2)), class_model(x_t, t))


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_label_dropout_rate(p):
    cond = LabelCondition(24, p_uncond=p)
    y = cond({"label": torch.randint(0, 24, (20_000,))}, torch.Generator().manual_seed(0))["y"]
    assert (y == 24).float().mean().item() == pytest.approx(p, abs=0.01)
    assert bool(((y >= 0) & (y <= 24)).all())


def test_text_dropout_encodes_the_empty_prompt(encoder):
    prompts = ["a red star", "a blue circle on a dark background"] * 50
    cond = TextCondition(encoder, p_uncond=0.3)
    out = cond({"caption": prompts}, torch.Generator().manual_seed(0))
    null = cond.null(1)
    dropped = (out["context"] == null["context"]).flatten(1).all(1)
    assert 15 <= int(dropped.sum()) <= 45  # about 30 of 100
    assert torch.equal(out["context_mask"][dropped], null["context_mask"].expand(int(dropped.sum()), -1))
    keep = TextCondition(encoder, p_uncond=0.0)({"caption": prompts}, torch.Generator().manual_seed(0))
    torch.testing.assert_close(keep["context"], encoder.encode(prompts)[0])


def test_text_guidance_batches_prompt_and_empty_prompt(encoder):
    model = _perturbed(UNet(UNetConfig.tiny(context_dim=16)))
    cond = TextCondition(encoder)
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([300, 700])
    c, n = cond.given(["a red star", "a green square"]), cond.null(2)
    with torch.no_grad():
        expected = guided_eps(model(x_t, t, **c), model(x_t, t, **n), 3.0)
        torch.testing.assert_close(Guided(model, c, n, s=3.0)(x_t, t), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad, message", [
    ([0, 25], r"expected labels in 0..23 \(or 24, the null label\), got values from 0 to 25"),
    ([-1], "got values from -1 to -1"),
    ([[1, 2]], r"expected labels y of shape \[b\], got shape \[1, 2\]"),
])
def test_label_out_of_range_is_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        LabelCondition(24).given(bad)


def test_bad_condition_arguments():
    with pytest.raises(ValueError, match=r"p_uncond in \[0, 1\], got 1.5"):
        LabelCondition(24, p_uncond=1.5)
    with pytest.raises(ValueError, match="num_classes as an int >= 1"):
        LabelCondition(0)
    with pytest.raises(ValueError, match=r"p_uncond in \[0, 1\], got -0.1"):
        drop_mask(3, -0.1)


def test_text_condition_wants_a_list(encoder):
    with pytest.raises(ValueError, match="wrap it in a list"):
        TextCondition(encoder).given("a red star")


class CountingEncoder(torch.nn.Module):
    """Prompts -> [b, 3, 2] states made from their lengths; counts the prompts it encodes."""

    dim = 2

    def __init__(self, trainable=False):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1), requires_grad=trainable)
        self.encoded = []

    def encode(self, prompts):
        self.encoded += list(prompts)
        lengths = torch.tensor([float(len(p)) for p in prompts])
        return (lengths.view(-1, 1, 1) * self.w).expand(-1, 3, 2).clone(), torch.ones(len(prompts), 3, dtype=torch.bool)


def test_a_frozen_text_encoder_encodes_each_prompt_once():
    encoder = CountingEncoder()
    condition = TextCondition(encoder, p_uncond=0.5)
    first = condition.given(["a red star", "", "a red star"])
    again = condition.given(["", "a blue circle", "a red star"])
    assert encoder.encoded == ["a red star", "", "a blue circle"]  # each new prompt once
    torch.testing.assert_close(again["context"][2], first["context"][0])
    torch.testing.assert_close(again["context"][1], torch.full((3, 2), 13.0))
    small = TextCondition(CountingEncoder(), cache=1)
    small.given(["a", "b"])
    small.given(["a"])
    assert small.encoder.encoded == ["a", "b", "a"]  # a cache of one prompt keeps the last one only
    trained = TextCondition(CountingEncoder(trainable=True))
    trained.given(["a"])
    trained.given(["a"])
    assert trained.encoder.encoded == ["a", "a"]  # an encoder that trains is never cached
