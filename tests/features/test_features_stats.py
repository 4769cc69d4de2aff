"""Feature statistics agree with brute force: dense-encode every cache row, then count, max,
histogram, argsort per feature with NumPy, and recompute the windows from the cache."""

import numpy as np
import pytest
import torch

from saelens_lite.features.examples import example_windows
from saelens_lite.features.stats import StatsConfig, compute_feature_stats

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    from saelens_lite.cache.harvest import HarvestConfig, harvest

    cfg = HarvestConfig(model="tiny-llama", hooks=[HOOK], tokens=2500, context_size=48, batch_size=8,
                        shard_tokens=700)  # several shards, a short last one
    return harvest(cfg, tmp_path_factory.mktemp("feats") / "cache", progress=False)


def make_sae(arch: str, d_sae: int = 96, seed: int = 0):
    from saelens_lite.saes import SAE, SAEConfig

    torch.manual_seed(seed)
    sae = SAE.from_config(SAEConfig.build(architecture=arch, d_in=64, d_sae=d_sae, k=6, hook_name=HOOK))
    with torch.no_grad():  # spread the features' scales so maxima and densities differ
        sae.W_enc.mul_(torch.rand(d_sae) * 2 + 0.5)
        if arch == "relu":
            sae.b_enc.fill_(-0.05)
    return sae.eval()


def dense_acts(sae, cache) -> np.ndarray:
    x = torch.from_numpy(np.asarray(cache.activations(HOOK)[:], np.float32))
    with torch.no_grad():
        return sae.encode(x).numpy()


@pytest.fixture(scope="module", params=["topk", "relu"])
def computed(request, tiny_cache, tmp_path_factory):
    sae = make_sae(request.param)
    cfg = StatsConfig(n_top=7, n_quantiles=4, n_per_quantile=3, n_bins=10, batch_size=333)
    stats, table = compute_feature_stats(sae, tiny_cache, cfg, workdir=tmp_path_factory.mktemp("w"),
                                         progress=False)
    yield sae, cfg, stats, table, dense_acts(sae, tiny_cache)
    table.delete()


def test_density_max_mean_match_dense_encoding(computed):
    _, _, stats, _, A = computed
    np.testing.assert_array_equal(stats.count_F, (A > 0).sum(0))
    np.testing.assert_allclose(stats.max_F, A.max(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.density_F, (A > 0).mean(0))
    mean = np.where((A > 0).any(0), A.sum(0) / np.maximum((A > 0).sum(0), 1), 0)
    np.testing.assert_allclose(stats.mean_F, mean, rtol=1e-4, atol=1e-6)
    assert stats.n_tokens == A.shape[0]


def test_histogram_matches_binned_dense_activations(computed):
    _, cfg, stats, _, A = computed
    H = cfg.n_bins
    for f in range(A.shape[1]):
        a = A[:, f][A[:, f] > 0]
        if not len(a):
            assert stats.hist_FH[f].sum() == 0
            continue
        bins = np.clip((a.astype(np.float32) * np.float32(1 / max(a.max(), 1e-30)) * H).astype(int), 0, H - 1)
        want = np.bincount(bins, minlength=H)
        # float rounding may move a value sitting on a bin edge by one bin
        assert np.abs(np.cumsum(stats.hist_FH[f]) - np.cumsum(want)).max() <= 1
        assert stats.hist_FH[f].sum() == len(a)


def test_top_examples_match_argsort_per_feature(computed):
    _, cfg, stats, _, A = computed
    for f in range(A.shape[1]):
        order = np.argsort(-A[:, f], kind="stable")[: cfg.n_top]
        order = order[A[order, f] > 0]
        n = len(order)
        np.testing.assert_allclose(stats.top_vals_FT[f, :n], A[order, f], rtol=1e-5, atol=1e-6)
        rows = stats.top_rows_FT[f, :n]  # identical contexts tie: check the rows hold those values
        assert len(set(rows)) == n
        np.testing.assert_allclose(A[rows, f], stats.top_vals_FT[f, :n], rtol=1e-5, atol=1e-6)
        assert (stats.top_rows_FT[f, n:] == -1).all() and (stats.top_vals_FT[f, n:] == 0).all()


def test_quantile_samples_are_uniform_members_of_their_bucket(computed):
    _, cfg, stats, _, A = computed
    Q = cfg.n_quantiles
    for f in range(A.shape[1]):
        a = A[:, f]
        mx = a.max()
        bucket = np.clip((a / max(mx, 1e-30) * Q).astype(int), 0, Q - 1)
        for q in range(Q):
            members = np.flatnonzero((a > 0) & (bucket == q))
            assert abs(stats.quant_counts_FQ[f, q] - len(members)) <= 1  # edge rounding
            rows = stats.quant_rows_FQS[f, q]
            got = rows[rows >= 0]
            assert len(got) == min(cfg.n_per_quantile, stats.quant_counts_FQ[f, q])
            assert len(set(got)) == len(got)
            np.testing.assert_allclose(stats.quant_vals_FQS[f, q, : len(got)], a[got], rtol=1e-5)
            assert ((a[got] >= q * mx / Q * (1 - 1e-5)) & (a[got] <= (q + 1) * mx / Q * (1 + 1e-5))).all()


def test_windows_show_the_context_and_the_same_features_activations(computed, tiny_cache):
    _, cfg, stats, table, A = computed
    ctx, tok = tiny_cache.context_ids, tiny_cache.token_ids
    rows = stats.top_rows_FT[:, :3]
    feats = np.broadcast_to(np.arange(rows.shape[0])[:, None], rows.shape)
    B, after = 5, 2
    t, a, v = example_windows(table, tiny_cache, rows, feats, B, after)
    for f in range(rows.shape[0]):
        for j in range(3):
            r = rows[f, j]
            if r < 0:
                assert not v[f, j].any()
                continue
            assert v[f, j, B] and a[f, j, B] == pytest.approx(A[r, f], rel=1e-5)
            for o in range(-B, after + 1):
                rr = r + o
                inside = 0 <= rr < len(ctx) and ctx[rr] == ctx[r]
                assert v[f, j, B + o] == inside
                if inside:
                    assert t[f, j, B + o] == tok[rr]
                    assert a[f, j, B + o] == pytest.approx(A[rr, f], rel=1e-5, abs=1e-7)


def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="n_top=0"):
        StatsConfig(n_top=0)
    with pytest.raises(ValueError, match="n_per_quantile=-1"):
        StatsConfig(n_per_quantile=-1)


