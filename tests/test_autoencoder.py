import pytest
import torch

from tinyldm.autoencoder import Autoencoder, AutoencoderConfig, DiagonalGaussian, psnr, reconstruction_psnr


@pytest.mark.parametrize("mult,f", [((1, 2), 2), ((1, 2, 2), 4), ((1, 2, 2, 4), 8)])
def test_shapes_for_several_f(mult, f):
    cfg = AutoencoderConfig(base_channels=8, channel_mult=mult, num_res_blocks=1, latent_channels=4)
    ae = Autoencoder(cfg)
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    posterior = ae.encode(x)
    assert cfg.f == f
    assert posterior.mean.shape == (2, 4, 32 // f, 48 // f)
    assert ae.decode(posterior.sample()).shape == x.shape
    assert ae.latent_shape(x.shape) == (2, 4, 32 // f, 48 // f)


def test_seed_shape_256_to_4x32x32():
    # the seed's [b,3,256,256] -> [b,4,32,32], with the SD layout (f = 8, 4 channels) at small width
    assert AutoencoderConfig.sd().f == 8
    cfg = AutoencoderConfig(base_channels=8, channel_mult=(1, 2, 4, 4), num_res_blocks=1)
    z = Autoencoder(cfg).to_latent(torch.zeros(1, 3, 256, 256))
    assert tuple(z.shape) == (1, 4, 32, 32)
    assert Autoencoder(AutoencoderConfig.sd()).latent_shape((1, 3, 256, 256)) == (1, 4, 32, 32)
    with torch.device("meta"):  # diffusers' AutoencoderKL for Stable Diffusion v1 has exactly 83,653,863 parameters
        assert sum(p.numel() for p in Autoencoder(AutoencoderConfig.sd()).parameters()) == 83_653_863


def test_bad_inputs_name_expected_and_actual():
    ae = Autoencoder(AutoencoderConfig.tiny())
    with pytest.raises(ValueError, match=r"expected images \[b, 3, H, W\], got shape \[2, 1, 32, 32\]"):
        ae.encode(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="multiples of f = 4, got 30x32"):
        ae.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"expected latents \[b, 4, h, w\], got shape \[1, 3, 8, 8\]"):
        ae.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown autoencoder preset 'nope'"):
        AutoencoderConfig.preset("nope")
    with pytest.raises(ValueError, match="channel_mult"):
        AutoencoderConfig(channel_mult=())


def test_kl_matches_torch_distributions():
    moments = torch.randn(3, 8, 4, 4)
    q = DiagonalGaussian(moments)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(q.mean, q.std), torch.distributions.Normal(0.0, 1.0)).sum((1, 2, 3))
    torch.testing.assert_close(q.kl(), ref, rtol=1e-5, atol=1e-5)


def test_sample_is_reparameterised_and_seeded():
    moments = torch.randn(2, 8, 3, 3, requires_grad=True)
    q = DiagonalGaussian(moments)
    a = q.sample(torch.Generator().manual_seed(0))
    b = DiagonalGaussian(moments).sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    # reparameterised: z = mean + std * eps, so gradients reach the mean (1 each) and the log-variance
    # (d z / d logvar = std * eps / 2 = (z - mean) / 2)
    a.sum().backward()
    mean_grad, logvar_grad = moments.grad.chunk(2, dim=1)
    torch.testing.assert_close(mean_grad, torch.ones_like(mean_grad))
    torch.testing.assert_close(logvar_grad, ((a - q.mean) / 2).detach())
    torch.testing.assert_close(q.mode(), q.mean)


def test_scale_factor_gives_unit_variance_latents():
    ae = Autoencoder(AutoencoderConfig.tiny())
    x = torch.rand(16, 3, 32, 32) * 2 - 1
    s = ae.fit_scale_factor(x, batch_size=5)
    assert s == pytest.approx(float(ae.scale_factor))
    assert ae.to_latent(x).std().item() == pytest.approx(1.0, rel=1e-4)
    # from_latent undoes the scale: decode(to_latent / s) == decode(mode)
    torch.testing.assert_close(ae.from_latent(ae.to_latent(x)), ae.decode(ae.encode(x).mode()).clamp(-1, 1))


def test_psnr_closed_form():
    x = torch.zeros(2, 3, 4, 4)
    # an error of 0.2 everywhere: mse 0.04, peak-to-peak 2 -> 10 log10(4 / 0.04) = 20 dB
    torch.testing.assert_close(psnr(x + 0.2, x), torch.full((2,), 20.0))
    ae = Autoencoder(AutoencoderConfig.tiny())
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    by_hand = psnr(ae.decode(ae.encode(x).mode()), x).mean().item()
    assert reconstruction_psnr(ae, x, batch_size=2) == pytest.approx(by_hand, rel=1e-6)
