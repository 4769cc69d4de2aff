"""The on-disk table of nonzero SAE codes, and the segmented top-n that reads it.

Shapes: F features, E entries (nonzero codes) in a chunk, S segments, n kept per segment.

:class:`CodeTable` holds every nonzero code of an SAE over a cache as sorted keys
``row * F + feature`` (int64) and values (float32): a CSR matrix with bounded RAM, written once
in row order and then memory-mapped. :func:`segment_topn` and :func:`merge_topn` keep, per
segment (a feature, or a feature's activation bucket), the n entries of largest score seen so
far, chunk by chunk, without a Python loop over segments.

The bookkeeping runs in NumPy: on a busy CPU, torch's multi-threaded kernels for small arrays
(sort, masked select, bincount of ~100k items) were 10-100x slower than NumPy's single-threaded
ones; the SAE matmuls stay in torch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


class CodeTable:
    """Nonzero SAE codes sorted by (row, feature): ``keys = row * F + feature`` and values,
    appended during the encode pass to files under ``root``, then memory-mapped."""

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
        """Activation of feature feats[i] at cache row rows[i] (0 where it is not active):
        binary search of ``row * F + feature`` in the sorted keys."""
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

    def delete(self) -> None:
        """Drop the memory maps and the files."""
        self.keys = self.vals = None
        shutil.rmtree(self.root, ignore_errors=True)


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


__all__ = ["CodeTable", "segment_topn", "merge_topn"]
