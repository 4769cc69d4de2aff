"""Per-feature statistics of an SAE over an activation cache, in streaming passes, all features at once.

Shapes: N tokens in the cache, B rows in a batch, D model width, F features, K active features
per row, E entries (nonzero codes) in a chunk, T top examples kept per feature, Q quantile
buckets, S samples per bucket, H histogram bins.

With a_f(r) the code of feature f at cache row r (``sae.encode``):

  * ``count_F[f] = #{r : a_f(r) > 0}``, ``density_F = count_F / N`` (firing density),
  * ``sum_F[f] = sum_r a_f(r)``, ``mean_F = sum_F / count_F`` (mean over firing tokens),
  * ``max_F[f] = max_r a_f(r)`` (0 for a dead feature),
  * ``hist_FH[f, h] = #{r : a_f(r) > 0, floor(H a_f(r) / max_F[f]) = h}`` (the top value in bin H-1),
  * ``top_rows_FT[f]``: the T rows of largest a_f, descending,
  * ``quant_counts_FQ[f, q]``: firing rows in the bucket ``[q, q+1) * max_F[f] / Q`` and
    ``quant_rows_FQS[f, q]``: S of them drawn uniformly without replacement.

Pass 1 is the only pass that runs the SAE: ``encode_sparse`` over the cache in row order. It keeps
count / sum / max per feature and appends every nonzero code to a
:class:`~saelens_lite.features.table.CodeTable`. Pass 2 reads only that table, chunk by chunk,
and keeps per feature:
  * the linear histogram on [0, max_f] (one ``bincount`` over ``f * H + bin``),
  * the T largest activations: a segmented top-n of the chunk merged into an (F, T) buffer,
  * S uniform samples per bucket: the same segmented top-n on random keys (bottom-k sampling,
    equivalent to reservoir sampling; Cohen & Kaplan 2007).
Nothing loops over features in Python.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from saelens_lite.features.table import CodeTable, merge_topn, segment_topn
from saelens_lite.lm.hooks import warn_if_other_hook
from saelens_lite.util.validate import check_ints

log = logging.getLogger(__name__)


@dataclass
class StatsConfig:
    """Which hook is read and how much of each feature's distribution is kept."""

    hook: str | None = None
    """Cache hook to read; None means the SAE's cfg.hook_name (or the cache's only hook). A hook
    other than the SAE's cfg.hook_name logs a warning (the widths may match by chance)."""
    n_top: int = 20
    """Top activating examples kept per feature (SAEDashboard shows 20)."""
    n_quantiles: int = 6
    """Equal-width activation buckets of [0, max] sampled from, so weak activations are seen too."""
    n_per_quantile: int = 5
    """Uniform random examples kept per bucket."""
    n_bins: int = 40
    """Histogram bins on [0, max]."""
    batch_size: int = 4096
    """Cache rows encoded per SAE call in pass 1."""
    seed: int = 0
    """Seed of the quantile sampling."""

    def __post_init__(self) -> None:
        check_ints(self, ("n_top", "n_quantiles", "n_bins", "batch_size"), minimum=1)
        check_ints(self, ("n_per_quantile",), minimum=0)


@dataclass
class FeatureStats:
    """The statistics of all F features, as arrays (rows -1 / values 0 pad); the formulas are
    in the module docstring."""

    n_tokens: int
    """N: cache rows encoded."""
    count_F: np.ndarray
    """int64: tokens where the feature is > 0."""
    sum_F: np.ndarray
    """float64: sum of its activations."""
    max_F: np.ndarray
    """float32: its largest activation (0 for dead features)."""
    hist_FH: np.ndarray
    """int64: counts of nonzero activations in H equal bins of [0, max_f]."""
    top_vals_FT: np.ndarray
    """float32: the T largest activations, descending (0: fewer than T)."""
    top_rows_FT: np.ndarray
    """int64 cache rows of the T largest activations, descending (-1: fewer than T)."""
    quant_counts_FQ: np.ndarray
    """int64: nonzero activations in each bucket [q, q+1) * max_f / Q."""
    quant_vals_FQS: np.ndarray
    """float32: the sampled activations, strongest first within a bucket (0: padding)."""
    quant_rows_FQS: np.ndarray
    """int64 rows sampled uniformly from each bucket (-1: fewer than S)."""
    hook: str = ""
    """The cache hook the SAE read."""

    @property
    def density_F(self) -> np.ndarray:
        return self.count_F / max(self.n_tokens, 1)

    @property
    def mean_F(self) -> np.ndarray:
        return np.where(self.count_F > 0, self.sum_F / np.maximum(self.count_F, 1), 0.0)


