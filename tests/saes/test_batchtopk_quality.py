"""BatchTopK ranks pre-activations relative to each token's RMS (SAEConfig.relative_threshold):
the selection, the threshold and inference against a float64 reference, the input-scale fold,
configs saved before the rule, and ground-truth recovery close to TopK's."""

import pytest
import torch
from helpers import make_sae

from saelens_lite.evals.synthetic import SyntheticConfig, run_benchmark
from saelens_lite.saes import SAE, SAEConfig

pytestmark = pytest.mark.usefixtures("one_thread")

D, F, K = 16, 48, 4


def make(**kw) -> SAE:  # non-trivial biases so every term of the rule is exercised
    return make_sae("batchtopk", d_in=D, d_sae=F, k=K, **kw)


def data(n=64, seed=0):
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(seed))
    x[3] *= 30.0  # a high-norm token: the raw rule would give it most of the slots
    return x


def reference_scores(sae, x):
    """(pre_BF, score_BF) in float64: pre = (x - b_dec) W_enc + b_enc, score = pre / r,
    r = ||x - b_dec|| / sqrt(D)."""
    W_enc, b_enc, b_dec = (p.detach().double() for p in (sae.W_enc, sae.b_enc, sae.b_dec))
    xc = x.double() - b_dec
    pre = xc @ W_enc + b_enc
    return pre, pre / (xc.norm(dim=1, keepdim=True) / D**0.5)


def test_relative_rule_is_the_default():
    assert SAEConfig.build(architecture="batchtopk").relative_threshold is True


def test_selection_is_the_flat_top_bk_of_pre_over_rms():
    sae, x = make(), data()
    rows, cols, vals, _ = sae._batch_topk(x)
    pre, score = reference_scores(sae, x)
    ref_s, ref_flat = score.reshape(-1).topk(len(x) * K)
    keep = pre.reshape(-1)[ref_flat] > 0
    assert sorted((rows * F + cols).tolist()) == sorted(ref_flat[keep].tolist())
    assert bool((rows.diff() >= 0).all())
    torch.testing.assert_close(vals.double(), pre[rows, cols], rtol=1e-5, atol=1e-5)
    assert (rows == 3).sum() <= 2 * K  # the high-norm token no longer takes the batch's slots


def test_threshold_is_min_kept_score_and_inference_applies_it_per_token():
    sae, x = make(), data()
    sae.training_forward(x)
    pre, score = reference_scores(sae, x)
    ref_s, ref_flat = score.reshape(-1).topk(len(x) * K)
    theta = ref_s[pre.reshape(-1)[ref_flat] > 0].min()
    assert sae.threshold.item() == pytest.approx(theta.item(), rel=1e-5)
    x2 = data(200, seed=1)
    pre2, score2 = reference_scores(sae, x2)
    ref = pre2 * (score2 > sae.threshold.double())
    torch.testing.assert_close(sae.encode(x2).double(), ref, rtol=1e-5, atol=1e-6)
    assert sae.encode(x2).shape == (200, F)
    torch.testing.assert_close(sae.encode(x2.view(10, 20, D)).view(200, F), sae.encode(x2))


def test_a_token_scaled_about_b_dec_keeps_its_latents():
    """With b_enc = 0 the score of b_dec + a v does not depend on a > 0."""
    sae, x = make(), data()
    with torch.no_grad():
        sae.b_enc.zero_()
    sae.training_forward(x)
    y = sae.b_dec.detach() + 25.0 * (x[:8] - sae.b_dec.detach())
    assert torch.equal(sae.encode(x[:8]) != 0, sae.encode(y) != 0)


def test_folding_the_input_scale_keeps_the_activations():
    sae, x = make(), data()
    c = 3.0
    sae.training_forward(c * x)
    acts = sae.encode(c * x)
    assert (acts != 0).any()
    sae.fold_input_scale_(c)
    torch.testing.assert_close(sae.encode(x), acts, rtol=1e-5, atol=1e-5)


