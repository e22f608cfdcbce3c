import pytest
import torch

from tinyldm.autoencoder import Autoencoder, AutoencoderConfig
from tinyldm.checkpoint import CheckpointError
from tinyldm.schedule import ScheduleConfig
from tinyldm.unet import UNet, UNetConfig, timestep_embedding

from helpers import perturbed


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- shapes ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,b,hw", [
    ({}, 2, (8, 8)),
    ({"num_classes": 10}, 3, (8, 12)),
    ({"context_dim": 12}, 1, (16, 8)),
    ({"num_classes": 5, "context_dim": 12, "in_channels": 9, "out_channels": 3}, 5, (8, 8)),
    ({"channel_mult": (1, 2, 2), "attention_levels": (1, 2)}, 3, (16, 16)),  # 3 levels
    ({"channel_mult": (1, 2, 2), "attention_levels": (), "num_res_blocks": 2}, 1, (12, 20)),  # no attention
    ({"channel_mult": (1,), "attention_levels": (0,)}, 2, (5, 7)),  # one level: any size
])
def test_output_shape_is_input_shape_with_out_channels(overrides, b, hw):
    cfg = UNetConfig.tiny(**overrides)
    model = UNet(cfg)
    x_t = randn(b, cfg.in_channels, *hw)
    context = randn(b, 7, cfg.context_dim) if cfg.context_dim else None
    y = torch.arange(b) % cfg.num_classes if cfg.num_classes else None
    eps = model(x_t, torch.arange(1, b + 1), y=y, context=context)
    assert eps.shape == (b, cfg.out_channels, *hw)


def test_untrained_model_predicts_exactly_zero():
    cfg = UNetConfig.tiny(num_classes=4, context_dim=6)
    model = UNet(cfg)
    eps = model(randn(3, 4, 8, 8), 500, y=torch.tensor([0, 1, 4]), context=randn(3, 5, 6))
    assert torch.equal(eps, torch.zeros_like(eps))


# -- conditioning ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_output_depends_on_t_y_and_context():
    model = perturbed(UNet(UNetConfig.tiny(num_classes=4, context_dim=6)))
    x_t, context = randn(2, 4, 8, 8), randn(2, 5, 6, seed=1)
    y = torch.tensor([0, 1])
    base = model(x_t, 10, y, context)
    assert not torch.allclose(base, model(x_t, 900, y, context))
    assert not torch.allclose(base, model(x_t, 10, torch.tensor([2, 3]), context))
    assert not torch.allclose(base, model(x_t, 10, y, randn(2, 5, 6, seed=2)))
    # one t for the batch, as a number or a tensor [b], int or float: the same thing
    torch.testing.assert_close(base, model(x_t, torch.tensor([10, 10]), y, context))
    torch.testing.assert_close(base, model(x_t, 10.0, y, context))


@torch.no_grad()
def test_y_none_is_the_null_label():
    cfg = UNetConfig.tiny(num_classes=4)
    model = perturbed(UNet(cfg))
    assert cfg.null_label == 4 and model.label_embed.num_embeddings == 5  # the last row is the null label
    x_t = randn(3, 4, 8, 8)
    torch.testing.assert_close(model(x_t, 7), model(x_t, 7, y=torch.full((3,), cfg.null_label)), rtol=0, atol=0)


@torch.no_grad()
def test_masked_out_context_tokens_have_no_effect():
    model = perturbed(UNet(UNetConfig.tiny(context_dim=6)))
    x_t, context = randn(2, 4, 8, 8), randn(2, 5, 6, seed=1)
    mask = torch.tensor([[True, True, True, False, False], [True, False, True, True, True]])
    base = model(x_t, 10, context=context, context_mask=mask)
    changed = context.clone()
    changed[0, 3:] = 100.0  # hidden by the mask
    changed[1, 1] = -100.0
    torch.testing.assert_close(model(x_t, 10, context=changed, context_mask=mask), base)
    changed[0, 0] = 100.0  # visible: must matter
    assert not torch.allclose(model(x_t, 10, context=changed, context_mask=mask), base)
    # an all-True mask is the same as no mask
    torch.testing.assert_close(model(x_t, 10, context=context, context_mask=torch.ones(2, 5, dtype=torch.bool)),
                               model(x_t, 10, context=context))


def test_timestep_embedding_matches_diffusers_sd_layout():
    from diffusers.models import embeddings  # the test-only reference: a missing one fails the run
    t = torch.tensor([0, 1, 10, 999, 1000])
    for dim in (32, 320, 7):
        ref = embeddings.get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        torch.testing.assert_close(timestep_embedding(t, dim), ref)
    emb = timestep_embedding(torch.tensor([0.0, 2.5]), 8)  # float t allowed; t = 0 is cos = 1, sin = 0
    assert emb.shape == (2, 8) and torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))


