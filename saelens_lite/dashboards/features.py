"""Every feature's story, computed in streaming passes over an activation cache, all features at once.

Shapes: N tokens in the cache, B rows in a batch, D model width, F features, K active features
per row, E entries (nonzero codes) in a chunk, T top examples kept per feature, Q quantile
buckets, S samples per bucket, H histogram bins, V vocabulary, W window tokens.

Pass 1 is the only pass that runs the SAE: ``encode_sparse`` over the cache in row order. It keeps
count / sum / max per feature and appends every nonzero code to an on-disk table of sorted keys
``row * F + feature`` (int64) and values (float32): a CSR matrix with bounded RAM.
Pass 2 reads only that table, chunk by chunk, and keeps per feature:
  * a linear histogram on [0, max_f] (one ``bincount`` over ``f * H + bin``),
  * the T largest activations: a segmented top-n of the chunk (two stable sorts give each
    entry its rank inside its feature) merged into an (F, T) buffer with ``torch.topk``,
  * S uniform samples per bucket ``[q, q+1) * max_f / Q``: the same segmented top-n on random
    keys (bottom-k sampling, equivalent to reservoir sampling; Cohen & Kaplan 2007).
Context windows (tokens around each example, with their activation of the same feature) are
looked up by binary search in the key table. Nothing loops over features in Python.

Logit effects follow SAEDashboard / Bricken et al. 2023: ``W_dec_f * g @ W_U^T`` with the final
norm's weight ``g`` folded in (and the direction mean-centred first when that norm is a LayerNorm).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelens_lite.lm.hooks import warn_if_other_hook
from saelens_lite.lm.layout import final_norm
from saelens_lite.lm.load import is_causal_lm
from saelens_lite.util.validate import check_ints

log = logging.getLogger(__name__)


@dataclass
class DashboardConfig:
    """What each feature page shows and how the statistics are computed."""

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
    window_before: int = 12
    """Context tokens shown before the activating token."""
    window_after: int = 4
    """Context tokens shown after it."""
    n_logits: int = 10
    """Most boosted and most suppressed tokens listed (0: skip logit effects)."""
    n_neighbours: int = 8
    """Nearest features by decoder cosine similarity (0: skip; costs O(F^2 D))."""
    batch_size: int = 4096
    """Cache rows encoded per SAE call in pass 1."""
    shard_features: int = 256
    """Features per data file of the site (a page loads one such file)."""
    seed: int = 0
    """Seed of the quantile sampling."""

    def __post_init__(self) -> None:
        check_ints(self, ("n_top", "n_quantiles", "n_bins", "batch_size", "shard_features"), minimum=1)
        check_ints(self, ("n_per_quantile", "window_before", "window_after", "n_logits", "n_neighbours"),
                   minimum=0)


@dataclass
class FeatureStats:
    """Everything the site shows, as arrays over all F features (rows -1 / values 0 pad)."""

    n_tokens: int
    count_F: np.ndarray
    """int64: tokens where the feature is > 0."""
    sum_F: np.ndarray
    """float64: sum of its activations."""
    max_F: np.ndarray
    """float32: its largest activation (0 for dead features)."""
    hist_FH: np.ndarray
    """int64: counts of nonzero activations in H equal bins of [0, max_f]."""
    top_vals_FT: np.ndarray
    top_rows_FT: np.ndarray
    """int64 cache rows of the T largest activations, descending (-1: fewer than T)."""
    quant_counts_FQ: np.ndarray
    """int64: nonzero activations in each bucket [q, q+1) * max_f / Q."""
    quant_vals_FQS: np.ndarray
    quant_rows_FQS: np.ndarray
    """int64 rows sampled uniformly from each bucket (-1: fewer than S)."""

    @property
    def density_F(self) -> np.ndarray:
        return self.count_F / max(self.n_tokens, 1)

    @property
    def mean_F(self) -> np.ndarray:
        return np.where(self.count_F > 0, self.sum_F / np.maximum(self.count_F, 1), 0.0)


# ------------------------------------------------------------------------------------------------
# the on-disk code table


class CodeTable:
    """Nonzero SAE codes sorted by (row, feature): ``keys = row * F + feature`` and values,
    appended during pass 1 to files under ``root``, then memory-mapped."""

    def __init__(self, root: Path, n_features: int):
        self.root, self.F = root, n_features
        self._kf = open(root / "keys.bin", "wb")
        self._vf = open(root / "vals.bin", "wb")
        self.size = 0
        self.keys: np.ndarray | None = None
        self.vals: np.ndarray | None = None

    def append(self, keys_E: np.ndarray, vals_E: np.ndarray) -> None:
        self._kf.write(np.ascontiguousarray(keys_E, np.int64).tobytes())
        self._vf.write(np.ascontiguousarray(vals_E, np.float32).tobytes())
        self.size += len(keys_E)

    def close(self) -> None:
        self._kf.close()
        self._vf.close()
        if self.size:
            self.keys = np.memmap(self.root / "keys.bin", np.int64, "r", shape=(self.size,))
            self.vals = np.memmap(self.root / "vals.bin", np.float32, "r", shape=(self.size,))
        else:
            self.keys, self.vals = np.zeros(0, np.int64), np.zeros(0, np.float32)

    def lookup(self, rows: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """Activation of feature feats[i] at cache row rows[i] (0 where it is not active)."""
        q = rows.astype(np.int64) * self.F + feats.astype(np.int64)
        if self.size == 0:
            return np.zeros(q.shape, np.float32)
        flat = q.reshape(-1)
        order = np.argsort(flat, kind="stable")  # sorted queries read the memmap in order
        pos = np.searchsorted(self.keys, flat[order])
        posc = np.minimum(pos, self.size - 1)
        hit = self.keys[posc] == flat[order]
        out = np.zeros(flat.shape, np.float32)
        out[order] = np.where(hit, self.vals[posc], 0)
        return out.reshape(q.shape)


# ------------------------------------------------------------------------------------------------
# segmented top-n: the vectorised core of pass 2. The bookkeeping runs in NumPy: on a busy CPU,
# torch's multi-threaded kernels for small arrays (sort, masked select, bincount of ~100k items)
# were 10-100x slower than NumPy's single-threaded ones; the SAE matmuls stay in torch.


def segment_topn(seg_E: np.ndarray, score_E: np.ndarray, payload_E: np.ndarray, n_seg: int, n: int):
    """For each segment s in [0, n_seg): the n largest scores of its entries and their payloads,
    as (n_seg, n) arrays padded with -inf / -1. Entries are sorted by (segment, score desc);
    an entry's rank is its position minus its segment's start."""
    score_E = np.asarray(score_E)
    if score_E.dtype == np.float32 and (len(score_E) == 0 or score_E.min() >= 0):
        # One int64 sort: non-negative float32 bit patterns order like the floats.
        bits = score_E.view(np.int32).astype(np.int64)
        order = np.argsort(seg_E.astype(np.int64) * 2**31 + (2**31 - 1 - bits))
    else:
        order = np.argsort(-score_E, kind="stable")
        order = order[np.argsort(seg_E[order], kind="stable")]
    seg_sorted = seg_E[order]
    counts = np.bincount(seg_sorted, minlength=n_seg)
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(order)) - starts[seg_sorted]
    keep = rank < n
    o, s, r = order[keep], seg_sorted[keep], rank[keep]
    score_SN = np.full((n_seg, n), -np.inf, dtype=score_E.dtype)
    payload_SN = np.full((n_seg, n), -1, dtype=np.asarray(payload_E).dtype)
    score_SN[s, r] = score_E[o]
    payload_SN[s, r] = payload_E[o]
    return score_SN, payload_SN


def merge_topn(a_score, a_payload, b_score, b_payload, n: int, *extra):
    """Row-wise top n, descending, of two (S, n) buffers; payloads (and ``extra`` pairs of
    (a, b) arrays) follow their score."""
    score = np.concatenate([a_score, b_score], 1)
    idx = np.argsort(-score, axis=1, kind="stable")[:, :n]
    take = lambda a, b: np.take_along_axis(np.concatenate([a, b], 1), idx, 1)  # noqa: E731
    return (np.take_along_axis(score, idx, 1), take(a_payload, b_payload),
            *(take(a, b) for a, b in extra))


# ------------------------------------------------------------------------------------------------
# passes


def resolve_hook(sae, cache, hook: str | None) -> str:
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
    bar = tqdm(total=cache.n_tokens, unit="tok", unit_scale=True, desc="dashboard encode",
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


def table_pass(table: CodeTable, max_F: np.ndarray, cfg: DashboardConfig, chunk: int = 1 << 18):
    """Pass 2 over the code table: histogram, top-T, quantile samples."""
    F_, H, T, Q, S = table.F, cfg.n_bins, cfg.n_top, cfg.n_quantiles, max(cfg.n_per_quantile, 1)
    rng = np.random.default_rng(cfg.seed)
    hist = np.zeros(F_ * H, np.int64)
    qcount = np.zeros(F_ * Q, np.int64)
    top_v = np.full((F_, T), -np.inf, np.float32)
    top_r = np.full((F_, T), -1, np.int64)
    q_key = np.full((F_ * Q, S), -np.inf, np.float32)
    q_row = np.full((F_ * Q, S), -1, np.int64)
    q_val = np.zeros((F_ * Q, S), np.float32)
    inv_max = (1.0 / np.maximum(max_F, 1e-30)).astype(np.float32)
    for a in range(0, table.size, chunk):
        keys, vals = np.asarray(table.keys[a:a + chunk]), np.asarray(table.vals[a:a + chunk])
        f, rows = keys % F_, keys // F_
        frac = vals * inv_max[f]
        hist += np.bincount(f * H + np.clip((frac * H).astype(np.int64), 0, H - 1), minlength=F_ * H)
        seg_q = f * Q + np.clip((frac * Q).astype(np.int64), 0, Q - 1)
        qcount += np.bincount(seg_q, minlength=F_ * Q)
        # Only entries that beat the buffer's current n-th place can enter it; after the first
        # chunks that leaves few entries to sort.
        cand = np.flatnonzero(vals > top_v[:, -1][f])
        v, r = segment_topn(f[cand], vals[cand], rows[cand], F_, T)
        top_v, top_r = merge_topn(top_v, top_r, v, r, T)
        if cfg.n_per_quantile:
            rnd = rng.random(len(keys), dtype=np.float32)
            pos = np.flatnonzero(rnd > q_key[:, -1][seg_q])  # entry positions: row and value
            k, p = segment_topn(seg_q[pos], rnd[pos], pos, F_ * Q, S)
            ok = p >= 0
            new_r = np.where(ok, rows[np.maximum(p, 0)], -1)
            new_v = np.where(ok, vals[np.maximum(p, 0)], 0).astype(np.float32)
            q_key, q_row, q_val = merge_topn(q_key, q_row, k, new_r, S, (q_val, new_v))
    top_v = np.where(top_r >= 0, top_v, 0).astype(np.float32)
    if not cfg.n_per_quantile:
        q_row, q_val = q_row[:, :0], q_val[:, :0]
    else:  # show each bucket's samples strongest first
        o = np.argsort(-np.where(q_row >= 0, q_val, -1), axis=1, kind="stable")
        q_row, q_val = np.take_along_axis(q_row, o, 1), np.take_along_axis(q_val, o, 1)
    return (hist.reshape(F_, H), top_v, top_r, qcount.reshape(F_, Q),
            q_val.reshape(F_, Q, -1), q_row.reshape(F_, Q, -1))


def compute_feature_stats(sae, cache, cfg: DashboardConfig, *, workdir: str | Path | None = None,
                          progress: bool = True) -> tuple[FeatureStats, CodeTable]:
    """Both passes. Returns the statistics and the (memory-mapped) code table, which
    :func:`example_windows` reads; delete ``table.root`` when done (``build_dashboard`` does)."""
    hook = resolve_hook(sae, cache, cfg.hook)
    if cache.d(hook) != sae.cfg.d_in:
        raise ValueError(f"cache hook {hook!r} has width {cache.d(hook)}, the SAE reads d_in={sae.cfg.d_in}")
    warn_if_other_hook(sae, hook, "shown")
    root = Path(tempfile.mkdtemp(prefix="dashboard-codes-", dir=workdir))
    table = CodeTable(root, sae.cfg.d_sae)
    try:
        count_F, sum_F, max_F = encode_pass(sae, cache, hook, table, cfg.batch_size, progress)
        hist, top_v, top_r, qc, qv, qr = table_pass(table, max_F, cfg)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    stats = FeatureStats(cache.n_tokens, count_F, sum_F, max_F, hist,
                         top_v, top_r, qc, qv, qr)
    return stats, table


def example_windows(table: CodeTable, cache, rows: np.ndarray, feats: np.ndarray, before: int,
                    after: int):
    """Context windows around examples (cache rows ``rows``, features ``feats``, any shape X):
    (tokens_XW int64, acts_XW float32, valid_XW bool); slots outside the example's context or
    the cache are invalid. W = before + 1 + after; the example itself is slot ``before``."""
    N = cache.n_tokens
    token_ids, context_ids = cache.token_ids, cache.context_ids
    offs = np.arange(-before, after + 1)
    r = rows[..., None].astype(np.int64) + offs
    rc = np.clip(r, 0, max(N - 1, 0))
    safe_rows = np.clip(rows, 0, max(N - 1, 0))
    valid = (r >= 0) & (r < N) & (rows[..., None] >= 0)
    valid &= context_ids[rc] == context_ids[safe_rows][..., None]
    acts = table.lookup(rc, np.broadcast_to(feats[..., None], rc.shape)) * valid
    return np.where(valid, token_ids[rc], -1).astype(np.int64), acts.astype(np.float32), valid


# ------------------------------------------------------------------------------------------------
# weight-based views: logit effects and neighbours

def unembedding(lm) -> tuple[Tensor, Tensor | None, bool] | str:
    """(W_U (V, D), norm weight g (D,) or None, centre) or a note saying why there is none."""
    model = lm.model
    if not is_causal_lm(model):
        return (f"{type(model).__name__} is an encoder without a language-model head, so there are no "
                "logit effects to show")
    head = model.get_output_embeddings()
    norm = final_norm(model)
    g = getattr(norm, "weight", None) if norm is not None else None
    centre = norm is not None and "rms" not in type(norm).__name__.lower()
    return head.weight.detach().float(), (None if g is None else g.detach().float()), centre


@torch.no_grad()
def logit_effects(W_dec_FD: Tensor, lm, n: int, chunk: int = 512):
    """(pos_vals, pos_ids, neg_vals, neg_ids), each (F, n): the tokens whose logits each decoder
    direction raises / lowers most, W_dec_f * g @ W_U^T (final-norm weight g folded in,
    SAEDashboard's convention); or a note (str) when the model has no LM head."""
    got = unembedding(lm)
    if isinstance(got, str):
        return got
    W_U, g, centre = got
    F_, n = W_dec_FD.shape[0], min(n, W_U.shape[0])
    out = [torch.empty(F_, n), torch.empty(F_, n, dtype=torch.int64),
           torch.empty(F_, n), torch.empty(F_, n, dtype=torch.int64)]
    for a in range(0, F_, chunk):
        d = W_dec_FD[a:a + chunk].to(W_U.device, torch.float32)
        if centre:  # LayerNorm subtracts the mean first
            d = d - d.mean(1, keepdim=True)
        if g is not None:
            d = d * g
        logits = d @ W_U.T
        pv, pi = logits.topk(n, dim=1)
        nv, ni = logits.topk(n, dim=1, largest=False)
        for o, t in zip(out, (pv, pi, nv, ni)):
            o[a:a + chunk] = t.cpu()
    return tuple(t.numpy() for t in out)


@torch.no_grad()
def nearest_features(W_dec_FD: Tensor, n: int, chunk: int = 1024):
    """(cos_FN, idx_FN): the n other features with the most similar decoder directions."""
    W = W_dec_FD.float()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    F_ = W.shape[0]
    n = min(n, F_ - 1)
    cos = torch.empty(F_, n)
    idx = torch.empty(F_, n, dtype=torch.int64)
    for a in range(0, F_, chunk):
        s = W[a:a + chunk] @ W.T
        b = min(a + chunk, F_)
        s[torch.arange(b - a), torch.arange(a, b)] = -math.inf
        c, i = s.topk(n, dim=1)
        cos[a:b], idx[a:b] = c.cpu(), i.cpu()
    return cos.numpy(), idx.numpy()


def cleanup(table: CodeTable) -> None:
    for attr in ("keys", "vals"):
        setattr(table, attr, None)
    shutil.rmtree(table.root, ignore_errors=True)


__all__ = ["DashboardConfig", "FeatureStats", "CodeTable", "compute_feature_stats", "example_windows",
           "logit_effects", "nearest_features", "segment_topn", "merge_topn", "unembedding", "cleanup"]
