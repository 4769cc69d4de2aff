"""The dead-latent diagnostics of the metrics records (training.diagnostics): each latent's
largest pre-activation and firing margin over a batch, against a dense float64 recomputation,
their quantiles per group, and their presence in a run's metrics.jsonl."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_sae

from saelens_lite.saes import REGISTRY
from saelens_lite.training import TrainConfig, train
from saelens_lite.training.diagnostics import QUANTILES, preact_extremes, preact_quantiles

pytestmark = pytest.mark.usefixtures("one_thread")

D, F, K, B = 8, 32, 4, 96
SPARSE = sorted(n for n, c in REGISTRY.items() if c.is_sparse_coder and c.tokenwise)
KEYS = [f"{g}_{s}_q{round(p * 100)}" for g in ("dead", "live") for s in ("pre_max", "margin")
        for p in QUANTILES]


def reference(sae, x):
    """pre_max_f = max_b pre_bf, margin_f = max_b (pre_bf - t_b), t_b the smallest pre-activation
    that fired in row b (+inf where none did), from one dense float64 pass."""
    with torch.no_grad():
        pre = sae.pre_acts(x).double()
        fired = sae.encode(x) > 0
    t = pre.masked_fill(~fired, torch.inf).amin(-1, keepdim=True)
    return pre.amax(0), (pre - t).amax(0)


@pytest.mark.parametrize("arch", SPARSE)
def test_pre_max_and_margin_equal_a_dense_float64_recomputation(arch):
    sae = make_sae(arch, d_in=D, d_sae=F, k=K, dtype="float64").eval()
    if hasattr(sae, "threshold"):  # batchtopk, matryoshka: infer with a set threshold
        sae.threshold.fill_(0.2)
    x = torch.randn(B, D, dtype=torch.float64)
    got = preact_extremes(sae, x, chunk_rows=20)  # several chunks, the last one short
    for g, r in zip(got, reference(sae, x)):
        torch.testing.assert_close(g.double(), r, rtol=1e-6, atol=1e-6)


def two_encoder_extremes(sae, x, chunk_rows):
    """The diagnostics computed with pre_acts and encode as two encoder passes per chunk."""
    pre_max, margin = torch.full((F,), -torch.inf), torch.full((F,), -torch.inf)
    with torch.no_grad():
        for s in range(0, len(x), chunk_rows):
            pre = sae.pre_acts(x[s:s + chunk_rows]).float()
            fired = sae.encode(x[s:s + chunk_rows]) > 0
            t = pre.masked_fill(~fired, torch.inf).amin(-1)
            pre_max, margin = torch.maximum(pre_max, pre.amax(0)), torch.maximum(margin, (pre - t[:, None]).amax(0))
    return pre_max, margin


@pytest.mark.parametrize("arch", SPARSE)
def test_activate_on_the_pre_activations_is_encode(arch):
    sae = make_sae(arch, d_in=D, d_sae=F, k=K).eval()
    x = torch.randn(B, D)
    with torch.no_grad():
        if hasattr(sae, "threshold"):  # batchtopk, matryoshka: the batch rule, then a set threshold
            torch.testing.assert_close(sae.activate(sae.pre_acts(x), x), sae.encode(x), rtol=0, atol=0)
            sae.threshold.fill_(0.2)
        got, want = sae.activate(sae.pre_acts(x), x), sae.encode(x)
    assert torch.equal(got > 0, want > 0) and 0 < int((want > 0).sum()) < B * F
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # TopK's selection recomputes its values


@pytest.mark.parametrize("arch", SPARSE)
def test_the_diagnostics_run_one_encoder_matmul_and_equal_the_two_pass_values(arch):
    """Unchanged values (exactly: the same pre-activations and firing pattern) from one dense
    (B, D) x (D, F) matmul, 2 B D F flops, where pre_acts + encode took two."""
    from torch.utils.flop_counter import FlopCounterMode

    sae = make_sae(arch, d_in=D, d_sae=F, k=K).eval()
    if hasattr(sae, "threshold"):
        sae.threshold.fill_(0.2)
    x = torch.randn(B, D)
    with FlopCounterMode(display=False) as flops:
        got = preact_extremes(sae, x, chunk_rows=40)
    assert flops.get_total_flops() == 2 * B * D * F
    for g, w in zip(got, two_encoder_extremes(sae, x, chunk_rows=40)):
        assert torch.equal(g, w)


def test_a_topk_latents_margin_is_how_far_it_is_below_the_kth_pre_activation():
    """TopK: t_b is the k-th largest pre-activation (when positive), so a latent that fired in
    the batch has margin >= 0 and one that did not has margin < 0."""
    sae = make_sae("topk", d_in=D, d_sae=F, k=K, dtype="float64").eval()
    x = torch.randn(6, D, dtype=torch.float64)  # 6 rows fire at most 24 of the 32 latents
    _, margin = preact_extremes(sae, x)
    with torch.no_grad():
        fired = (sae.encode(x) > 0).any(0)
    assert bool((margin[fired] >= 0).all()) and bool((margin[~fired] < 0).all())
    assert 0 < int(fired.sum()) < F


def test_quantiles_are_taken_per_group_and_an_empty_group_is_left_out():
    sae = make_sae("topk", d_in=D, d_sae=F, k=K, dtype="float64")
    x = torch.randn(B, D, dtype=torch.float64)
    dead = torch.zeros(F, dtype=torch.bool)
    dead[::4] = True
    rec = preact_quantiles(sae, x, dead)
    assert sorted(rec) == sorted(KEYS) and sae.training  # training mode restored
    pre_max, margin = reference(sae, x)
    q = torch.tensor(QUANTILES, dtype=torch.float64)
    for group, mask in (("dead", dead), ("live", ~dead)):
        for stat, v in (("pre_max", pre_max), ("margin", margin)):
            want = torch.quantile(v[mask], q).tolist()
            got = [rec[f"{group}_{stat}_q{round(p * 100)}"] for p in QUANTILES]
            assert got == pytest.approx(want, rel=1e-6, abs=1e-6), (group, stat)
    assert not any(k.startswith("dead_") for k in preact_quantiles(sae, x, torch.zeros_like(dead)))


def test_every_metrics_record_of_a_transcoder_run_has_the_quantiles(tmp_path):
    """A tiny wide transcoder started the old way (random decoder, uncentred encoder) loses
    latents within 40 steps; its records carry the live quantiles at every log step, the dead ones
    where latents are dead, and those dead latents sit below their rows' thresholds."""
    g = torch.Generator().manual_seed(0)
    codes = (torch.rand(1200, 64, generator=g) < 0.06) * torch.rand(1200, 64, generator=g)
    data = {"x": codes @ torch.randn(64, 16, generator=g) + 1.0, "y": codes @ torch.randn(64, 16, generator=g)}
    cfg = TrainConfig.from_dict(dict(architecture="topk", hooks=["x"], target_hook="y", latents=256, k=4,
                                     lr=3e-3, batch_size=128, tokens=128 * 40, warmup_steps=5, log_every=5,
                                     checkpoint_every=0, init_sample_tokens=1024, b_dec_init="mean",
                                     sae_options={"decoder_init": "random", "b_enc_init": "zeros"}, out_dir=str(tmp_path / "run"),
                                     progress=False))
    train(cfg, data)
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(5, 41, 5))
    for r in recs:
        assert all(k in r for k in KEYS if k.startswith("live_")), r
        assert all(k in r for k in KEYS if k.startswith("dead_")) == (r["dead_fraction"] > 0), r
    last = recs[-1]
    assert last["dead_fraction"] > 0 and last["dead_margin_q90"] < 0 < last["live_margin_q90"]
