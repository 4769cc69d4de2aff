"""Held-out activations: the hook's activations on contexts no cache row came from.

An SAE trained on an activation cache has seen its rows (the demo makes ~10 passes over them),
so a reconstruction metric over the cache is an in-sample figure. The held-out rows come from
the contexts of the same corpus *after* the cache's last one (``splice.heldout_contexts``), run
through the model with the forward stopped at the hook (``lm.capture.capture_rows``), with the
token rule of ``saelens_lite.lm.tokens`` (the one the cache was written with by default).

Shapes: B contexts, S sequence, D hook width, N rows kept.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from saelens_lite.lm.capture import capture_rows
from saelens_lite.lm.tokens import DEFAULT_EXCLUDE


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


__all__ = ["heldout_rows", "heldout_rows_of", "contexts_for_tokens"]
