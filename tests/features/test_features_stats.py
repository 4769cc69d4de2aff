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
    sae = SAE.from_config(SAEConfig(architecture=arch, d_in=64, d_sae=d_sae, k=6, hook_name=HOOK))
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
