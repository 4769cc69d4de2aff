"""Held-out contexts and activations: the hook's activations on contexts no cache row came from.

An SAE trained on an activation cache has seen its rows (the demo makes ~10 passes over them),
so a reconstruction metric over the cache is an in-sample figure. The held-out rows come from
the contexts of the same corpus *after* the cache's last one (:func:`heldout_contexts`, also the
contexts of the spliced-model loss, ``evals.downstream``), run
through the model with the forward stopped at the hook (``lm.capture.capture_rows``), with the
token rule of ``saelens_lite.lm.tokens`` (the one the cache was written with by default).

Shapes: B contexts, S sequence, D hook width, N rows kept.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from saelens_lite.lm.capture import capture_rows
from saelens_lite.lm.tokens import DEFAULT_EXCLUDE

log = logging.getLogger(__name__)


@dataclass
class EvalContexts:
    """Packed contexts for an evaluation, and where they come from."""

    contexts: list[np.ndarray]
    dataset: str
    first: int
    """Index of the first one among the corpus's full-length packed contexts."""
    heldout: bool | None
    """False when they overlap the contexts an activation cache holds (the corpus ran out);
    None when no cache was given, so the overlap with the SAE's training data is unknown."""

    @property
    def split(self) -> str:
        return {True: "held-out", False: "in-sample", None: "unknown"}[self.heldout]

    def describe(self, n: int | None = None) -> str:
        """Where the first ``n`` (None: all) of these contexts come from."""
        n = len(self.contexts) if n is None else min(n, len(self.contexts))
        where = {True: "held out: after the cache's contexts", False: "IN-SAMPLE: the cache's own contexts",
                 None: "no cache given: overlap with the training data unknown"}[self.heldout]
        return f"contexts {self.first}-{self.first + n - 1} of {self.dataset} ({where})"


def heldout_contexts(tokenizer, dataset: str, context_size: int, n_contexts: int, *, skip: int = 0,
                     text_column: str = "text") -> EvalContexts:
    """Up to ``n_contexts`` full-length packed contexts of ``dataset`` after the first ``skip``
    (the contexts an activation cache was harvested from, so the evaluation is held out). When
    the corpus has fewer left, uses those with a warning; when it has none left, falls back to
    its start and says (``heldout=False``) that these are the SAE's training contexts."""
    from saelens_lite.corpus.text import iter_documents, pack_contexts

    def full(start: int) -> list[np.ndarray]:
        ctxs = pack_contexts(iter_documents(dataset, text_column=text_column), tokenizer, context_size)
        ctxs = (c for c in ctxs if len(c) == context_size)
        return list(itertools.islice(ctxs, start, start + n_contexts))

    out, first, heldout = full(skip), skip, True
    if not out and skip:
        log.warning("dataset %s has no context left after the %d cached ones: evaluating on the "
                    "cache's own contexts (in-sample); pass another dataset for a held-out figure",
                    dataset, skip)
        out, first, heldout = full(0), 0, False
    if not out:
        raise ValueError(f"dataset={dataset!r} gives no context of {context_size} tokens")
    if len(out) < n_contexts:
        log.warning("dataset %s gives only %d contexts of %d tokens%s (asked for %d)", dataset, len(out),
                    context_size, f" after the {skip} cached ones" if heldout and skip else "", n_contexts)
    return EvalContexts(out, dataset, first, heldout)


def eval_contexts(tokenizer, dataset: str, context_size: int, n_contexts: int, *, skip: int = 0,
                  text_column: str = "text") -> list[np.ndarray]:
    """The contexts of :func:`heldout_contexts`, as a list."""
    return heldout_contexts(tokenizer, dataset, context_size, n_contexts, skip=skip,
                            text_column=text_column).contexts


def contexts_for_tokens(n_tokens: int, context_size: int) -> int:
    """Contexts to read for ``n_tokens`` kept rows: BOS and a document separator or two per
    context are left out, so ask for 10% more than (S - 1) rows per context."""
    return int(np.ceil(1.1 * n_tokens / max(context_size - 1, 1))) + 1


def heldout_rows(lm, hook: str, contexts: list[np.ndarray], *, n_tokens: int | None = None,
                 exclude: str = DEFAULT_EXCLUDE, batch_size: int = 8, progress: bool = True) -> Tensor:
    """(N, D) float32 activations of ``hook`` over ``contexts`` at the kept positions, in
    (context, position) order, the first ``n_tokens`` of them (None: all)."""
    return heldout_rows_of(lm, [hook], contexts, n_tokens=n_tokens, exclude=exclude,
                           batch_size=batch_size, progress=progress)[hook]


@torch.no_grad()
def heldout_rows_of(lm, hooks: list[str], contexts: list[np.ndarray], *, n_tokens: int | None = None,
                    exclude: str = DEFAULT_EXCLUDE, batch_size: int = 8,
                    progress: bool = True) -> dict[str, Tensor]:
    """:func:`heldout_rows` for several hooks captured in the same forwards: {hook: (N, D)},
    row n of every hook from the same token (a transcoder's input and target)."""
    from tqdm.auto import tqdm

    rows: dict[str, list[Tensor]] = {h: [] for h in hooks}
    n = 0
    bar = tqdm(total=n_tokens, unit="tok", unit_scale=True, desc="eval: held-out activations",
               disable=not progress, dynamic_ncols=True)
    for batch in capture_rows(lm, hooks, contexts, exclude=exclude, batch_size=batch_size):
        for h in hooks:
            rows[h].append(batch.acts[h].float().cpu())
        n += batch.n
        bar.update(batch.n if n_tokens is None else min(batch.n, n_tokens - bar.n))
        if n_tokens is not None and n >= n_tokens:
            break
    bar.close()
    out = {h: torch.cat(r) if r else torch.zeros(0, 0) for h, r in rows.items()}
    return out if n_tokens is None else {h: x[:n_tokens] for h, x in out.items()}


__all__ = ["EvalContexts", "heldout_contexts", "eval_contexts", "heldout_rows", "heldout_rows_of",
           "contexts_for_tokens"]
