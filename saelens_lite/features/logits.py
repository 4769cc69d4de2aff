"""Weight-based views of features: logit effects and nearest neighbours.

Shapes: F features, D model width, V vocabulary, L tokens listed, N neighbours.

Logit effects follow SAEDashboard / Bricken et al. 2023: a feature's decoder direction d_f
(a row of ``W_dec_FD``) read through the unembedding, ``(d_f * g) @ W_U^T`` with the final
norm's weight g folded in; for a LayerNorm d_f is mean-centred first (LayerNorm subtracts the
mean before scaling), for an RMSNorm it is not. Neighbours are the features whose decoder
directions have the largest cosine similarity with d_f.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from saelens_lite.lm.layout import final_norm, is_causal_lm


class LogitEffects(NamedTuple):
    """The L tokens whose logits each decoder direction raises and lowers most."""

    pos_vals_FL: np.ndarray
    """float32, descending."""
    pos_ids_FL: np.ndarray
    """int64 token ids."""
    neg_vals_FL: np.ndarray
    """float32, ascending (most lowered first)."""
    neg_ids_FL: np.ndarray


class Neighbours(NamedTuple):
    """The N features with the most similar decoder directions, most similar first."""

    cos_FN: np.ndarray
    idx_FN: np.ndarray


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
def logit_effects(W_dec_FD: Tensor, lm, n: int, chunk: int = 512) -> LogitEffects | str:
    """The tokens whose logits each decoder direction raises / lowers most, ``(d_f * g) @ W_U^T``
    (module docstring); or a note (str) when the model has no LM head."""
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
    return LogitEffects(*(t.numpy() for t in out))


@torch.no_grad()
def nearest_features(W_dec_FD: Tensor, n: int, chunk: int = 1024) -> Neighbours:
    """The n other features with the largest cosine ``d_f . d_g / (|d_f| |d_g|)``."""
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
    return Neighbours(cos.numpy(), idx.numpy())


__all__ = ["LogitEffects", "Neighbours", "unembedding", "logit_effects", "nearest_features"]
