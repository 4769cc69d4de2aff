"""The fast step's selection of the candidate latents (training/fast_step.py): the main top-k
and the AuxK top-k_aux among dead latents, exact on CPU (the model's chunked select), in a 16-bit
matmul on CUDA (the fused Triton matmul + top-k kernel where it applies, kernels.triton_topk).

Shape legend: B batch, D model width, F features, K candidates per token, M AuxK candidate
latents.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from saelens_lite import kernels
from saelens_lite.kernels import sparse as _sparse
from saelens_lite.saes.base import SAE
from saelens_lite.training.config import TOPK_SELECT_MODES

log = logging.getLogger(__name__)

FUSED_FAILED: list[str] = []
"""Why the fused kernel failed to compile or run in this process; once it holds a reason,
``select="auto"`` stops trying the fused kernel (clear it to try again)."""


def check_select(mode: str) -> None:
    if mode not in TOPK_SELECT_MODES:
        raise ValueError(f"select={mode!r} is invalid; allowed: {TOPK_SELECT_MODES}")


def _fused_ok(mode: str, xc_lp_BD: Tensor, F_: int, k: int) -> bool:
    """Whether the low-precision selection uses the fused Triton matmul + top-k kernel."""
    check_select(mode)
    if mode == "torch":
        return False
    from saelens_lite.kernels import triton_topk  # imported here: triton is optional

    B = xc_lp_BD.shape[0]
    kt = triton_topk.pruned_kt(B, F_, k) if mode == "pruned" else k
    ok = _sparse.use_triton(xc_lp_BD) and triton_topk.supports(xc_lp_BD.dtype, F_, kt)
    ok = ok and not (FUSED_FAILED and mode == "auto")
    if mode in ("fused", "pruned") and not ok:
        kmax = "k" if mode == "fused" else "the pruned candidates per tile"
        raise ValueError(
            f"select={mode!r} needs Triton on CUDA, bfloat16 compute, F <= {triton_topk.MAX_F} "
            f"and {kmax} <= {triton_topk.MAX_K}; got device {xc_lp_BD.device.type}, "
            f"{xc_lp_BD.dtype}, F={F_}, k={k}" + (f" ({kt} per tile)" if mode == "pruned" else "")
        )
    return ok


def _capturing(t: Tensor) -> bool:
    return t.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def default_aux_candidates(F_: int, k_aux: int) -> int:
    """Default M of the low-precision AuxK selection: max(2 k_aux, F/8), at most F."""
    return min(F_, max(2 * k_aux, F_ // 8))


def select_candidates(
    sae: SAE, x_BD, xc_lp_BD, k: int, dead_mask_F, k_aux: int, lowp, select, n_aux
):
    """((pre_BK, idx_BK, aux_pre_BK, aux_idx_BK) in the parameter dtype, inexact rows or None).

    Low precision (CUDA): the main top-k from one 16-bit matmul, fused with the selection when
    `_fused_ok` (no (B, F) matrix is written); the AuxK top-k_aux among at most M = n_aux
    candidate latents: every dead latent when at most M are dead (then exactly the full
    masked selection), else a fresh uniformly random M of them each step, picked without a
    host sync (dead latents get priority 2 + u, live ones u, u ~ U(0, 1)). Bounding M keeps
    the AuxK selection (k_aux = D/2 is far wider than k) from costing a second full (B, F)
    matmul and top-k."""
    W_enc, b_enc = sae.W_enc.detach(), sae.b_enc.detach()
    if lowp is None:  # CPU, or full precision: the model's own chunked select (exact values)
        sel = kernels.topk_select(
            x_BD, W_enc, b_enc, sae.b_dec.detach(), k, dead_mask_F=dead_mask_F,
            k_aux=k_aux, compute_dtype=sae.cfg.torch_select_dtype,
        )  # fmt: skip
        return sel, None
    # low-precision matmuls; their (fp32-accumulated, rounded) outputs are the values
    F_ = W_enc.shape[1]
    W_lp, b_lp = W_enc.to(lowp), b_enc.to(lowp)
    pre_BF = pre_BK = inexact = None
    if _fused_ok(select, xc_lp_BD, F_, k):
        from saelens_lite.kernels import triton_topk

        try:
            if select == "pruned":
                pre_BK, idx_BK, inexact = triton_topk.encode_topk_pruned(xc_lp_BD, W_lp, b_lp, k)
            else:
                pre_BK, idx_BK = triton_topk.encode_topk(xc_lp_BD, W_lp, b_lp, k)
        except Exception as e:  # compile or resource failure: "auto" falls back for good
            if select != "auto" or _capturing(xc_lp_BD):
                raise
            FUSED_FAILED.append(f"{type(e).__name__}: {e}"[:300])
            log.warning("fused top-k kernel failed, using matmul + torch.topk: %s", e)
    if pre_BK is None:
        pre_BF = torch.addmm(b_lp, xc_lp_BD, W_lp)
        pre_BK, idx_BK = pre_BF.topk(k, dim=-1, sorted=False)
    aux_pre = aux_idx = None
    if k_aux:
        M = max(n_aux or default_aux_candidates(F_, k_aux), k_aux)
        if M < F_:
            prio_F = torch.rand(F_, device=W_enc.device) + 2 * dead_mask_F
            cand_M = prio_F.topk(M, sorted=False).indices
            pre_BM = torch.addmm(b_lp[cand_M], xc_lp_BD, W_lp[:, cand_M])
            pre_BM.masked_fill_(~dead_mask_F[cand_M], -float("inf"))
            aux_pre, j_BK = pre_BM.topk(k_aux, dim=-1, sorted=False)
            aux_idx = cand_M[j_BK]
        else:
            if pre_BF is None:
                pre_BF = torch.addmm(b_lp, xc_lp_BD, W_lp)
            aux_pre, aux_idx = pre_BF.masked_fill_(~dead_mask_F, -float("inf")).topk(
                k_aux, dim=-1, sorted=False
            )
        aux_pre = aux_pre.to(W_enc.dtype)
    return kernels.TopKSelection(pre_BK.to(W_enc.dtype), idx_BK, aux_pre, aux_idx), inexact
