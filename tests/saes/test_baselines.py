"""Baselines (dense, denoising, vae, conv) through the registry: shapes, save/load, training,
corruption statistics, the VAE's ELBO against closed forms, the conv decoder mirroring its encoder."""

from __future__ import annotations

import math

import pytest
import torch

from saelens_lite.compare import train_sequences
from saelens_lite.saes import REGISTRY, SAE, SAEConfig
from saelens_lite.saes.baselines import VAE, ConvAE, corrupt
from saelens_lite.training import TrainConfig, train

BASELINES = sorted(n for n, c in REGISTRY.items() if c.__module__.startswith("saelens_lite.saes.baselines"))
D, F = 16, 24


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_baseline_is_registered():
    assert BASELINES == ["conv", "denoising", "dense", "vae"]


def _low_rank(n=4096, d=D, r=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, r, generator=g) @ torch.randn(r, d, generator=g) + 0.05 * torch.randn(n, d, generator=g)


def _fvu(model, x):
    with torch.no_grad():
        x_hat = model(x)
    return float((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@pytest.mark.parametrize("arch", BASELINES)
def test_encode_decode_forward_shapes_and_save_load(arch, tmp_path):
    torch.manual_seed(0)
    m = SAE.from_config(SAEConfig.build(architecture=arch, d_in=D, d_sae=F))
    x = torch.randn(5, D)
    z = m.encode(x)
    assert z.shape == (5, F)
    assert m.decode(z).shape == (5, D)
    m.eval()
    torch.testing.assert_close(m(x), m.decode(z))
    out = m.training_forward(x)
    assert out.x_hat_BD.shape == x.shape and out.fired_F.shape == (m.W_dec.shape[0],) == (F,)
    m2 = SAE.load(m.save(tmp_path / arch))
    assert type(m2) is type(m) and m2.cfg == m.cfg
    torch.testing.assert_close(m2(x), m(x))


@pytest.mark.parametrize("arch", BASELINES)
def test_trains_down_on_synthetic_data(arch, tmp_path):
    x = _low_rank()
    torch.manual_seed(0)
    before = _fvu(SAE.from_config(SAEConfig.build(architecture=arch, d_in=D, d_sae=F)), x)
    sae = SAEConfig.build(architecture=arch, d_sae=F, k=4, b_dec_init="mean")
    cfg = TrainConfig(sae=sae, lr=3e-3, batch_size=128, tokens=128 * 300, warmup_steps=10,
                      checkpoint_every=0, progress=False,
                      log_every=100, out_dir=str(tmp_path), device="cpu")
    m = train(cfg, x)
    after = _fvu(m, x)
    assert after < 0.5 * before and after < 0.3, (before, after)


# ---------------------------------------------------------------- denoising
def test_corruption_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.ones(400, 500)
    noisy = corrupt(x, noise_std=0.3, generator=g)
    assert abs(float((noisy - x).mean())) < 0.005 and abs(float((noisy - x).std()) - 0.3) < 0.005
    masked = corrupt(x, mask_prob=0.25, generator=g)
    assert set(masked.unique().tolist()) == {0.0, 1.0}
    assert abs(float((masked == 0).float().mean()) - 0.25) < 0.005
    both = corrupt(x, noise_std=0.3, mask_prob=0.5, generator=g)
    assert abs(float((both == 0).float().mean()) - 0.5) < 0.005
    assert torch.equal(corrupt(x), x)
    with pytest.raises(ValueError, match="mask_prob"):
        corrupt(x, mask_prob=1.0)


def test_denoising_corrupts_only_in_training():
    m = SAE.from_config(SAEConfig.build(architecture="denoising", d_in=D, d_sae=F, noise_std=0.0, mask_prob=0.5))
    x = torch.randn(64, D)
    m.eval()
    torch.testing.assert_close(m.training_forward(x).x_hat_BD, m(x))
    m.train()
    assert not torch.allclose(m.training_forward(x).x_hat_BD, m(x))
    with pytest.raises(ValueError, match="mask_prob"):
        SAEConfig.build(architecture="denoising", mask_prob=1.5)


# ---------------------------------------------------------------- vae
def _linear_gaussian_vae(exact_posterior: bool):
    """p(z) = N(0, I), p(x|z) = N(z W + b, sigma^2 I) with orthogonal rows of W, so the exact
    posterior is diagonal: Sigma = diag(1 / (1 + s_f^2 / sigma^2)), mu = (x - b) W^T Sigma / sigma^2."""
    torch.manual_seed(0)
    Dl, Fl, sigma = 6, 3, 0.5
    m = VAE(SAEConfig.build(architecture="vae", d_in=Dl, d_sae=Fl, dtype="float64"))
    Q, _ = torch.linalg.qr(torch.randn(Dl, Dl, dtype=torch.float64))
    s = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    W = s[:, None] * Q[:Fl]
    var_F = 1 / (1 + s**2 / sigma**2)
    with torch.no_grad():
        m.W_dec.copy_(W)
        m.b_dec.copy_(torch.randn(Dl, dtype=torch.float64))
        m.log_std_D.fill_(math.log(sigma))
        if exact_posterior:
            m.W_enc.copy_(W.T * var_F / sigma**2)
            m.b_enc.zero_()
            m.W_enc_lv.zero_()
            m.b_enc_lv.copy_(var_F.log())
        else:
            m.W_enc.copy_(0.3 * torch.randn(Dl, Fl, dtype=torch.float64))
            m.W_enc_lv.copy_(0.1 * torch.randn(Dl, Fl, dtype=torch.float64))
            m.b_enc_lv.fill_(-2.0)  # small posterior variance: a low-variance MC estimate
    return m, W, sigma


def test_vae_elbo_equals_log_evidence_with_the_exact_posterior():
    m, W, sigma = _linear_gaussian_vae(exact_posterior=True)
    x = torch.randn(8, 6, dtype=torch.float64) * 2
    marginal = torch.distributions.MultivariateNormal(m.b_dec.detach(), W.T @ W + sigma**2 * torch.eye(6))
    elbo = m.elbo(x, n_samples=20_000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(elbo, marginal.log_prob(x), atol=0.05, rtol=0)


def test_vae_elbo_matches_closed_form_for_any_encoder():
    m, W, sigma = _linear_gaussian_vae(exact_posterior=False)
    x = torch.randn(8, 6, dtype=torch.float64)
    with torch.no_grad():
        mu, lv = m.posterior(x)
        r = x - mu @ W - m.b_dec
        exp_sq = r.pow(2).sum(-1) + (lv.exp() @ W.pow(2)).sum(-1)  # E_q ||x - z W - b||^2
        rec = -0.5 * exp_sq / sigma**2 - 6 * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
        kl = 0.5 * (mu.pow(2) + lv.exp() - 1 - lv).sum(-1)
        closed = rec - kl
    elbo = m.elbo(x, n_samples=50_000, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(elbo, closed, atol=0.05, rtol=0)
    marginal = torch.distributions.MultivariateNormal(m.b_dec.detach(), W.T @ W + sigma**2 * torch.eye(6))
    assert (closed <= marginal.log_prob(x) + 1e-9).all()  # a lower bound


def test_vae_reparameterisation_gradients_flow_and_sampling():
    torch.manual_seed(0)
    m = SAE.from_config(SAEConfig.build(architecture="vae", d_in=D, d_sae=F, vae_beta=0.5))
    m.train()
    out = m.training_forward(torch.randn(32, D))
    out.loss.backward()
    for name in ("W_enc", "b_enc", "W_enc_lv", "b_enc_lv", "W_dec", "b_dec", "log_std_D"):
        g = getattr(m, name).grad
        assert g is not None and g.abs().sum() > 0, name
    assert set(out.losses) >= {"nll", "kl", "mse"}
    assert m.sample(7).shape == (7, D)
    assert m.sample(3, noise=True, generator=torch.Generator().manual_seed(0)).shape == (3, D)


def test_vae_fold_input_scale_shifts_elbo_by_the_jacobian():
    torch.manual_seed(0)
    m = SAE.from_config(SAEConfig.build(architecture="vae", d_in=D, d_sae=F, dtype="float64"))
    x = torch.randn(4, D, dtype=torch.float64)
    c = 3.0
    before = m.elbo(c * x, n_samples=4, generator=torch.Generator().manual_seed(0))
    m.fold_input_scale_(c)
    after = m.elbo(x, n_samples=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(after, before + D * math.log(c))


# ---------------------------------------------------------------- conv
@pytest.mark.parametrize("kind,shape", [("1d", (3, 10, D)), ("2d", (3, 1, 8, 8))])
@pytest.mark.parametrize("channels", [0, 8])
def test_conv_decoder_mirrors_encoder(kind, shape, channels):
    d_in = D if kind == "1d" else 64
    m = ConvAE(SAEConfig.build(architecture="conv", d_in=d_in, d_sae=6, conv_kind=kind, conv_channels=channels))
    n = len(m.enc)
    assert n == len(m.dec) == (2 if channels else 1)
    for i in range(n):
        assert m.dec[i].weight.shape == m.enc[n - 1 - i].weight.shape
    x = torch.randn(*shape)
    assert m(x).shape == x.shape
    assert m(x.reshape(3, -1) if kind == "2d" else x[:, 0]).shape == (3, d_in)


def test_conv1d_is_causal():
    m = ConvAE(SAEConfig.build(architecture="conv", d_in=D, d_sae=6, conv_kind="1d"))
    x = torch.randn(2, 12, D)
    x2 = x.clone()
    x2[:, 7:] += 1.0
    torch.testing.assert_close(m(x)[:, :7], m(x2)[:, :7])
    assert not torch.allclose(m(x)[:, 7:], m(x2)[:, 7:])


def test_conv2d_rejects_non_square_inputs():
    with pytest.raises(ValueError, match="d_in"):
        ConvAE(SAEConfig.build(architecture="conv", d_in=60, d_sae=4, conv_kind="2d"))


def test_conv2d_trains_on_digits(tmp_path):
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().data).float() / 16
    sae = SAEConfig.build(architecture="conv", d_sae=8, k=1, conv_kind="2d", b_dec_init="mean")
    cfg = TrainConfig(sae=sae, lr=3e-3, batch_size=64, tokens=64 * 250, warmup_steps=10,
                      checkpoint_every=0, progress=False, log_every=50, out_dir=str(tmp_path), device="cpu")
    m = train(cfg, x)
    assert _fvu(m, x) < 0.25
    assert m(x[:4].view(4, 1, 8, 8)).shape == (4, 1, 8, 8)
    torch.testing.assert_close(SAE.load(tmp_path / "activations")(x[:4]), m(x[:4]))


def test_conv1d_trains_on_sequences(tmp_path):
    g = torch.Generator().manual_seed(0)
    seq = torch.randn(256, 9, 4, generator=g) @ torch.randn(4, D, generator=g)
    seq = seq + 0.5 * seq.roll(1, dims=1)  # depends on the previous token
    before = _fvu(ConvAE(SAEConfig.build(architecture="conv", d_in=D, d_sae=F, conv_kind="1d")), seq)
    sae = SAEConfig.build(architecture="conv", d_sae=F, k=1, conv_kind="1d", b_dec_init="mean")
    cfg = TrainConfig(sae=sae, lr=3e-3, batch_size=9 * 16, tokens=9 * 16 * 300, warmup_steps=10,
                      out_dir=str(tmp_path), progress=False, device="cpu")
    m = train_sequences(cfg, seq)
    assert _fvu(m, seq) < 0.3 * before
    torch.testing.assert_close(SAE.load(tmp_path / "model")(seq[:2]), m(seq[:2]))
