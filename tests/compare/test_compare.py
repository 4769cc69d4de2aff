"""compare: every registered type under one budget -> table + plots; metric oracles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from saelens_lite.cli import main
from saelens_lite.compare import (
    CompareConfig,
    auroc,
    compare,
    load_activations,
    model_specs,
    roc_curve,
    selectivity,
    sparse_probe_accuracy,
)
from saelens_lite.saes import REGISTRY

pytestmark = pytest.mark.usefixtures("one_thread")


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc

    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 20, 300) + 3.0, rng.integers(0, 20, 500).astype(float)  # many ties
    y = np.r_[np.ones(300), np.zeros(500)]
    assert auroc(pos, neg) == pytest.approx(roc_auc_score(y, np.r_[pos, neg]), abs=1e-12)
    fpr, tpr = roc_curve(pos, neg)
    sk_fpr, sk_tpr, _ = sk_roc(y, np.r_[pos, neg], drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert auroc([2.0, 3.0], [0.0, 1.0]) == 1.0 and auroc([1.0], [1.0]) == 0.5


def test_selectivity_and_sparse_probe():
    y = np.repeat(np.arange(4), 50)
    onehot = np.eye(4)[y] * 2.0
    assert selectivity(onehot, y) == 1.0
    assert selectivity(np.ones((200, 3)), y) == pytest.approx(0.25)
    z = np.c_[onehot, np.random.default_rng(0).normal(size=(200, 6))]
    assert sparse_probe_accuracy(z, y, k=1) == 1.0


def _tiny_cache(path, n_ctx=24, S=9, D=8):
    from saelens_lite.cache import CacheWriter

    g = np.random.default_rng(0)
    acts = g.normal(size=(n_ctx, S, D)).astype(np.float32)
    acts[:, 1:] += 0.8 * acts[:, :-1]
    w = CacheWriter.open(path, meta={}, hooks={"h": D}, dtype="float32", shard_tokens=64)
    ctx, pos = np.repeat(np.arange(n_ctx), S), np.tile(np.arange(1, S + 1), n_ctx)
    tok = g.integers(0, 5, n_ctx * S)
    w.append({"h": acts.reshape(-1, D)}, tok, ctx, pos)
    w.finalize()
    return acts, tok


def test_load_activations_rebuilds_contexts(tmp_path):
    acts, tok = _tiny_cache(tmp_path / "c")
    data = load_activations(tmp_path / "c", test_fraction=0.25)
    assert data.seq_train.shape == (18, 9, 8) and data.seq_test.shape == (6, 9, 8)
    np.testing.assert_array_equal(data.seq_test.numpy(), acts[18:])
    np.testing.assert_array_equal(data.x_train.numpy(), acts[:18].reshape(-1, 8))
    np.testing.assert_array_equal(data.y_test, tok.reshape(24, 9)[18:].reshape(-1))


def test_compare_on_activations_includes_conv1d(tmp_path):
    _tiny_cache(tmp_path / "c")
    cfg = CompareConfig(latents=16, k=2, frontier_ks=[], tokens=576, batch_size=36, ce_contexts=0)
    res = compare(tmp_path / "out", activations=tmp_path / "c", config=cfg)
    assert "conv-1d" in res["rows"] and res["rows"]["conv-1d"]["latents"] == 16
    assert res["plots"] == ["frontier.png"]
    assert (tmp_path / "out" / "frontier.png").stat().st_size > 0


def test_compare_on_digits_writes_table_and_plots_with_every_type(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--images", "digits", "--out", str(out), "--tokens", "1024", "--batch-size", "64",
               "--latents", "32", "--k", "4", "--frontier-ks", "2", "--option", "relu.l1_coeff=1"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    rows = res["rows"]
    archs = {opts["architecture"] for _, opts in model_specs_for_digits()}
    assert archs == set(REGISTRY)
    assert {"dense-under (F=16)", "dense-over (F=32)", "conv-2d", "vae", "denoising", "topk k=2"} <= set(rows)
    for name, r in rows.items():
        assert r["latents"] == (16 if name.startswith("dense-under") else 32), name
        for key in ("l0", "mse", "fvu", "dead_fraction", "selectivity", "probe_acc", "auroc"):
            assert np.isfinite(r[key]), (name, key)
    assert 0 <= rows["vae"]["auroc_elbo"] <= 1
    table = (out / "results.md").read_text()
    assert all(f"| {name} |" in table for name in rows)
    for png in ("frontier.png", "reconstructions.png", "vae_samples.png", "roc.png"):
        assert (out / png).stat().st_size > 1000, png
    assert "results.md" in capsys.readouterr().out


def model_specs_for_digits():
    from saelens_lite.compare import load_images

    return model_specs(load_images("digits"), CompareConfig(latents=32, k=4, frontier_ks=[2]))


def test_compare_config_is_validated():
    with pytest.raises(ValueError, match="latents"):
        CompareConfig(latents=0)
    with pytest.raises(ValueError, match="exactly one"):
        compare("x")