def resolve_hook(sae, cache, hook: str | None) -> str:
    """``hook``, else the SAE's cfg.hook_name when the cache has it, else the cache's only hook."""
    if hook:
        return hook
    name = getattr(sae.cfg, "hook_name", "")
    if name in cache.hook_names:
        return name
    if len(cache.hook_names) == 1:
        return cache.hook_names[0]
    raise ValueError(f"the SAE's hook_name {name!r} is not in the cache; pass hook= one of "
                     f"{cache.hook_names}")


@torch.no_grad()
def encode_pass(sae, cache, hook: str, table: CodeTable, batch_size: int, progress: bool = True):
    """Pass 1: encode every cache row in order; returns (count_F, sum_F, max_F) as NumPy."""
    F_ = sae.cfg.d_sae
    count_F = np.zeros(F_, np.int64)
    sum_F = np.zeros(F_, np.float64)
    max_F = torch.zeros(F_, dtype=torch.float32)
    dtype, device = sae.W_enc.dtype, sae.W_enc.device
    start = 0
    bar = tqdm(total=cache.n_tokens, unit="tok", unit_scale=True, desc="feature stats",
               disable=not progress, dynamic_ncols=True)
    # buffer_shards=1: rows stream in order one shard at a time (RAM: one shard, not four)
    for x_BD in cache.iter_batches(hook, batch_size, shuffle=False, drop_last=False, dtype=dtype,
                                   buffer_shards=1):
        vals_BK, idx_BK = sae.encode_sparse(x_BD.to(device, non_blocking=True))
        vals_BK, idx_BK = vals_BK.float().cpu().numpy(), idx_BK.cpu().numpy()
        perm = np.argsort(idx_BK, axis=1)  # keys ascending within a row, rows ascending
        idx_BK = np.take_along_axis(idx_BK, perm, 1)
        vals_BK = np.take_along_axis(vals_BK, perm, 1)
        B = len(idx_BK)
        keys_BK = np.arange(start, start + B, dtype=np.int64)[:, None] * F_ + idx_BK
        if vals_BK.size and vals_BK.min() > 0:  # the common case for TopK: no copy
            f_E, v_E, k_E = idx_BK.reshape(-1), vals_BK.reshape(-1), keys_BK.reshape(-1)
        else:
            on = vals_BK > 0
            f_E, v_E, k_E = idx_BK[on], vals_BK[on], keys_BK[on]
        table.append(k_E, v_E)
        count_F += np.bincount(f_E, minlength=F_)
        sum_F += np.bincount(f_E, weights=v_E, minlength=F_)
        max_F.scatter_reduce_(0, torch.from_numpy(f_E), torch.from_numpy(v_E), reduce="amax")
        start += B
        bar.update(B)
    bar.close()
    table.close()
    return count_F, sum_F, max_F.numpy()


def table_pass(table: CodeTable, max_F: np.ndarray, cfg: StatsConfig, chunk: int = 1 << 18):
    """Pass 2 over the code table, chunk by chunk: (hist_FH, top_vals_FT, top_rows_FT,
    quant_counts_FQ, quant_vals_FQS, quant_rows_FQS) as in :class:`FeatureStats`."""
    F_, H, T, Q, S = table.F, cfg.n_bins, cfg.n_top, cfg.n_quantiles, max(cfg.n_per_quantile, 1)
    rng = np.random.default_rng(cfg.seed)
    hist, qcount = np.zeros(F_ * H, np.int64), np.zeros(F_ * Q, np.int64)
    top = (np.full((F_, T), -np.inf, np.float32), np.full((F_, T), -1, np.int64))
    # per bucket: random keys (the sample keeps the S largest), rows, values
    samples = (np.full((F_ * Q, S), -np.inf, np.float32), np.full((F_ * Q, S), -1, np.int64),
               np.zeros((F_ * Q, S), np.float32))
    inv_max = (1.0 / np.maximum(max_F, 1e-30)).astype(np.float32)
    for a in range(0, table.size, chunk):
        keys, vals = np.asarray(table.keys[a:a + chunk]), np.asarray(table.vals[a:a + chunk])
        f, rows = keys % F_, keys // F_
        frac = vals * inv_max[f]
        hist += np.bincount(f * H + np.clip((frac * H).astype(np.int64), 0, H - 1), minlength=F_ * H)
        seg_q = f * Q + np.clip((frac * Q).astype(np.int64), 0, Q - 1)
        qcount += np.bincount(seg_q, minlength=F_ * Q)
        top = _update_top(top, f, vals, rows)
        if cfg.n_per_quantile:
            samples = _update_samples(samples, seg_q, vals, rows, rng)
    top_v, top_r = top
    q_val, q_row = _order_samples(samples, cfg.n_per_quantile)
    return (hist.reshape(F_, H), np.where(top_r >= 0, top_v, 0).astype(np.float32), top_r,
            qcount.reshape(F_, Q), q_val.reshape(F_, Q, -1), q_row.reshape(F_, Q, -1))


