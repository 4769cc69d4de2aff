"""Dense top-k selection: which latents a TopK-style encoder keeps, without a dense (B, F)
gradient. The pre-activations are computed dense (no grad, chunked on CPU), the kept values
then go through the sparse, differentiable :func:`~saelens_lite.kernels.sparse.select_preacts`.

  pre_BF = (x - b_dec) @ W_enc + b_enc;   idx_BK = topk(pre_BF, K);   vals_BK = pre_BF[idx_BK]

Shape legend: B batch, D model width, F features (latents), K active features per token.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saelens_lite.kernels.sparse import SparsePattern, select_preacts


def dense_preacts(x_BD: Tensor, W_enc_DF: Tensor, b_enc_F: Tensor, b_dec_D: Tensor) -> Tensor:
    """(x - b_dec) @ W_enc + b_enc as one fused matmul (differentiable, dense)."""
    return torch.addmm(b_enc_F, x_BD - b_dec_D, W_enc_DF)


class TopKSelection(NamedTuple):
    pre_BK: Tensor
    """Pre-activations at the selected latents, exact in the parameter dtype (no grad)."""
    idx_BK: Tensor
    """Selected latent indices (int64)."""
    aux_pre_BK: Tensor | None
    """AuxK: pre-activations of the top k_aux dead latents (None without a dead mask)."""
    aux_idx_BK: Tensor | None
    """AuxK: their indices."""


@torch.no_grad()
def topk_select(
    x_BD: Tensor,
    W_enc_DF: Tensor,
    b_enc_F: Tensor,
    b_dec_D: Tensor,
    k: int,
    *,
    sorted: bool = False,
    dead_mask_F: Tensor | None = None,
    k_aux: int = 0,
    compute_dtype: torch.dtype | None = None,
    chunk_rows: int = 512,
) -> TopKSelection:
    """Top-k latents of pre = (x - b_dec) @ W_enc + b_enc per row (and, given `dead_mask_F`, the
    top-k_aux among dead latents), without keeping the dense (B, F) pre-activations.

    Rows are processed in chunks so each (chunk, F) block is selected while still in cache
    (~15% faster on CPU and far less memory than a full (B, F) tensor). `compute_dtype`
    (e.g. bfloat16: ~6x faster matmul on CPUs with AMX, and on GPUs) is used only to choose the
    latents; the kept values are then recomputed exactly in the parameter dtype, so only
    near-ties at the k-th place can differ from a full-precision selection. Under autocast the
    autocast dtype is the selection dtype (and the result is the same full-precision kind).
    """
    dev = x_BD.device.type
    if compute_dtype is None and torch.is_autocast_enabled(dev):
        compute_dtype = torch.get_autocast_dtype(dev)  # autocast asks for a low-precision matmul
    with torch.autocast(dev, enabled=False):
        return _topk_select(
            x_BD.to(W_enc_DF.dtype),
            W_enc_DF,
            b_enc_F,
            b_dec_D,
            k,
            sorted,
            dead_mask_F,
            k_aux,
            compute_dtype,
            chunk_rows,
        )


def _topk_select(
    x_BD, W_enc_DF, b_enc_F, b_dec_D, k, sorted, dead_mask_F, k_aux, compute_dtype, chunk_rows
) -> TopKSelection:
    B = x_BD.shape[0]
    dt = compute_dtype or W_enc_DF.dtype
    exact = dt == W_enc_DF.dtype
    xc_BD = (x_BD - b_dec_D).to(dt)
    W, b = W_enc_DF.to(dt), b_enc_F.to(dt)
    pre_BK = xc_BD.new_empty(B, k)
    idx_BK = torch.empty(B, k, dtype=torch.int64, device=x_BD.device)
    use_aux = dead_mask_F is not None and k_aux > 0
    if use_aux:
        aux_pre_BK = xc_BD.new_empty(B, k_aux)
        aux_idx_BK = torch.empty(B, k_aux, dtype=torch.int64, device=x_BD.device)
        not_dead_F = ~dead_mask_F
    step = B if x_BD.device.type != "cpu" else chunk_rows
    for s in range(0, B, step):
        pre_cF = torch.addmm(b, xc_BD[s : s + step], W)
        torch.topk(
            pre_cF, k, dim=-1, sorted=sorted, out=(pre_BK[s : s + step], idx_BK[s : s + step])
        )
        if use_aux:
            torch.topk(
                pre_cF.masked_fill_(not_dead_F, -float("inf")),
                k_aux,
                dim=-1,
                sorted=False,
                out=(aux_pre_BK[s : s + step], aux_idx_BK[s : s + step]),
            )
    if not exact:
        xc32 = x_BD - b_dec_D
        pre_BK = _exact_preacts(xc32, W_enc_DF, b_enc_F, idx_BK)
        if use_aux:
            aux_pre_BK = _exact_preacts(xc32, W_enc_DF, b_enc_F, aux_idx_BK)
    if not use_aux:
        aux_pre_BK = aux_idx_BK = None
    return TopKSelection(pre_BK, idx_BK, aux_pre_BK, aux_idx_BK)


def _exact_preacts(xc_BD: Tensor, W_enc_DF: Tensor, b_enc_F: Tensor, idx_BK: Tensor) -> Tensor:
    p = SparsePattern.from_topk(idx_BK, W_enc_DF.shape[1])
    return (p.sampled_dot(xc_BD, W_enc_DF.t()) + b_enc_F[p.cols_N]).view(idx_BK.shape)


def topk_encode(
    x_BD: Tensor, W_enc_DF: Tensor, b_enc_F: Tensor, b_dec_D: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """ReLU(TopK(pre)) as (vals_BK, idx_BK): one dense no-grad matmul + topk, sparse backward."""
    pre_BK, idx_BK, _, _ = topk_select(x_BD, W_enc_DF, b_enc_F, b_dec_D, k)
    vals_BK = select_preacts(x_BD, W_enc_DF, b_enc_F, b_dec_D, idx_BK, pre_BK)
    return torch.relu(vals_BK), idx_BK