# -- inpainting channels ---------------------------------------------------------------------------------------------
@torch.no_grad()
def test_extra_input_channels_start_as_the_same_function():
    model = perturbed(UNet(UNetConfig.tiny(num_classes=3)))
    wide = model.with_extra_input_channels(5)
    assert wide.config.in_channels == 9 and model.config.in_channels == 4 and model.conv_in.in_channels == 4
    x_t, y = randn(2, 4, 8, 8), torch.tensor([0, 2])
    before = model(x_t, 30, y)
    for seed in (1, 2):  # any values in the new channels: their weights are zero
        extra = 10 * randn(2, 5, 8, 8, seed=seed)
        torch.testing.assert_close(wide(torch.cat([x_t, extra], dim=1), 30, y), before, rtol=0, atol=0)
    wide.conv_in.weight[:, 4:] += 0.1  # once trained, the new channels matter; the original is a separate model
    assert not torch.allclose(wide(torch.cat([x_t, randn(2, 5, 8, 8)], dim=1), 30, y), before)
    torch.testing.assert_close(model(x_t, 30, y), before)
    with pytest.raises(ValueError, match="int >= 1, got 0"):
        model.with_extra_input_channels(0)


@torch.no_grad()
def test_concat_is_the_extra_channels_after_x_t():
    wide = perturbed(UNet(UNetConfig.tiny(eps_skip=True)).with_extra_input_channels(5))
    x_t, concat = randn(2, 4, 8, 8), randn(2, 5, 8, 8, seed=1)
    torch.testing.assert_close(wide(x_t, 30, concat=concat), wide(torch.cat([x_t, concat], dim=1), 30),
                               rtol=0, atol=0)
    assert wide(x_t, 30, concat=concat).shape == (2, 4, 8, 8)  # eps of x_t: out_channels
    with pytest.raises(ValueError, match=r"concat \[b, 5, h, w\].*got x_t \[2, 4, 8, 8\] and concat \[2, 4, 8, 8\]"):
        wide(x_t, 30, concat=concat[:, :4])
    with pytest.raises(ValueError, match=r"or x_t \[b, 4, h, w\] with concat \[b, 5, h, w\]"):
        wide(x_t, 30)  # the extra channels forgotten
    with pytest.raises(ValueError, match="no extra input channels"):
        UNet(UNetConfig.tiny())(x_t, 30, concat=concat)


# -- Stable Diffusion v1 shape ---------------------------------------------------------------------------------------
def test_sd_v1_preset_has_sd_shape_on_meta():
    cfg = UNetConfig.sd_v1()
    assert [cfg.heads(cfg.width(level)) for level in cfg.attention_levels] == [8, 8, 8]
    assert cfg.downsample == 8
    with torch.device("meta"):
        model = UNet(cfg)
        # diffusers' UNet2DConditionModel(cross_attention_dim=768), Stable Diffusion v1's, has exactly this many
        assert model.num_parameters() == 859_520_964
        eps = model(torch.zeros(1, 4, 64, 64), 999, context=torch.zeros(1, 77, 768))
    assert eps.shape == (1, 4, 64, 64)


# -- attention maps --------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_recorded_attention_maps_have_shape_and_sum_to_one():
    cfg = UNetConfig.tiny(channel_mult=(1, 2, 2), attention_levels=(1, 2), context_dim=6)
    model = perturbed(UNet(cfg))
    b, L = 2, 5
    x_t, context = randn(b, 4, 16, 16), randn(b, L, 6)
    mask = torch.tensor([[True] * 5, [True, True, False, True, False]])
    fused = model(x_t, 3, context=context, context_mask=mask)
    with model.recording_attention() as maps:
        explicit = model(x_t, 3, context=context, context_mask=mask)
        model(x_t, 4, context=context, context_mask=mask)
    torch.testing.assert_close(explicit, fused)  # the explicit softmax is the same attention
    # tiny has 1 res block per level: at 8x8 one down and two up, at 4x4 one down, the middle and two up
    assert len(maps) == 7 and all(name.endswith("attn2") for name in maps)
    assert sorted(m[0].shape[2] for m in maps.values()) == [16] * 4 + [64] * 3  # h*w
    for name, recorded in maps.items():
        assert len(recorded) == 2  # one per forward call
        a = recorded[0]
        width = model.get_submodule(name).to_q.in_features
        assert a.shape == (b, cfg.heads(width), a.shape[2], L)  # [b, heads, h*w, L]
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:3]))
        assert torch.all(a[1, :, :, [2, 4]] == 0)  # masked tokens get no attention
    attn = model.get_submodule(next(iter(maps)))
    assert not attn.keep_attention and attn.last_attention is None  # restored after the block
    with model.recording_attention(include_self=True) as maps:
        model(x_t, 3, context=context)
    a = next(m[0] for name, m in maps.items() if name.endswith("attn1") and m[0].shape[2] == 64)
    assert a.shape[-1] == 64  # self-attention: h*w to h*w


