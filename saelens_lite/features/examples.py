"""Context windows around a feature's examples, and the token strings they show.

Shapes: X any batch of examples, W window tokens (``before + 1 + after``), N cache rows.

An example is a cache row r and a feature f; its window is rows ``r - before .. r + after``
clipped to r's packed context (``cache.context_ids``), each slot holding the token there and
the feature's activation at it (read from the :class:`~saelens_lite.features.table.CodeTable`).
The dashboards' pages and the explainers' prompts both show these windows.
"""

from __future__ import annotations

import numpy as np

from saelens_lite.features.table import CodeTable


def example_windows(table: CodeTable, cache, rows: np.ndarray, feats: np.ndarray, before: int,
                    after: int):
    """Context windows around examples (cache rows ``rows``, features ``feats``, any shape X):
    (tokens_XW int64, acts_XW float32, valid_XW bool); slot w of example x is row
    ``rows[x] + w - before``, valid when it lies in the cache and in the same packed context as
    ``rows[x]`` (and ``rows[x] >= 0``). Invalid slots hold token -1 and activation 0; the
    example itself is slot ``before``."""
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


class TokenStrings:
    """Token id -> text, each id decoded once per build (tokens decode one by one, so a
    byte-level BPE token shows its leading space)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.known = tokenizer, {}
        # The Rust backend skips transformers' per-item Python conversions (~10x faster).
        backend = getattr(tokenizer, "_tokenizer", None)
        self._batch = getattr(backend, "decode_batch", None)

    def __call__(self, ids: np.ndarray) -> dict[int, str]:
        ids = np.unique(ids[ids >= 0]).tolist()
        new = [i for i in ids if i not in self.known]
        if new:
            seqs = [[i] for i in new]
            texts = (self._batch(seqs, skip_special_tokens=False) if self._batch is not None else
                     self.tokenizer.batch_decode(seqs, skip_special_tokens=False,
                                                 clean_up_tokenization_spaces=False))
            self.known.update(zip(new, texts))
        return {i: self.known[i] for i in ids}


__all__ = ["example_windows", "TokenStrings"]
