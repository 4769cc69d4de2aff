"""A transcoder's start and its dead-latent loss: the decoder initialised from the initial codes
(cfg.decoder_init), checked against a float64 recomputation, and AuxK's target, the residual of
the *target* y - y_hat, checked on a hand-built case worked out by hand."""

from __future__ import annotations

import pytest
import torch

from saelens_lite.saes import REGISTRY, SAE, SAEConfig

SPARSE = sorted(n for n, c in REGISTRY.items() if c.supports_transcoder)
D, F_, K = 8, 32, 4


def build(arch: str = "topk", target_hook: str = "h.out", **kw) -> SAE:
    torch.manual_seed(0)
    return SAE.from_config(SAEConfig.build(architecture=arch, d_in=D, d_sae=F_, k=K, dtype="float64",
                                           hook_name="h.in", target_hook=target_hook, **kw))


def sample(n: int = 512):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, D, generator=g, dtype=torch.float64) * 0.5 + 2
    y = torch.randn(n, D, generator=g, dtype=torch.float64) @ torch.randn(D, D, generator=g,
                                                                       dtype=torch.float64) - 1
    return x, y


def test_a_topk_transcoders_decoder_starts_from_its_codes_as_the_float64_formula():
    """W_dec_f = s_f / ||s_f||, s_f = sum_n z_nf (y_n - b_dec), z = ReLU(TopK(x W_enc + b_enc))
    with the encoder after its own init (centred b_enc); rows of latents that never fire keep
    their random start; W_enc stays where it was."""
    x, y = sample()
    for b_enc_init in ("auto", "zeros"):
        sae = build(b_dec_init="mean", b_enc_init=b_enc_init)
        with torch.no_grad():
            sae.W_enc[:, 0] = -1.0  # x ~ 2 + noise: latent 0 never fires without centring
        check_codes_init(sae, x, y, centred=b_enc_init == "auto")


def check_codes_init(sae: SAE, x, y, centred: bool):
    W_dec0, W_enc0 = sae.W_dec.detach().clone(), sae.W_enc.detach().clone()
    sae.init_from_data_(x, y)
    assert torch.equal(sae.W_enc.detach(), W_enc0)
    b_dec = sae.b_dec.detach()  # the mean of y (through float32, as init_from_data_ takes it)
    torch.testing.assert_close(b_dec, y.mean(0), rtol=1e-6, atol=1e-6)
    b_enc = -(x.mean(0) @ W_enc0) if centred else torch.zeros(F_, dtype=torch.float64)
    pre = x @ W_enc0 + b_enc
    vals, idx = pre.topk(K, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    s = z.T @ (y - b_dec)
    fired = s.norm(dim=1) > 0
    expected = torch.where(fired[:, None], s / s.norm(dim=1, keepdim=True).clamp_min(1e-300), W_dec0)
    # centred every latent fires; uncentred (the offset input picks a few) latent 0 and others
    # never do and keep their rows
    assert (int(fired.sum()) == F_) if centred else (not fired[0] and 0 < int(fired.sum()) < F_)
    torch.testing.assert_close(sae.W_dec.detach(), expected, rtol=1e-10, atol=1e-12)
    # each latent now writes along its tokens' targets: the main loss's code gradient
    # -sum_n z_nf <y_n - b_dec, W_dec_f> = -||s_f|| < 0 raises its codes
    assert bool(((z.T @ (y - b_dec) * sae.W_dec.detach()).sum(1)[fired] > 0).all())


@pytest.mark.parametrize("arch", SPARSE)
def test_decoder_init_auto_is_codes_for_a_transcoder_and_random_for_an_sae(arch):
    x, y = sample()
    for target_hook, mode, moved in (("h.out", "auto", True), ("h.out", "random", False),
                                     ("", "auto", False), ("", "codes", True)):
        sae = build(arch, target_hook, decoder_init=mode)
        W_dec0 = sae.W_dec.detach().clone()
        SAE.init_from_data_(sae, x, y if target_hook else None)  # the base init alone
        assert (not torch.equal(sae.W_dec.detach(), W_dec0)) == moved, (target_hook, mode)
        # rows at the start norm: 1 for a transcoder's unit rows, 0.1 for an SAE's free ones
        torch.testing.assert_close(sae.W_dec.detach().norm(dim=1),
                                   torch.full((F_,), getattr(sae.cfg, "decoder_start_norm", 1.0), dtype=torch.float64))
        if not moved:  # an SAE keeps Gao et al.'s tied start W_enc = W_dec^T
            assert torch.equal(sae.W_dec.detach(), W_dec0)


def test_decoder_init_names_the_choices():
    with pytest.raises(ValueError, match=r"decoder_init='tied'.*\['auto', 'random', 'codes'\]"):
        SAEConfig.build(architecture="topk", d_in=D, d_sae=F_, k=K, decoder_init="tied")


def test_auxk_reconstructs_the_targets_residual_on_a_hand_built_transcoder():
    """D = 2, three latents, k = k_aux = 1, latent 2 dead. Worked by hand:
    x1 = (2, 0): pre (2, 0, 1), latent 0 fires with 2, y_hat1 = (2, 0);
    x2 = (0, 3): pre (0, 3, 1.5), latent 1 fires with 3, y_hat2 = (0, 3).
    y1 = (3, 1), y2 = (1, 2): e = y - y_hat = (1, 1), (1, -1), mean (1, 0), ||e - mean||^2 = 2.
    AuxK codes: latent 2 with 1 and 1.5 along (0.6, 0.8): e_hat = (0.6, 0.8), (0.9, 1.2);
    ||e_hat - e||^2 = 0.16 + 0.04 + 0.01 + 4.84 = 5.05, so L_aux = 5.05 / 2 = 2.525.
    (The input's residual x - y_hat is 0 on both rows: it would give a different number.)
    mse = (2 + 2) / 2 = 2 and v = ||y - mean y||^2 / B = 1.25, so loss = 2 + 1.25 * 2.525 / 32."""
    sae = SAE.from_config(SAEConfig.build(architecture="topk", d_in=2, d_sae=3, k=1, aux_k=1, dtype="float64",
                                          hook_name="h.in", target_hook="h.out"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]], dtype=torch.float64))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    out = sae.training_forward(x, target_BD=y, dead_mask_F=torch.tensor([False, False, True]))
    torch.testing.assert_close(out.x_hat_BD.detach(), torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64))
    torch.testing.assert_close(out.auxk.detach(), torch.tensor(2.525, dtype=torch.float64))
    torch.testing.assert_close(out.mse.detach(), torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(out.loss.detach(), torch.tensor(2 + 1.25 * 2.525 / 32, dtype=torch.float64))