# -- bad inputs ------------------------------------------------------------------------------------------------------
def _bad_calls():
    x = torch.zeros(2, 4, 8, 8)
    ctx = torch.zeros(2, 5, 6)
    return [
        ("cond", dict(x_t=torch.zeros(2, 3, 8, 8)), r"expected x_t \[b, 4, h, w\], got shape \[2, 3, 8, 8\]"),
        ("cond", dict(x_t=torch.zeros(4, 8, 8)), r"expected x_t \[b, 4, h, w\], got shape \[4, 8, 8\]"),
        ("cond", dict(x_t=torch.zeros(2, 4, 8, 7)), "multiples of 2 .*, got 8x7"),
        ("cond", dict(t=torch.tensor([1, 2, 3])), r"tensor \[2\] .*, got shape \[3\]"),
        ("cond", dict(y=torch.tensor([0, 1, 2])), r"int64 tensor \[2\] .*, got torch.int64 of shape \[3\]"),
        ("cond", dict(y=torch.tensor([0.0, 1.0])), r"int64 tensor \[2\] .*, got torch.float32"),
        ("cond", dict(y=torch.tensor([0, 4])), r"labels y in 0..3 \(3 = the null label\), got values from 0 to 4"),
        ("cond", dict(y=torch.tensor([-1, 0])), r"in 0..3 .* got values from -1 to 0"),
        ("cond", dict(context=None), r"cross-attends: expected context \[b, L, 6\], got None"),
        ("cond", dict(context=torch.zeros(2, 5, 7)), r"expected context \[2, L, 6\] .*, got shape \[2, 5, 7\]"),
        ("cond", dict(context=torch.zeros(3, 5, 6)), r"expected context \[2, L, 6\] .*, got shape \[3, 5, 6\]"),
        ("cond", dict(context_mask=torch.ones(2, 4, dtype=torch.bool)),
         r"context_mask as a bool tensor \[2, 5\], got torch.bool of shape \[2, 4\]"),
        ("cond", dict(context_mask=torch.ones(2, 5)), r"bool tensor \[2, 5\], got torch.float32"),
        ("cond", dict(context_mask=torch.tensor([[True] * 5, [False] * 5])), "at least one token in every row"),
        ("plain", dict(y=torch.tensor([0, 1])), "num_classes=None and takes no class labels"),
        ("plain", dict(context=ctx), "context_dim=None .* takes no context, got context"),
        ("plain", dict(context_mask=torch.ones(2, 5, dtype=torch.bool)), "takes no context, got context_mask"),
    ], x, ctx


@pytest.mark.parametrize("case", range(len(_bad_calls()[0])))
def test_bad_inputs_name_expected_and_actual(case):
    calls, x, ctx = _bad_calls()
    which, kwargs, message = calls[case]
    cfg = UNetConfig.tiny(num_classes=3, context_dim=6) if which == "cond" else UNetConfig.tiny()
    args = {"x_t": x, "t": 5, "y": None, "context": ctx if which == "cond" else None, "context_mask": None}
    with pytest.raises(ValueError, match=message):
        UNet(cfg)(**{**args, **kwargs})


