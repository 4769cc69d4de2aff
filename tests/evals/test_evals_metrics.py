"""Reconstruction metrics agree with a float64 numpy oracle written independently here, stream
over a cache in bounded batches, and write the report files."""

import json

import numpy as np
import pytest
import torch
from helpers import write_cache

from saelens_lite.evals import EvalConfig, evaluate, format_summary
from saelens_lite.evals.metrics import reconstruction_stats
from saelens_lite.saes import REGISTRY, SAE, SAEConfig


def _oracle(x, acts, x_hat, dense_threshold=0.1, first_batch=None):
    x, acts, x_hat = (np.asarray(a, dtype=np.float64) for a in (x, acts, x_hat))
    err = ((x - x_hat) ** 2).sum()
    total = ((x - x.mean(axis=0)) ** 2).sum()
    nx, nh = np.linalg.norm(x, axis=1), np.linalg.norm(x_hat, axis=1)
    density = (acts != 0).mean(axis=0)
    typ = nx <= 5 * np.median(nx[:first_batch])  # the first batch's median norm sets the cut
    xt, ht = x[typ], x_hat[typ]
    return {
        "fvu_typical": ((xt - ht) ** 2).sum() / ((xt - xt.mean(axis=0)) ** 2).sum(),
        "outlier_tokens": int((~typ).sum()),
        "l0": (acts != 0).sum(axis=1).mean(),
        "mse": ((x - x_hat) ** 2).mean(),
        "fvu": err / total,
        "explained_variance": 1 - err / total,
        "cosine_sim": np.mean((x * x_hat).sum(1) / (nx * nh)),
        "l2_ratio": np.mean(nh / nx),
        "dead_fraction": np.mean(density == 0),
        "dense_fraction": np.mean(density > dense_threshold),
    }


def _sae(arch="topk", d=16, f=64, k=4, seed=0):
    torch.manual_seed(seed)
    sae = SAE.from_config(SAEConfig.build(architecture=arch, d_in=d, d_sae=f, k=k, hook_name="h"))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.5)
    return sae.eval()


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_metrics_match_float64_oracle(arch):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(1000, 16)) * rng.uniform(0.5, 3, size=16) + 5.0).astype(np.float32)
    x[[3, 500, 901]] *= 40  # outlier-norm tokens (one in the first batch): out of fvu_typical
    sae = _sae(arch)
    # The SAE runs on the same batches of 137 rows (an untrained batchtopk encodes per batch);
    # the oracle then sees all rows at once, the streamed (Chan-merged) statistics must agree.
    with torch.no_grad():
        acts = torch.cat([sae.encode(torch.from_numpy(x[i:i + 137])) for i in range(0, 1000, 137)])
        x_hat = sae.decode(acts)
    want = _oracle(x, acts.numpy(), x_hat.numpy(), first_batch=137)
    got = reconstruction_stats(sae, x, batch_size=137, progress=False).result()
    assert want["outlier_tokens"] == 3 and want["fvu_typical"] != pytest.approx(want["fvu"])
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


def test_evaluate_on_cache_and_report(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(700, 16)).astype(np.float32)
    write_cache(tmp_path / "c", {"h": x})
    sae = _sae()
    m = evaluate(sae, tmp_path / "c", EvalConfig(n_tokens=500, batch_size=64,
                                                 out_dir=tmp_path / "ev", progress=False))
    with torch.no_grad():
        acts = sae.encode(torch.from_numpy(x[:500]))
        want = _oracle(x[:500], acts.numpy(), sae.decode(acts).numpy())
    assert m["n_tokens"] == 500 and m["hook"] == "h"
    assert m["fvu"] == pytest.approx(want["fvu"], rel=1e-5)
    assert m["ce_loss_recovered"] is None  # no model known: downstream keys present but empty
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in ("l0", "fvu", "explained_variance", "dead_fraction", "ce_loss_recovered", "kl_div", "mse",
                "cosine_sim", "l2_ratio", "dense_fraction", "ce_loss_clean", "ce_loss_sae", "ce_loss_zero"):
        assert key in saved
    png = (tmp_path / "ev" / "feature_density.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert np.load(tmp_path / "ev" / "feature_density.npy").shape == (64,)
    assert "| FVU |" in (tmp_path / "ev" / "summary.md").read_text()
    assert "L0" in format_summary(m)


def test_width_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="d_in=16"):
        evaluate(_sae(), np.zeros((10, 8), np.float32), EvalConfig(progress=False))
