"""Next-token losses of a causal LM's logits: the one definition the evaluation
(``evals.downstream``) and end-to-end fine-tuning (``training.finetune``) share.

For logits ``z`` (B, S, V) over a context ``x_0 .. x_{S-1}``:

    ce[b, t] = -log softmax(z[b, t])[x_{t+1}]                        t < S - 1   (B, S-1)
    kl[b, t] = sum_v p_ref[b, t, v] (log p_ref[b, t, v] - log p[b, t, v])         (B, S)

``kl`` is KL(p_ref || p) in nats, ``p_ref`` the clean model's next-token distribution and ``p``
the spliced one's (the direction of SAEBench's ``kl_div_score`` and sparsify's ``--loss_fn kl``).
Both are computed in ``dtype`` (float64 in evaluations, float32 under a training gradient) and
are differentiable in ``z``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def log_probs(logits_BSV: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """log softmax over the vocabulary, in ``dtype``."""
    return F.log_softmax(logits_BSV.to(dtype), dim=-1)


def next_token_ce(logits_BSV: Tensor, ids_BS: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, S-1): the cross-entropy of each position's prediction of the next token."""
    B, S, V = logits_BSV.shape
    ce = F.cross_entropy(logits_BSV[:, :-1].reshape(-1, V).to(dtype), ids_BS[:, 1:].reshape(-1), reduction="none")
    return ce.reshape(B, S - 1)


def kl_from_reference(logp_ref_BSV: Tensor, logits_BSV: Tensor) -> Tensor:
    """(B, S): KL(p_ref || softmax(logits)) per position, in ``logp_ref``'s dtype."""
    logp = log_probs(logits_BSV, logp_ref_BSV.dtype)
    return (logp_ref_BSV.exp() * (logp_ref_BSV - logp)).sum(-1)


__all__ = ["log_probs", "next_token_ce", "kl_from_reference"]