def _update_top(top: tuple, f_E: np.ndarray, vals_E: np.ndarray, rows_E: np.ndarray) -> tuple:
    """Merge a chunk into the (F, T) buffers of largest activations. Only entries that beat their
    feature's current T-th place can enter; after the first chunks that leaves few to sort."""
    top_v, top_r = top
    F_, T = top_v.shape
    cand = np.flatnonzero(vals_E > top_v[:, -1][f_E])
    v, r = segment_topn(f_E[cand], vals_E[cand], rows_E[cand], F_, T)
    return merge_topn(top_v, top_r, v, r, T)


def _update_samples(samples: tuple, seg_E: np.ndarray, vals_E: np.ndarray, rows_E: np.ndarray, rng) -> tuple:
    """Bottom-k sampling per bucket: each entry draws a uniform key and each bucket keeps the S
    entries of largest key seen so far, a uniform sample without replacement of its members."""
    q_key, q_row, q_val = samples
    n_seg, S = q_key.shape
    rnd = rng.random(len(seg_E), dtype=np.float32)
    pos = np.flatnonzero(rnd > q_key[:, -1][seg_E])  # entry positions: row and value
    k, p = segment_topn(seg_E[pos], rnd[pos], pos, n_seg, S)
    ok = p >= 0
    new_r = np.where(ok, rows_E[np.maximum(p, 0)], -1)
    new_v = np.where(ok, vals_E[np.maximum(p, 0)], 0).astype(np.float32)
    return merge_topn(q_key, q_row, k, new_r, S, (q_val, new_v))


def _order_samples(samples: tuple, n_per_quantile: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, rows) of each bucket's samples, strongest first (none when not sampled)."""
    _, q_row, q_val = samples
    if not n_per_quantile:
        return q_val[:, :0], q_row[:, :0]
    o = np.argsort(-np.where(q_row >= 0, q_val, -1), axis=1, kind="stable")
    return np.take_along_axis(q_val, o, 1), np.take_along_axis(q_row, o, 1)


def compute_feature_stats(sae, cache, cfg: StatsConfig, *, workdir: str | Path | None = None,
                          progress: bool = True) -> tuple[FeatureStats, CodeTable]:
    """Both passes. Returns the statistics and the (memory-mapped) code table, which
    :func:`~saelens_lite.features.examples.example_windows` reads; call ``table.delete()`` when done."""
    hook = resolve_hook(sae, cache, cfg.hook)
    if cache.d(hook) != sae.cfg.d_in:
        raise ValueError(f"cache hook {hook!r} has width {cache.d(hook)}, the SAE reads d_in={sae.cfg.d_in}")
    warn_if_other_hook(sae, hook, "shown")
    root = Path(tempfile.mkdtemp(prefix="feature-codes-", dir=workdir))
    table = CodeTable(root, sae.cfg.d_sae)
    try:
        count_F, sum_F, max_F = encode_pass(sae, cache, hook, table, cfg.batch_size, progress)
        hist, top_v, top_r, qc, qv, qr = table_pass(table, max_F, cfg)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    stats = FeatureStats(cache.n_tokens, count_F, sum_F, max_F, hist, top_v, top_r, qc, qv, qr, hook)
    return stats, table


__all__ = ["StatsConfig", "FeatureStats", "compute_feature_stats", "resolve_hook", "encode_pass",
           "table_pass"]
