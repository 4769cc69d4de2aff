"""The SAE-side transcoder API: a reconstruction target distinct from the input (cfg.target_hook)
and a linear skip connection (cfg.skip). Oracles: a float64 reference computation of each sparse
architecture's loss, reconstruction and gradients written out here with plain torch ops, and
the folded model equals the unfolded one on raw data."""

from __future__ import annotations

import math

import pytest
import torch

from saelens_lite.saes import REGISTRY, SAE, SAEConfig

SPARSE = sorted(n for n, c in REGISTRY.items() if c.supports_transcoder)
B, D, F_, K = 16, 8, 32, 4


def make(arch: str, skip: bool, **kw) -> SAE:
    torch.manual_seed(0)
    cfg = SAEConfig.build(architecture=arch, d_in=D, d_sae=F_, k=K, dtype="float64",
                    hook_name="blocks.0.hook_mlp_in", target_hook="blocks.0.hook_mlp_out",
                    skip=skip, **kw)
    sae = SAE.from_config(cfg)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "log_threshold":
                p.copy_(torch.rand_like(p) * 0.5 - 1.5)  # theta in (0.08, 0.37)
            else:
                p.add_(torch.randn_like(p) * 0.3)
    return sae


def reference(sae: SAE, x, y, dead):
    """(loss, x_hat, params) from plain torch ops on float64 leaf copies of the parameters.
    Matryoshka (Bussmann et al. 2025): BatchTopK's codes, and every prefix m of the dictionary
    reconstructs the target on its own, x_hat_m = acts[:, :n_m] @ W_dec[:n_m] + b_dec (+ x @ W_skip),
    loss sum_m w_m ||y - x_hat_m||^2; x_hat is the full dictionary's, AuxK reads its residual."""
    cfg = sae.cfg
    P = {n: p.detach().clone().requires_grad_(True) for n, p in sae.named_parameters()}
    pre = x @ P["W_enc"] + P["b_enc"]  # a transcoder's encoder does not subtract b_dec
    if sae.architecture == "relu":
        acts = torch.relu(pre)
    elif sae.architecture == "topk":
        vals, idx = pre.topk(cfg.k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
    elif sae.architecture in ("batchtopk", "matryoshka"):
        score = pre / (x.norm(dim=-1, keepdim=True) / math.sqrt(D))
        keep = torch.zeros(pre.numel(), dtype=torch.bool)
        keep[score.reshape(-1).topk(B * cfg.k).indices] = True
        acts = pre * (keep.view_as(pre) & (pre > 0))
    else:
        theta = P["log_threshold"].detach().exp()
        acts = pre * (pre > theta)
    widths, weights = getattr(sae, "widths", [F_]), getattr(sae, "weights", [1.0])
    loss = 0.0
    for n, w in zip(widths, weights):  # one prefix of weight 1 but for Matryoshka
        x_hat = acts[:, :n] @ P["W_dec"][:n] + P["b_dec"]
        if cfg.skip:
            x_hat = x_hat + x @ P["W_skip"]
        loss = loss + w * (x_hat - y).pow(2).sum(-1).mean()
    if sae.architecture == "relu":
        loss = loss + cfg.l1_coeff * (acts * P["W_dec"].norm(dim=1)).sum(-1).mean()
    elif sae.architecture == "jumprelu":
        l0 = (pre > theta).sum(-1).double().mean()
        loss = loss + cfg.l0_coeff * (l0 / cfg.k - 1) ** 2
        loss = loss + cfg.jumprelu_pre_act_coeff * ((theta - pre).relu() * dead).sum(-1).mean()
    else:  # AuxK on the residual of the target
        k_full = cfg.aux_k or D // 2
        n_dead = int(dead.sum())
        aux_vals, aux_idx = pre.masked_fill(~dead, -math.inf).topk(min(k_full, n_dead), dim=-1)
        e_hat = torch.zeros_like(pre).scatter(-1, aux_idx, torch.relu(aux_vals)) @ P["W_dec"]
        e = (y - x_hat).detach()
        aux = min(n_dead / k_full, 1.0) * (e_hat - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
        v = (y - y.mean(0)).pow(2).sum() / B
        loss = loss + cfg.aux_coeff * v * aux
    loss.backward()
    return loss.detach(), x_hat.detach(), P


@pytest.mark.parametrize("skip", [False, True], ids=["plain", "skip"])
@pytest.mark.parametrize("arch", SPARSE)
def test_transcoder_loss_and_grads_equal_a_float64_reference(arch, skip):
    # the reference has no straight-through terms
    sae = make(arch, skip, **({"jumprelu_pre_grad": False} if arch == "jumprelu" else {}))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    y = torch.randn(B, D, generator=g, dtype=torch.float64) * 2 + 1
    dead = torch.zeros(F_, dtype=torch.bool)
    dead[::2] = True
    out = sae.training_forward(x, target_BD=y, dead_mask_F=dead)
    out.loss.backward()
    loss, x_hat, P = reference(sae, x, y, dead)
    torch.testing.assert_close(out.loss.detach(), loss)
    torch.testing.assert_close(out.x_hat_BD.detach(), x_hat)
    torch.testing.assert_close(out.fvu, ((x_hat - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()))
    assert ("W_skip" in P) == skip
    for name, p in sae.named_parameters():
        if name != "log_threshold":  # its gradient is the straight-through estimator's
            torch.testing.assert_close(p.grad, P[name].grad, msg=name)
    with torch.no_grad():  # inference is the same reconstruction (skip term included)
        if arch not in ("batchtopk", "matryoshka"):  # (batchtopk infers with its threshold, trains with batch top-k)
            torch.testing.assert_close(sae(x), x_hat)


@pytest.mark.parametrize("skip", [False, True], ids=["plain", "skip"])
def test_matryoshka_transcoder_with_fraction_groups_and_weights_equals_the_reference(skip):
    sae = make("matryoshka", skip, matryoshka_groups=[0.25, 0.25, 0.5],
               matryoshka_weights=[1.0, 0.5, 2.0])
    assert sae.widths == [8, 16, 32]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    y = torch.randn(B, D, generator=g, dtype=torch.float64) - 1
    dead = torch.zeros(F_, dtype=torch.bool)
    dead[1::3] = True
    out = sae.training_forward(x, target_BD=y, dead_mask_F=dead)
    out.loss.backward()
    loss, x_hat, P = reference(sae, x, y, dead)
    torch.testing.assert_close(out.loss.detach(), loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.x_hat_BD.detach(), x_hat, rtol=1e-12, atol=1e-12)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.grad, P[name].grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("arch", SPARSE)
def test_fold_input_scale_with_two_scales_gives_the_same_outputs_on_raw_data(arch):
    sae = make(arch, True)
    if hasattr(sae, "threshold"):  # batchtopk, matryoshka
        sae.threshold.fill_(0.4)
    x = torch.randn(B, D, dtype=torch.float64) * 3
    c_in, c_out = 0.25, 4.0
    with torch.no_grad():
        acts, x_hat = sae.encode(c_in * x), sae(c_in * x) / c_out
        sae.fold_input_scale_(c_in, c_out)
        torch.testing.assert_close(sae.encode(x), acts)
        torch.testing.assert_close(sae(x), x_hat)


def test_an_sae_has_one_input_scale():
    sae = SAE.from_config(SAEConfig.build(architecture="topk", d_in=D, d_sae=F_, k=K))
    with pytest.raises(ValueError, match="target_scale=2.0 is invalid for an SAE"):
        sae.fold_input_scale_(1.0, 2.0)
    sae.fold_input_scale_(2.0, 2.0)  # the same scale twice is the one-scale fold


@pytest.mark.parametrize("arch", SPARSE)
def test_a_transcoder_with_skip_saves_and_loads(arch, tmp_path):
    sae = make(arch, True)
    x = torch.randn(B, D, dtype=torch.float64)
    loaded = SAE.load(sae.save(tmp_path / arch))
    assert loaded.cfg == sae.cfg and loaded.cfg.target_hook == "blocks.0.hook_mlp_out"
    for name, t in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    with torch.no_grad():
        assert torch.equal(loaded(x), sae(x))


@pytest.mark.parametrize("arch", SPARSE)
def test_init_from_data_sets_b_dec_from_the_target_sample(arch):
    sae = make(arch, False, b_dec_init="mean")
    x = torch.randn(512, D, dtype=torch.float64)
    y = torch.randn(512, D, dtype=torch.float64) + 5
    sae.init_from_data_(x, y)
    torch.testing.assert_close(sae.b_dec.detach(), y.mean(0))


@pytest.mark.parametrize("arch", SPARSE)
def test_init_from_data_centres_a_transcoders_pre_activations(arch):
    """b_enc_init=auto centres a transcoder's encoder: over the sample, every latent's
    pre-activation averages zero (float64, against the plain mean of x @ W_enc + b_enc), even with
    an input far from the origin; zeros keeps b_enc; an SAE (auto) keeps b_enc; centre centres
    an SAE's (x - b_dec) @ W_enc + b_enc too."""
    x = torch.randn(512, D, dtype=torch.float64) * 0.5 + 3
    y = torch.randn(512, D, dtype=torch.float64)
    sae = make(arch, False)
    sae.init_from_data_(x, y)
    pre = x @ sae.W_enc.detach() + sae.b_enc.detach()
    torch.testing.assert_close(pre.mean(0), torch.zeros(F_, dtype=torch.float64), atol=1e-9, rtol=0)
    kept = make(arch, False, b_enc_init="zeros")
    b0 = kept.b_enc.detach().clone()
    SAE.init_from_data_(kept, x, y)  # the base init alone (jumprelu rescales b_enc after it)
    assert torch.equal(kept.b_enc.detach(), b0)
    for mode, centred in (("auto", False), ("centre", True)):
        torch.manual_seed(0)
        s = SAE.from_config(SAEConfig.build(architecture=arch, d_in=D, d_sae=F_, k=K, dtype="float64",
                                      b_enc_init=mode))
        SAE.init_from_data_(s, x)
        pre = (x - s.b_dec.detach()) @ s.W_enc.detach() + s.b_enc.detach()
        assert (pre.mean(0).abs().max() < 1e-9) == centred, mode


def test_centring_lets_many_latents_win_at_init_where_an_offset_input_picks_the_same_few():
    """The failure centring fixes: with an input offset m >> its spread (an RMSNorm's output has
    a few large constant dimensions), x W_enc ~ m W_enc for every token, so an uncentred TopK
    transcoder fires the same few latents everywhere; centred, tokens pick their own."""
    x = torch.randn(2048, D, dtype=torch.float64) + 20 * torch.linspace(1, 2, D, dtype=torch.float64)
    y = torch.randn(2048, D, dtype=torch.float64)
    fired = {}
    for mode in ("zeros", "auto"):
        torch.manual_seed(0)
        sae = SAE.from_config(SAEConfig.build(architecture="topk", d_in=D, d_sae=F_, k=K, dtype="float64",
                                        hook_name="h.in", target_hook="h.out", b_enc_init=mode))
        sae.init_from_data_(x, y)
        with torch.no_grad():
            fired[mode] = int((sae.encode(x) != 0).any(0).sum())
    assert fired["zeros"] <= 2 * K and fired["auto"] >= 3 * F_ // 4, fired


def test_b_enc_init_names_the_choices():
    with pytest.raises(ValueError, match=r"b_enc_init='middle'.*\['auto', 'centre', 'zeros'\]"):
        SAEConfig.build(architecture="topk", d_in=D, d_sae=F_, k=K, b_enc_init="middle")


def test_skip_needs_a_target_hook_and_baselines_are_not_transcoders():
    with pytest.raises(ValueError, match=r"SAEConfig.skip=True is invalid.*only with target_hook"):
        SAEConfig.build(architecture="topk", d_in=D, d_sae=F_, k=K, skip=True)
    with pytest.raises(ValueError, match=r"target_hook='h' is invalid for architecture 'dense'"):
        SAE.from_config(SAEConfig.build(architecture="dense", d_in=D, d_sae=F_, k=1, target_hook="h"))


def test_the_fast_step_declines_transcoders():
    assert REGISTRY["topk"].fast_step_supports({})
    for arch in ("topk", "batchtopk", "matryoshka"):
        assert REGISTRY[arch].fast_step_supports({}) == REGISTRY[arch].supports_fast_step
        assert not REGISTRY[arch].fast_step_supports({"target_hook": "blocks.0.hook_mlp_out"})
