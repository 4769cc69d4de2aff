"""Capture: token contexts -> per-hook activation rows at the kept token positions.

The one loop that runs the model for activations, read by the cache harvest
(``cache.harvest``), the streamed training data (``training.data.StreamSource``) and the
held-out evaluation rows (``evals.heldout``)::

    contexts --batch_size--> pad (B, S) --model, stopped after the deepest hook--> {hook: (B, S, D)}
             --keep mask (the token rule of lm.tokens, once)--> {hook: (n, D)} in (context, position) order

Names: *capture* is running the model for activations. ``hooks.capture`` is one forward on
given inputs returning every position ``(B, S, D)``; :func:`capture_rows` (here) batches
contexts through it and keeps the rows the token rule keeps. Putting a coder's output *into*
the model is a *splice* (:mod:`saelens_lite.lm.splice`).

A context may carry a row ``limit`` (keep only its first kept rows: a harvest's global token
budget) and a ``start`` position (write nothing before it: a harvest resuming inside a
context). A context with no kept row returns none (``empty="skip"``: the rows are the token
rule's, nothing else) or all its attended positions (``empty="attended"``: a consumer that needs
a row per context, such as a probe on one text each). A batch with no row to return is not run.

Shapes: B contexts in a batch, S sequence (the longest context; shorter ones are right-padded
and masked), D hook width, n kept rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from saelens_lite.lm.hooks import HookPoint, capture, resolve_hooks
from saelens_lite.lm.tokens import DEFAULT_EXCLUDE, written_mask


@dataclass(frozen=True)
class Context:
    """One token context and which of its kept rows to return."""

    ids: np.ndarray
    """(S,) token ids."""
    index: int = 0
    """Recorded in the rows (``Rows.context_n``): the context's number in the corpus."""
    limit: int | None = None
    """Return at most this many of its kept rows, the first ones (None: all)."""
    start: int = 0
    """Return no row before this position."""


@dataclass
class Rows:
    """The kept rows of one batch of contexts, in (context, position) order."""

    acts: dict[str, Tensor]
    """{hook: (n, D)} on the model's device, in the model's dtype (the consumer casts)."""
    token_ids_n: np.ndarray
    context_n: np.ndarray
    """``Context.index`` of each row."""
    position_n: np.ndarray

    @property
    def n(self) -> int:
        return len(self.token_ids_n)


def pad_contexts(contexts: Sequence[np.ndarray], pad_id: int) -> tuple[Tensor, Tensor]:
    """(ids_BS, attn_BS): contexts right-padded with ``pad_id`` to the longest, and the mask."""
    S = max(len(c) for c in contexts)
    ids_BS = torch.full((len(contexts), S), pad_id, dtype=torch.long)
    attn_BS = torch.zeros((len(contexts), S), dtype=torch.long)
    for b, c in enumerate(contexts):
        ids_BS[b, : len(c)] = torch.as_tensor(c, dtype=torch.long)
        attn_BS[b, : len(c)] = 1
    return ids_BS, attn_BS


def _keep_BS(batch: list[Context], ids_BS: Tensor, attn_BS: Tensor, exclude: str, tokenizer) -> Tensor:
    """The token rule, then each context's ``limit`` (counted over kept rows) and ``start``."""
    keep_BS = written_mask(ids_BS, attn_BS, exclude, tokenizer)
    if any(c.limit is not None for c in batch):
        limit_B = torch.tensor([c.limit if c.limit is not None else ids_BS.shape[1] for c in batch])
        keep_BS &= keep_BS.long().cumsum(1) <= limit_B[:, None]
    if any(c.start for c in batch):
        start_B = torch.tensor([c.start for c in batch])
        keep_BS &= torch.arange(ids_BS.shape[1])[None] >= start_B[:, None]
    return keep_BS


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def count_kept(contexts: Sequence[np.ndarray], tokenizer, exclude: str = DEFAULT_EXCLUDE) -> int:
    """Rows :func:`capture_rows` returns for ``contexts`` (no limit, no start), found from the token
    ids alone: a harvest's token budget and a stream's resume are counted without the model."""
    ids_BS, attn_BS = pad_contexts(contexts, _pad_id(tokenizer))
    return int(written_mask(ids_BS, attn_BS, exclude, tokenizer).sum())


EMPTY = ("skip", "attended")


def capture_rows(lm, hooks: Sequence[HookPoint | str], contexts: Iterable[Context | np.ndarray], *,
                 exclude: str = DEFAULT_EXCLUDE, batch_size: int = 16, empty: str = "skip") -> Iterator[Rows]:
    """Run ``lm`` (a :class:`~saelens_lite.lm.load.LoadedModel`) over ``contexts`` in batches of
    ``batch_size`` and yield each batch's kept rows of every hook (one forward per batch, stopped
    after the deepest hook). Contexts are read lazily, so a consumer may stop at any batch.
    ``empty``: what a context with no kept row returns (see the module docstring)."""
    if empty not in EMPTY:
        raise ValueError(f"empty={empty!r}: choose one of {list(EMPTY)}")
    points = resolve_hooks(lm.model, [h.name if isinstance(h, HookPoint) else h for h in hooks])
    device = next(lm.model.parameters()).device
    items = (c if isinstance(c, Context) else Context(np.asarray(c), i) for i, c in enumerate(contexts))
    while batch := list(itertools.islice(items, batch_size)):
        ids_BS, attn_BS = pad_contexts([c.ids for c in batch], _pad_id(lm.tokenizer))
        keep_BS = _keep_BS(batch, ids_BS, attn_BS, exclude, lm.tokenizer)
        if empty == "attended":
            keep_BS |= attn_BS.bool() & ~keep_BS.any(1, keepdim=True)
        if not keep_BS.any():
            continue
        acts = capture(lm.model, {"input_ids": ids_BS, "attention_mask": attn_BS}, points)
        # gather by index (n is known on the host): no device sync, unlike a boolean index there
        idx_n = keep_BS.reshape(-1).nonzero().squeeze(1)
        idx_dev = idx_n.to(device, non_blocking=True)
        ctx_BS = torch.tensor([c.index for c in batch])[:, None].expand_as(ids_BS)
        pos_BS = torch.arange(ids_BS.shape[1]).expand_as(ids_BS)
        rows = {name: a.reshape(-1, a.shape[-1]).index_select(0, idx_dev) for name, a in acts.items()}
        yield Rows(rows, ids_BS.reshape(-1)[idx_n].numpy(), ctx_BS.reshape(-1)[idx_n].numpy(),
                   pos_BS.reshape(-1)[idx_n].numpy())


__all__ = ["EMPTY", "Context", "Rows", "capture_rows", "count_kept", "pad_contexts"]