def test_configs_saved_before_the_rule_load_with_the_raw_threshold(tmp_path):
    sae, x = make(), data()
    sae.training_forward(x)
    d = sae.cfg.to_dict()
    del d["relative_threshold"]
    old = SAE.from_config(SAEConfig.from_dict(d))
    old.load_state_dict(sae.state_dict())
    assert old.cfg.relative_threshold is False
    pre = old.pre_acts(x)
    torch.testing.assert_close(old.encode(x), pre * (pre > old.threshold))
    sae.save(tmp_path / "s")
    assert SAE.load(tmp_path / "s").cfg.relative_threshold is True


def test_relative_threshold_must_be_a_bool():
    with pytest.raises(ValueError, match="relative_threshold"):
        SAEConfig.build(architecture="batchtopk", relative_threshold="yes")


def test_short_batchtopk_training_recovers_most_features():
    """Ground truth (toy superposition, token norms vary with the number of active features):
    here the raw-threshold rule recovers 60% of the features (mmcs 0.90), the relative rule
    97% (mmcs 0.99), TopK 0.8+ (tests/evals/test_evals_synthetic.py)."""
    cfg = SyntheticConfig(d=32, n_features=128, mean_active=3.0)
    (row,) = run_benchmark(
        ["batchtopk"],
        cfg=cfg,
        n_train=50_000,
        train_options={"tokens": 600_000, "batch_size": 2048},
        n_eval=5000,
    )
    assert row["recovered"] >= 0.85 and row["mmcs"] > 0.95, row
    assert 0.5 * 3 < row["l0"] < 2 * 3, row  # the inference threshold keeps L0 near k


@pytest.mark.parametrize("relative", [True, False])
def test_finish_training_sets_the_threshold_that_keeps_k_per_token(relative):
    """theta = the (N k)-th largest positive score of the sample (float64 reference), so
    inference on the sample keeps k latents per token on average, one tie aside."""
    sae, x = make(relative_threshold=relative), data(256, seed=4)
    sae.threshold.fill_(123.0)  # a stale EMA
    sae.finish_training_(x)
    pre, score = reference_scores(sae, x)
    score = score if relative else pre
    kth = score.flatten().topk(len(x) * K).values.min()
    assert sae.threshold.item() == pytest.approx(kth.item(), rel=1e-5)
    l0 = (sae.encode(x) > 0).sum(-1).float().mean().item()
    assert len(x) * K - 1 <= l0 * len(x) <= len(x) * K
    small = make(relative_threshold=relative)
    small.finish_training_(x, max_elements=32 * F)  # capped at 32 tokens: their own top 32 k
    pre32, score32 = reference_scores(small, x[:32])
    s32 = score32 if relative else pre32
    assert small.threshold.item() == pytest.approx(s32.flatten().topk(32 * K).values.min().item(), rel=1e-5)


def test_trained_batchtopk_keeps_about_k_per_token_at_inference(tmp_path):
    """The trainer calibrates the threshold at the end (finish_training_): inference L0 on
    held-out tokens of the same distribution is close to k, where the lagging EMA of a short
    run left it far below."""
    from saelens_lite.training import TrainConfig, train

    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(64, D, generator=g)
    codes = torch.rand(6000, 64, generator=g) * (torch.rand(6000, 64, generator=g) < 0.08)
    x = codes @ dirs + 0.05 * torch.randn(6000, D, generator=g)
    sae = train(TrainConfig(sae=SAEConfig.build(architecture="batchtopk", d_sae=F, k=K), tokens=256 * 40,
                            batch_size=256, out_dir=str(tmp_path / "r"), progress=False),
                x[:5000])
    l0 = (sae.encode(x[5000:]) > 0).sum(-1).float().mean().item()
    assert abs(l0 - K) < 0.5, l0
    sae.threshold.fill_(-1)  # sanity: the calibration really is what sets it
    sae.finish_training_(x[:5000])
    assert sae.threshold.item() > 0