@pytest.mark.parametrize("overrides,message", [
    ({"channel_mult": ()}, "channel_mult must be a non-empty tuple of ints >= 1, got ()"),
    ({"base_channels": 0}, "base_channels must be an int >= 1, got 0"),
    ({"attention_levels": (2,)}, r"attention_levels must be distinct levels in 0..1 .*, got \(2,\)"),
    ({"attention_levels": (), "context_dim": 8}, "context_dim=8 needs at least one attention level"),
    ({"num_classes": 0}, "num_classes must be None or an int >= 1, got 0"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
    ({"num_heads": 3}, "level 1 has width 16, which 3 heads do not divide"),
])
def test_bad_configs_name_expected_and_actual(overrides, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig.tiny(**overrides)


def test_presets_and_config_helpers():
    assert UNetConfig.preset("course") == UNetConfig.course()
    assert UNetConfig.preset("course", num_classes=10).num_classes == 10
    assert UNetConfig(**UNetConfig.sd_v1().to_dict()) == UNetConfig.sd_v1()
    assert UNetConfig(channel_mult=[1, 2, 2]).channel_mult == (1, 2, 2)  # lists (from JSON) become tuples
    assert UNetConfig.course().downsample == 4
    assert UNetConfig().heads(64) == 2 and UNetConfig().heads(16) == 1  # at least one head
    assert 10_000 < UNet(UNetConfig.tiny()).num_parameters() < 100_000
    large = UNetConfig.preset("course_large", num_classes=24)
    assert large.width(0) == 2 * UNetConfig.course().width(0) and large.num_classes == 24
    with torch.device("meta"):  # the count only: no memory, no init
        assert 3.5e6 < UNet(large).num_parameters() < 4.5e6
    with pytest.raises(ValueError, match="unknown unet preset 'nope'"):
        UNetConfig.preset("nope")
    with pytest.raises(ValueError, match="num_classes=None: it is not class-conditional and has no null label"):
        UNetConfig.tiny().null_label


# -- saving ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_save_load_round_trip(tmp_path):
    model = perturbed(UNet(UNetConfig.tiny(num_classes=3, context_dim=6)))
    path = model.save(tmp_path / "unet.safetensors", step=12)
    loaded = UNet.load(path)
    assert loaded.config == model.config and not loaded.training
    x_t, context = randn(2, 4, 8, 8), randn(2, 5, 6)
    torch.testing.assert_close(loaded(x_t, 9, torch.tensor([0, 3]), context),
                               model.eval()(x_t, 9, torch.tensor([0, 3]), context), rtol=0, atol=0)
    Autoencoder(AutoencoderConfig.tiny()).save(tmp_path / "ae.safetensors")
    with pytest.raises(CheckpointError, match="holds a 'autoencoder' model, expected a 'unet'"):
        UNet.load(tmp_path / "ae.safetensors")


# -- training --------------------------------------------------------------------------------------------------------
def test_overfits_one_batch():
    # Algorithm 1's loss ||eps - eps_theta(x_t, t)||^2 on one fixed batch: a working network memorises it
    torch.manual_seed(0)
    model = UNet(UNetConfig.tiny())
    x_0, eps = randn(4, 4, 8, 8, seed=1), randn(4, 4, 8, 8, seed=2)
    t = torch.tensor([10, 200, 500, 900])
    alpha_bar = torch.tensor([0.99, 0.7, 0.3, 0.05]).view(4, 1, 1, 1)  # roughly the DDPM schedule's at those t
    x_t = alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * eps
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = (model(x_t, t) - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert abs(losses[0] - eps.pow(2).mean().item()) < 1e-6  # eps_theta = 0 at init
    assert losses[-1] < losses[0] / 20


def test_eps_skip_starts_at_the_gaussian_optimum_and_round_trips(tmp_path):
    # with eps_skip the untrained model predicts sqrt(1 - alpha_bar_t) x_t: the exact eps for x_0 ~ N(0, I)
    from tinyldm.schedule import NoiseSchedule, ScheduleConfig

    schedule = NoiseSchedule()
    model = UNet(UNetConfig.tiny(eps_skip=True))
    x_t, t = torch.randn(3, 4, 8, 8), torch.tensor([1, 500, 1000])
    torch.testing.assert_close(model(x_t, t), (1 - schedule.alpha_bar[t]).sqrt().view(-1, 1, 1, 1) * x_t)
    model.save(tmp_path / "u.safetensors")
    torch.testing.assert_close(UNet.load(tmp_path / "u.safetensors")(x_t, t), model(x_t, t))


def _emb_effect(config):
    """Relative change of every res block's output when only emb changes."""
    from tinyldm.unet import ResBlock

    torch.manual_seed(0)
    model = perturbed(UNet(config))
    effects = []
    emb_dim = config.time_embed_mult * config.base_channels
    e1, e2 = torch.randn(2, emb_dim), torch.randn(2, emb_dim)
    for block in (m for m in model.modules() if isinstance(m, ResBlock)):
        x = torch.randn(2, block.norm1.num_channels, 8, 8)
        with torch.no_grad():
            a, b = block(x, e1), block(x, e2)
        effects.append(((a - b).norm() / a.norm()).item())
    return effects


def test_time_and_label_embedding_reach_every_res_block_of_the_course_model():
    # scale-shift after the norm: every block sees t and y
    assert min(_emb_effect(UNetConfig.course())) > 0.05
    # the failure it fixes: an additive embedding before a GroupNorm with one channel per group is subtracted
    # again by the norm, so those blocks are blind to t and y
    blind = _emb_effect(UNetConfig.course(norm_groups=32, scale_shift=False))
    assert min(blind) < 1e-6 and max(blind) > 0.05  # the 64-wide blocks (2 channels per group) still see some


def test_defaults_are_the_course_model_and_every_preset_names_its_layout():
    assert UNetConfig() == UNetConfig.course()
    course = UNetConfig()
    assert course.scale_shift and course.norm_groups == 8  # the setting in which t and y reach every block
    sd = UNetConfig.sd_v1()
    assert not sd.scale_shift and sd.norm_groups == 32 and sd.schedule == ScheduleConfig.stable_diffusion().to_dict()


@torch.no_grad()
def test_the_training_schedule_is_saved_in_the_config_and_is_the_default_for_sampling(tmp_path):
    cfg = UNetConfig.tiny(schedule=ScheduleConfig.cosine(T=500).to_dict(), eps_skip=True)
    model = UNet(cfg)
    path = model.save(tmp_path / "unet.safetensors")
    loaded = UNet.load(path)
    assert loaded.config.schedule == {"kind": "cosine", "T": 500, "beta_1": 1e-4, "beta_T": 0.02, "cosine_s": 0.008}
    schedule = loaded.schedule
    assert schedule.T == 500 and schedule.kind.value == "cosine"
    # the eps skip uses the same schedule: sqrt(1 - alpha_bar_t) x_t at init
    x_t = randn(2, 4, 8, 8)
    torch.testing.assert_close(loaded(x_t, 400), schedule.sqrt_one_minus_alpha_bar[400] * x_t)
    with pytest.raises(ValueError, match="schedule must be a dict of ScheduleConfig fields"):
        UNetConfig.tiny(schedule={"kind": "linear", "steps": 3})
    with pytest.raises(ValueError, match="kind must be one of"):
        UNetConfig.tiny(schedule={"kind": "sigmoid"})


def test_loading_with_another_autoencoder_is_a_clear_error(tmp_path):
    from tinyldm.checkpoint import fingerprint

    ae, other = Autoencoder(AutoencoderConfig.tiny()), perturbed(Autoencoder(AutoencoderConfig.tiny()))
    path = UNet(UNetConfig.tiny()).save(tmp_path / "unet.safetensors", autoencoder=fingerprint(ae))
    assert UNet.load(path, autoencoder=ae).info["autoencoder"] == fingerprint(ae)
    with pytest.raises(CheckpointError) as info:
        UNet.load(path, autoencoder=other)
    message = str(info.value)
    assert str(path) in message and fingerprint(ae) in message and fingerprint(other) in message
    assert "allow_other_autoencoder=True" in message
    UNet.load(path, autoencoder=other, allow_other_autoencoder=True)  # the expert's override
    # the pipeline checks the pairing too
    from tinyldm.pipeline import generate
    with pytest.raises(CheckpointError, match="autoencoder"):
        generate(UNet.load(path), other, n=1, latent_shape=(4, 8, 8))
    assert generate(UNet.load(path), other, n=1, latent_shape=(4, 8, 8), allow_other_autoencoder=True).shape[0] == 1


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    unet = perturbed(UNet(UNetConfig.tiny(context_dim=8)))
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.randn(2, 5, 8)
    grads = []
    for on in (False, True):
        unet.zero_grad()
        unet.gradient_checkpointing = on
        unet.train()(x, t, context=c).square().sum().backward()
        grads.append([p.grad.clone() for p in unet.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # sampling never checkpoints (nothing to save memory for)
        unet(x, t, context=c)


def test_with_num_classes_starts_every_new_class_as_the_base_unconditional_model():
    torch.manual_seed(0)
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([5, 300, 900])
    base = perturbed(UNet(UNetConfig.tiny(num_classes=24))).eval()
    more = base.with_num_classes(15)
    assert more.config.num_classes == 15 and more.label_embed.num_embeddings == 16
    with torch.no_grad():
        want = base(x, t)  # the null label 24
        for y in (torch.tensor([0, 7, 14]), None):
            torch.testing.assert_close(more(x, t, y), want)
        plain = perturbed(UNet(UNetConfig.tiny())).eval()
        torch.testing.assert_close(plain.with_num_classes(3)(x, t, torch.tensor([0, 1, 2])), plain(x, t))
