"""The toy-superposition generator has the statistics it promises, the ground-truth scores are
right on known dictionaries, and a short TopK training recovers most features."""

import numpy as np
import pytest
import torch

from saelens_lite.evals.synthetic import (
    SyntheticConfig,
    SyntheticData,
    firing_f1,
    mmcs,
    run_benchmark,
    score_sae,
)


def test_generator_statistics():
    cfg = SyntheticConfig(d=32, n_features=256, mean_active=4.0, magnitude_spread=0.5)
    data = SyntheticData(cfg)
    assert torch.allclose(data.W_true_GD.norm(dim=1), torch.ones(256), atol=1e-5)
    x, c = data.sample(40_000, seed=3)
    assert x.shape == (40_000, 32) and c.shape == (40_000, 256)
    on = c != 0
    assert on.sum(1).double().mean().item() == pytest.approx(4.0, rel=0.03)
    assert on.double().mean(0).numpy() == pytest.approx(np.full(256, 4 / 256), abs=0.005)
    vals = c[on]
    assert vals.min() >= 0.5 - 1e-6 and vals.max() <= 1.5 + 1e-6
    torch.testing.assert_close(x, c @ data.W_true_GD)
    torch.testing.assert_close(data.sample(100, seed=5)[0], data.sample(100, seed=5)[0])  # deterministic
    assert not torch.equal(data.sample(100, seed=5)[0], data.sample(100, seed=6)[0])


def test_correlation_and_frequency_decay():
    data = SyntheticData(SyntheticConfig(d=16, n_features=64, mean_active=4.0, correlation=0.8, group_size=8,
                                         frequency_decay=1.0))
    _, c = data.sample(40_000, seed=1)
    on = (c != 0).double()
    rate = on.mean(0)
    assert rate[0] > 3 * rate[-1]  # decaying rates
    corr = torch.corrcoef(on.T)
    same = corr[0, 1:8].mean()
    other = corr[0, 8:].mean()
    assert same > 0.1 and abs(other) < 0.03


def test_scores_on_known_dictionaries():
    W = SyntheticData(SyntheticConfig(d=64, n_features=512)).W_true_GD
    assert mmcs(W, W) == pytest.approx(1.0, abs=1e-6)
    assert mmcs(W, W[torch.randperm(512)] * 3.0) == pytest.approx(1.0, abs=1e-6)  # order, scale free
    random = torch.randn(512, 64, generator=torch.Generator().manual_seed(9))
    assert mmcs(W, random) < 0.6
    on = torch.rand(1000, 5) < 0.3
    assert firing_f1(on, on).numpy() == pytest.approx(np.ones(5))
    assert firing_f1(on, torch.zeros(1000, 5, dtype=torch.bool)).numpy() == pytest.approx(np.zeros(5))


def test_true_dictionary_as_an_sae_scores_perfectly():
    """An SAE built from the truth (decoder = W_true) has MMCS 1 and recovers every feature."""
    from saelens_lite.saes import SAE, SAEConfig

    cfg = SyntheticConfig(d=64, n_features=128, mean_active=2.0)
    data = SyntheticData(cfg)
    sae = SAE.from_config(SAEConfig(architecture="topk", d_in=64, d_sae=128, k=2))
    with torch.no_grad():
        sae.W_dec.copy_(data.W_true_GD)
    s = score_sae(sae, data, n_eval=2000)
    assert s["mmcs"] == pytest.approx(1.0, abs=1e-6) and s["recovered"] == 1.0


def test_short_topk_training_recovers_most_features():
    cfg = SyntheticConfig(d=32, n_features=128, mean_active=3.0)
    (row,) = run_benchmark(["topk"], cfg=cfg, n_train=50_000, train_options={"tokens": 600_000, "batch_size": 2048},
                           n_eval=5000)
    assert row["recovered"] > 0.8 and row["mmcs"] > 0.9, row