# ---------------------------------------------------------------- a synthetic cache, exact oracles

N_SYN, F_SYN, CTX = 600, 6, 25


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A cache whose codes are known without running a model: a ReLU SAE with W_enc = I and zero
    biases codes x as relu(x). Feature 0 is dead, 1 fires once, 2 has tied values, 3-5 spread."""
    from saelens_lite.cache import ActivationCache, CacheWriter
    from saelens_lite.saes import SAE, SAEConfig

    rng = np.random.default_rng(0)
    x_NF = rng.normal(size=(N_SYN, F_SYN)).astype(np.float32)
    x_NF[:, 0] = -1.0
    x_NF[:, 1] = -1.0
    x_NF[417, 1] = 2.5
    x_NF[:, 2] = np.where(rng.random(N_SYN) < 0.2, 1.0, -1.0)
    x_NF[:, 5] = rng.exponential(size=N_SYN) * (rng.random(N_SYN) < 0.6)
    path = tmp_path_factory.mktemp("syn") / "cache"
    w = CacheWriter.open(path, meta={"test": 1}, hooks={"h": F_SYN}, dtype="float32", shard_tokens=128)
    w.append({"h": x_NF}, token_ids=np.arange(N_SYN) % 50, context_idx=np.arange(N_SYN) // CTX,
             position=np.arange(N_SYN) % CTX)
    w.finalize()
    sae = SAE.from_config(SAEConfig.build(architecture="relu", d_in=F_SYN, d_sae=F_SYN, hook_name="h"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(F_SYN))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return ActivationCache(path), sae.eval(), np.maximum(x_NF, 0)


def test_synthetic_statistics_equal_numpy_on_the_known_codes(synthetic, tmp_path):
    cache, sae, A_NF = synthetic
    cfg = StatsConfig(n_top=5, n_quantiles=3, n_per_quantile=4, n_bins=8, batch_size=100)
    stats, table = compute_feature_stats(sae, cache, cfg, workdir=tmp_path, progress=False)
    table.delete()
    on_NF = A_NF > 0
    np.testing.assert_array_equal(stats.count_F, on_NF.sum(0))
    np.testing.assert_array_equal(stats.max_F, A_NF.max(0))
    np.testing.assert_allclose(stats.sum_F, A_NF.astype(np.float64).sum(0), rtol=1e-12)
    np.testing.assert_array_equal(stats.density_F, on_NF.mean(0))
    assert stats.hook == "h" and stats.n_tokens == N_SYN
    # dead: nothing kept; fired once: one top row and one sample, in the top bucket
    assert stats.max_F[0] == 0 and (stats.top_rows_FT[0] == -1).all() and stats.hist_FH[0].sum() == 0
    assert stats.top_rows_FT[1].tolist() == [417, -1, -1, -1, -1] and stats.top_vals_FT[1, 0] == 2.5
    assert stats.hist_FH[1].tolist() == [0] * 7 + [1] and stats.quant_counts_FQ[1].tolist() == [0, 0, 1]
    # ties: every top row holds the tied value, all in the last bin
    assert set(A_NF[stats.top_rows_FT[2], 2]) == {1.0} and stats.hist_FH[2, -1] == on_NF[:, 2].sum()
    for f in (3, 4, 5):
        a = A_NF[:, f]
        np.testing.assert_array_equal(stats.top_vals_FT[f], np.sort(a)[::-1][:5])
        np.testing.assert_array_equal(a[stats.top_rows_FT[f]], stats.top_vals_FT[f])
        frac = a[a > 0] * np.float32(1 / a.max())
        np.testing.assert_array_equal(stats.hist_FH[f], np.bincount(np.minimum((frac * 8).astype(int), 7),
                                                                    minlength=8))
        np.testing.assert_array_equal(stats.quant_counts_FQ[f], np.bincount(np.minimum((frac * 3).astype(int),
                                                                                       2), minlength=3))
        for q in range(3):
            rows = stats.quant_rows_FQS[f, q][stats.quant_rows_FQS[f, q] >= 0]
            assert len(rows) == min(4, stats.quant_counts_FQ[f, q]) == len(set(rows))
            b = np.minimum((a[rows] * np.float32(1 / a.max()) * 3).astype(int), 2)
            assert (b == q).all()
            np.testing.assert_array_equal(stats.quant_vals_FQS[f, q, :len(rows)], a[rows])
