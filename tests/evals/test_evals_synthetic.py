"""The toy-superposition generator has the statistics it promises, the ground-truth scores are
right on known dictionaries, and a short TopK training recovers most features."""

import numpy as np
import pytest
import torch

from saelens_lite.evals.synthetic import (
    SyntheticConfig,
    SyntheticData,
    firing_f1,
    format_table,
    max_cosine,
    mmcs,
    run_benchmark,
    score_sae,
    skip_reason,
)
from saelens_lite.saes import REGISTRY, SAE, SAEConfig


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
    cfg = SyntheticConfig(d=64, n_features=128, mean_active=2.0)
    data = SyntheticData(cfg)
    sae = SAE.from_config(SAEConfig.build(architecture="topk", d_in=64, d_sae=128, k=2))
    with torch.no_grad():
        sae.W_dec.copy_(data.W_true_GD)
    s = score_sae(sae, data, n_eval=2000)
    assert s["mmcs"] == pytest.approx(1.0, abs=1e-6) and s["recovered"] == 1.0


def test_short_topk_training_recovers_most_features():
    cfg = SyntheticConfig(d=32, n_features=128, mean_active=3.0)
    (row,) = run_benchmark(["topk"], cfg=cfg, n_train=50_000, train_options={"tokens": 600_000, "batch_size": 2048},
                           n_eval=5000)
    assert row["recovered"] > 0.8 and row["mmcs"] > 0.9, row


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_every_architecture_is_scored_or_says_why_not(arch):
    """What `bench synthetic` does per architecture, on an untrained model: a per-token (D, F)
    model gets finite scores, any other gets a reason (and would crash max_cosine)."""
    cfg = SyntheticConfig(d=16, n_features=32, mean_active=2.0)
    torch.manual_seed(0)
    sae = SAE.from_config(SAEConfig.build(architecture=arch, d_in=16, d_sae=64, k=2))
    reason = skip_reason(arch)
    if REGISTRY[arch].tokenwise:
        assert reason is None
        s = score_sae(sae, SyntheticData(cfg), n_eval=300)
        assert all(np.isfinite(v) for v in s.values()), s
        assert 0 < s["mmcs"] <= 1 and 0 <= s["firing_f1"] <= 1
    else:
        assert "no single decoder direction" in reason
        with pytest.raises(ValueError, match="one direction per latent"):
            score_sae(sae, SyntheticData(cfg), n_eval=300)


def test_max_cosine_refuses_a_weight_that_is_not_one_row_per_latent():
    W = torch.randn(8, 4)
    with pytest.raises(ValueError, match=r"W_FD of shape \(6, 4, 3\): must be \(F, D=4\)"):
        max_cosine(W, torch.randn(6, 4, 3))
    with pytest.raises(ValueError, match=r"must be \(F, D=4\)"):
        max_cosine(W, torch.randn(6, 5))


def test_a_skipped_architecture_is_a_table_row_with_its_reason():
    rows = [{"architecture": "topk", "mmcs": 0.9, "recovered": 0.5, "firing_f1": 0.7, "l0": 2.0,
             "fvu": 0.1, "dead_fraction": 0.0, "seconds": 1.0},
            {"architecture": "conv", "skipped": "why not"}]
    lines = format_table(rows).splitlines()
    assert lines[2] == "| topk | 0.900 | 50.0% | 0.700 | 2.00 | 0.1000 | 0.0% | 1.0 |"
    assert lines[3].startswith("| conv | skipped: why not |")
    assert lines[3].count("|") == lines[0].count("|")  # the same columns as the header


def test_run_benchmark_lists_a_skipped_architecture_without_training_it(monkeypatch):
    import saelens_lite.training as training

    skipped = [a for a in sorted(REGISTRY) if skip_reason(a)]
    if not skipped:
        pytest.skip("every registered architecture is scored")
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained a skipped architecture"))
    rows = run_benchmark(skipped, cfg=SyntheticConfig(d=16, n_features=32, mean_active=2.0), n_train=100,
                         n_eval=100)
    assert rows == [{"architecture": a, "skipped": skip_reason(a)} for a in skipped]
    with pytest.raises(ValueError, match="n_eval=0: must be an integer >= 1"):
        run_benchmark(skipped, n_train=100, n_eval=0)
