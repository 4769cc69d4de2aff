"""Dead-latent diagnostics for the metrics records: how far the dead latents are from firing.

At a log step the trainer passes the step's batch (in training units) and the logged dead mask
(`DeadLatentTracker.reported_dead_mask`) to :func:`preact_quantiles`. Per latent f and batch row b,
with pre_BF = sae.pre_acts(x_BD) and acts_BF = sae.activate(pre_BF, x_BD) (= sae.encode(x_BD) from
the same encoder matmul):

    pre_max_f = max_b pre_bf                           (the latent's best pre-activation)
    t_b       = min {pre_bf : acts_bf > 0}             (the row's firing threshold: TopK's
                                                        k-th pre-activation where it is > 0)
    margin_f  = max_b (pre_bf - t_b)                   (< 0: below its rows' thresholds on
                                                        every row of the batch)

and the record gets the 10%, 50% and 90% quantiles of pre_max and margin over the dead and
the live latents: ``dead_pre_max_q10``, ..., ``live_margin_q90`` (a group with no latent is
left out). A dead latent with pre_max <= 0 is zeroed by AuxK's ReLU on every row, so AuxK
(Gao et al. 2024, App. B.1) gives it no gradient; one with margin well below 0 needs a large
change before the main loss sees it. For a row where nothing fires t_b is +inf and that row
sets no margin.

Shapes: B batch rows, D width, F latents, C rows of one chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor

QUANTILES = (0.1, 0.5, 0.9)
"""The quantiles logged for each group and statistic."""


@torch.no_grad()
def preact_extremes(sae, x_BD: Tensor, *, chunk_rows: int = 512) -> tuple[Tensor, Tensor]:
    """(pre_max_F, margin_F) over the rows of x_BD (see the module docstring), in chunks of
    `chunk_rows` rows so that no (B, F) tensor is held."""
    F_ = sae.W_dec.shape[0]
    pre_max_F = torch.full((F_,), -torch.inf, device=x_BD.device)
    margin_F = torch.full((F_,), -torch.inf, device=x_BD.device)
    for s in range(0, x_BD.shape[0], chunk_rows):
        x_CD = x_BD[s : s + chunk_rows]
        pre_CF = sae.pre_acts(x_CD)
        fired_CF = sae.activate(pre_CF, x_CD) > 0
        pre_CF = pre_CF.float()
        t_C = pre_CF.masked_fill(~fired_CF, torch.inf).amin(-1)
        pre_max_F = torch.maximum(pre_max_F, pre_CF.amax(0))
        margin_F = torch.maximum(margin_F, (pre_CF - t_C[:, None]).amax(0))
    return pre_max_F, margin_F


def preact_quantiles(sae, x_BD: Tensor, dead_F: Tensor) -> dict[str, float]:
    """The record's quantiles of pre_max and margin over dead (`dead_F`) and live latents."""
    was_training = sae.training
    sae.eval()
    try:
        pre_max_F, margin_F = preact_extremes(sae, x_BD)
    finally:
        sae.train(was_training)
    q = torch.tensor(QUANTILES, dtype=torch.float64)
    rec: dict[str, float] = {}
    for group, mask_F in (("dead", dead_F), ("live", ~dead_F)):
        for stat, v_F in (("pre_max", pre_max_F), ("margin", margin_F)):
            v = v_F[mask_F.to(v_F.device)].double()
            v = v[torch.isfinite(v)]
            if v.numel():
                for p, val in zip(QUANTILES, torch.quantile(v.cpu(), q).tolist()):
                    rec[f"{group}_{stat}_q{round(p * 100)}"] = val
    return rec


def supports_preact_quantiles(sae) -> bool:
    """A token-wise sparse coder: one pre-activation per latent and token."""
    return bool(getattr(type(sae), "is_sparse_coder", False) and getattr(type(sae), "tokenwise", False))


__all__ = ["QUANTILES", "preact_extremes", "preact_quantiles", "supports_preact_quantiles"]
