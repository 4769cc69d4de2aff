"""A fast training step for top-k style SAEs: explicit sparse gradients, optional CUDA graph.

This module owns the optimiser step, graph capture and the kernels' dispatch (the candidate
selection is in training/fast_select.py); the architecture owns its math: which latents are
candidates and which are kept (`SAE.sparse_candidates`, `SAE.sparse_keep`), its
reconstruction terms and their gradients in the codes and W_dec (`SAE.sparse_reconstruction`:
one reconstruction on the base class, Matryoshka's nested prefixes in saes/matryoshka.py), what
it tracks from the selection (`SAE.sparse_selected_`, BatchTopK's threshold), and the shared
terms (AuxK, FVU) come from `saes.terms`. Which classes it covers is
`SAE.supports_fast_step` / `SAE.fast_step_supports`, read through the registry.

Shape legend: B batch, D model width, F features, K active features per token,
N = B*K selected (token, feature) pairs.

One step computes, for z = ReLU(TopK_k(pre)), pre = (x - b_dec) @ W_enc + b_enc,
x_hat = z @ W_dec + b_dec and L = ||x_hat - x||^2 / B  [+ aux_coeff * v * L_aux, v = saes.base.aux_weight],
the gradients in closed form instead of through autograd (Gao et al. 2024, App. B.1 for AuxK):

  g_BD      = 2 (x_hat - x) / B                        dL/dx_hat
  gpre_N    = <g[b_n], W_dec[f_n]> * [pre_n > 0]       dL/dpre at the K selected latents only
  dW_enc^T  = A(gpre)^T @ (x - b_dec)                  (F, D), A(v) the (B, F) matrix holding v
  dW_dec    = A(z)^T @ g                               at the selected positions
  db_enc    = sum_n gpre_n e_{f_n},   db_dec = sum_b g_b - W_enc @ db_enc

then the decoder hooks and the optimiser step. These reduce to the SparsePattern primitives
(one decode, one sampled dot, one paired transposed product: a handful of launches), nothing
synchronises with the host, and on CUDA the whole step (forward, backward, Adam) is captured
once in a CUDA graph and replayed, which removes the launch overhead that dominates at these
sizes. On CUDA `compute_dtype` (bfloat16) is the dtype of the encoder matmul and of every row
the sparse kernels gather (W_dec, x - b_dec, the output gradient), halving their traffic;
they accumulate in float32, and weights, gradients and optimiser state stay in the parameter
dtype (float32 masters). There the top-k comes from the fused Triton matmul + top-k kernel
(`kernels.triton_topk`: the (B, F) pre-activations are never written; select="pruned" keeps
fewer candidates per tile than k and recomputes the rare rows where that may miss one, which
also serves k > 64, e.g. BatchTopK's 2k candidates at k = 64), and the AuxK top-k_aux
is taken among at most M = max(2 k_aux, F/8) candidate latents: all dead ones when at most M
are dead (exact), else a fresh uniform draw of M of them per step. So no step materialises a
(B, F) matrix (except backward="dense", which builds the code matrix on purpose: see
`sparse_loss_and_grads`). Inactive entries of a pattern (AuxK picks that are not dead, BatchTopK
candidates outside the batch top-k) get the sentinel column F that the Triton kernels skip:
with few dead latents the AuxK term (k_aux = D/2 slots per token, 12x the main path's K at
D=768, K=32) costs index loads instead of B * k_aux row gathers of width D.

BatchTopK (Bussmann et al. 2024) uses the same kernels on a fixed-width pattern: each row's top
m = 2k candidates, with every candidate outside the batch's top B*k by score, or not positive,
given value 0 and no gradient (BatchTopKSAE.sparse_keep). Matryoshka (Bussmann et al. 2025)
keeps BatchTopK's selection and replaces the one decode / sampled dot / decoder product by the
same three over its entries regrouped into M*B rows (one per token and group), against the
reverse cumulative sums G_j of the prefixes' output gradients (MatryoshkaSAE.sparse_reconstruction).

Oracle: `sparse_loss_and_grads` equals autograd through the model's `training_forward`
(float64 tests). Unsupported (ValueError): what the class's `fast_step_supports` declines.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from saelens_lite import kernels
from saelens_lite.kernels import sparse as _sparse
from saelens_lite.saes.base import SAE, SparseOps, SparseRecon, TrainOutput
from saelens_lite.saes.registry import fast_step_architectures
from saelens_lite.saes.terms import aux_k_full, aux_scale, aux_weight, auxk_error_and_grad, fvu
from saelens_lite.training.fast_select import (  # noqa: F401  (default_aux_candidates: API)
    check_select,
    default_aux_candidates,
    select_candidates,
)
from saelens_lite.training.step import optimizer_step_

log = logging.getLogger(__name__)


class LossAndGrads(NamedTuple):
    out: TrainOutput
    """Loss (detached) and statistics of the batch: losses "mse" and, with a dead mask,
    "auxk" (0 when no latent is dead); inexact_rows with select="pruned"."""
    grads: dict[str, Tensor]
    """Gradient per parameter name (W_enc, b_enc, W_dec, b_dec), each in its parameter's
    dtype and layout."""
    idx_BK: Tensor
    """The candidate latents per token, K of them (for checks against a dense reference)."""
    keep_N: Tensor
    """bool (B*K,): the active candidates (pre > 0; BatchTopK: and in the batch's top B*k)."""


FORCE_LOWP_ENV = "SAELENS_LITE_FORCE_LOWP"
"""Set to 1 to apply `compute_dtype` on any device, not only CUDA: how the tests run the CUDA
path's low-precision arithmetic on the CPU (and the compile check on meta tensors). Read per
call."""


def _lowp_device(t: Tensor) -> bool:
    """Where `compute_dtype` applies: CUDA (CPU keeps the model's exact chunked path), or any
    device under ``SAELENS_LITE_FORCE_LOWP=1``."""
    return t.device.type == "cuda" or os.environ.get(FORCE_LOWP_ENV) == "1"


def _decode(p: kernels.SparsePattern, vals_N: Tensor, table_FD: Tensor) -> Tensor:
    if table_FD.dtype == vals_N.dtype:
        return p.gather_rows_sum(vals_N, table_FD)
    return p.gather_rows_sum(vals_N, table_FD).to(vals_N.dtype)  # Triton: fp32 accumulation


BACKWARD_MODES = ("sparse", "dense")


def _check_backward(mode: str) -> None:
    if mode not in BACKWARD_MODES:
        raise ValueError(f"backward={mode!r} is invalid; allowed: {BACKWARD_MODES}")


def _mm32(a: Tensor, b: Tensor) -> Tensor:
    """a @ b; 16-bit inputs give a float32 result accumulated in float32 (cuBLAS's bf16 GEMM
    with a float32 output on CUDA, else the float32 product of the rounded inputs)."""
    if a.dtype not in (torch.bfloat16, torch.float16):
        return a @ b
    if a.device.type == "cuda" and not _MM_DTYPE_FAILED:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, NotImplementedError, TypeError):  # a torch without mm.dtype
            _MM_DTYPE_FAILED.append(True)  # (fails in dispatch, before any launch)
    return a.float() @ b.float()


_MM_DTYPE_FAILED: list[bool] = []


def _pattern(idx_BK: Tensor, active_N: Tensor, F_: int, sentinel: bool):
    """The pattern of the selected latents; with `sentinel` (the Triton kernels) the inactive
    ones (not kept, or not positive) get the column F, which the kernels skip (see
    kernels.triton_sparse), so they cost no row gathers. Sums over cols_N then need F + 1 slots."""
    if sentinel:
        idx_BK = torch.where(active_N.view_as(idx_BK), idx_BK, F_)
    return kernels.SparsePattern.from_topk(idx_BK, F_)


def sparse_loss_and_grads(
    sae: SAE,
    x_BD: Tensor,
    *,
    dead_mask_F: Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
    select: str = "auto",
    aux_candidates: int | None = None,
    backward: str = "sparse",
) -> LossAndGrads:
    """Loss, statistics and parameter gradients of one training step of an architecture the
    fast step supports (no autograd, no host sync; `sae.sparse_selected_` then sees the
    selection: BatchTopK updates its threshold). With `dead_mask_F` the
    AuxK term uses a fixed k_aux = min(aux_k or D/2, F) and masks non-dead picks to -inf
    (ReLU zero), which equals the model's min(k_aux, n_dead) selection without reading n_dead
    on the host. `compute_dtype` applies on CUDA only; there `select` picks the main top-k's
    implementation ("auto": the fused Triton kernel where it applies, "fused": it or an error,
    "pruned": the fused kernel keeping fewer candidates per tile than k, saturated rows
    recomputed (kernels.triton_topk; untimed), "torch": matmul then torch.topk) and
    `aux_candidates` bounds the AuxK selection (see `select_candidates`; default
    `default_aux_candidates`). `backward="dense"` computes the main path's decode, sampled dot
    and weight gradients as four dense GEMMs over the (B, F) code matrix in `compute_dtype`
    (x_hat = Z W_dec, G = g W_dec^T gathered at the pattern, dW_dec = Z^T g, dW_enc^T =
    A(gpre)^T (x - b_dec); float32 outputs) instead of sparse row gathers: 8 B F D FLOP on
    tensor cores against ~4 B K D gathered elements, which can win where K / F is large and
    rows are wide (D = 2304, K / F = 1/256); AuxK stays sparse. Same values up to rounding."""
    _check_backward(backward)
    cfg = sae.cfg
    if not (type(sae).supports_fast_step and type(sae).fast_step_supports(vars(cfg))):
        raise ValueError(
            f"fast step supports architectures {fast_step_architectures()} with the options "
            f"their class's fast_step_supports accepts; got architecture={cfg.architecture!r} "
            f"with SAEConfig {cfg}"
        )
    if backward == "dense" and not type(sae).fast_step_dense_backward:
        raise ValueError(f"backward='dense' is invalid for architecture {cfg.architecture!r} "
                         f"(its reconstruction is not one decode); allowed: 'sparse'")
    W_enc, W_dec, b_dec = sae.W_enc.detach(), sae.W_dec.detach(), sae.b_dec.detach()
    B, F_ = x_BD.shape[0], cfg.d_sae
    x_BD = x_BD.to(W_enc.dtype)
    xc_BD = x_BD - b_dec
    use_lowp = _lowp_device(x_BD) and compute_dtype not in (None, W_enc.dtype)
    lowp = compute_dtype if use_lowp else None
    xc_lp_BD = xc_BD.to(lowp) if lowp is not None else xc_BD
    # low-precision gathered rows only where the kernels take mixed dtypes (Triton)
    gather_lp = lowp is not None and _sparse.use_triton(W_dec)
    W_dec_c = W_dec.to(lowp) if gather_lp else W_dec
    xc_c = xc_lp_BD if gather_lp else xc_BD

    def c(t: Tensor) -> Tensor:
        return t.to(lowp) if gather_lp else t

    k_aux = min(aux_k_full(cfg), F_) if dead_mask_F is not None else 0
    sel, inexact = select_candidates(sae, x_BD, xc_lp_BD, sae.sparse_candidates(), dead_mask_F,
                                     k_aux, lowp, select, aux_candidates)  # fmt: skip
    pre_N, idx_BK = sel.pre_BK.reshape(-1), sel.idx_BK
    keep_N, score_N = sae.sparse_keep(x_BD, sel.pre_BK)
    p = _pattern(idx_BK, keep_N, F_, gather_lp)
    vals_N = torch.where(keep_N, pre_N, 0.0)
    if backward == "dense":  # the code matrix Z (B, F): zeros but for the kept values
        cd = lowp or W_enc.dtype
        W_dec_d = W_dec.to(cd)
        Z_BF = torch.zeros(B, F_, dtype=cd, device=x_BD.device)
        Z_BF.scatter_(1, idx_BK, vals_N.view(B, -1).to(cd))
        x_hat_BD = _mm32(Z_BF, W_dec_d).to(W_enc.dtype) + b_dec
        g_BD = (x_hat_BD - x_BD) * (2.0 / B)
        mse = (x_hat_BD - x_BD).pow(2).sum() / B
        g_d = g_BD.to(cd)
        G_BF = _mm32(g_d, W_dec_d.t())  # <g_b, W_dec[f]> for every (b, f)
        gpre_N = G_BF.gather(1, idx_BK).reshape(-1).to(pre_N.dtype) * keep_N
        del G_BF
        A_BF = torch.zeros_like(Z_BF).scatter_(1, idx_BK, gpre_N.view(B, -1).to(cd))
        gW_enc_FD = _mm32(A_BF.t(), xc_BD.to(cd)).to(W_enc.dtype)
        gW_dec = _mm32(Z_BF.t(), g_d).to(W_enc.dtype)
        rec = SparseRecon(x_hat_BD, mse, {"mse": mse}, gpre_N, g_BD, gW_dec)
    else:  # the architecture's reconstruction terms (SAE.sparse_reconstruction)
        ops = SparseOps(W_dec_c, c, lambda q, v: _decode(q, v, W_dec_c), W_enc.dtype)
        rec = sae.sparse_reconstruction(x_BD, p, vals_N, ops)
        gpre_N = rec.grad_vals_N.to(pre_N.dtype) * keep_N
        if rec.grad_W_dec is None:  # A(z)^T g on the same pattern: one paired pass
            gW_enc_FD, gW_dec = p.transposed_matmul_pair(
                gpre_N, xc_c, vals_N, c(rec.grad_out_BD), W_enc.dtype
            )
        else:
            gW_enc_FD = p.transposed_matmul(gpre_N, xc_c, out_dtype=W_enc.dtype)
            gW_dec = rec.grad_W_dec
    x_hat_BD, mse = rec.x_hat_BD, rec.losses["mse"]
    gb_enc1 = sae.b_enc.new_zeros(F_ + 1).index_add_(0, p.cols_N, gpre_N)  # [F]: sentinels
    loss = rec.loss
    losses = {n: t.detach() for n, t in rec.losses.items()}
    if k_aux:
        aux_pre_N = sel.aux_pre_BK.masked_fill(~dead_mask_F[sel.aux_idx_BK], -float("inf"))
        aux_pre_N = aux_pre_N.reshape(-1)
        pa = _pattern(sel.aux_idx_BK, aux_pre_N > 0, F_, gather_lp)
        va_N = torch.relu(aux_pre_N)
        auxk, g_aux_BD = auxk_error_and_grad(  # AuxK on the residual e = x - x_hat
            _decode(pa, va_N, W_dec_c), x_BD - x_hat_BD, aux_scale(cfg, dead_mask_F, W_enc.dtype)
        )
        weight = cfg.aux_coeff * aux_weight(x_BD)  # see saes.terms.aux_weight
        loss = loss + weight * auxk
        losses["auxk"] = auxk.detach()
        ga_c = c(g_aux_BD * weight)
        gpa_N = pa.sampled_dot(ga_c, W_dec_c).to(pre_N.dtype) * (aux_pre_N > 0)
        ge, gd = pa.transposed_matmul_pair(gpa_N, xc_c, va_N, ga_c, W_enc.dtype)
        gW_enc_FD += ge
        gW_dec += gd
        gb_enc1.index_add_(0, pa.cols_N, gpa_N)
    gb_enc = gb_enc1[:F_]
    gb_dec = rec.grad_out_BD.sum(0) - W_enc @ gb_enc
    gW_enc = gW_enc_FD.t() if W_enc.t().is_contiguous() else gW_enc_FD.t().contiguous()
    with torch.no_grad():
        sae.sparse_selected_(score_N, keep_N)
        pos_N = keep_N.to(W_enc.dtype)
        fired_F = (sae.b_enc.new_zeros(F_ + 1).index_add_(0, p.cols_N, pos_N) > 0)[:F_]
        l0 = pos_N.sum() / B
    grads = {"W_enc": gW_enc, "b_enc": gb_enc, "W_dec": gW_dec, "b_dec": gb_dec}
    out = TrainOutput(loss.detach(), x_hat_BD.detach(), fired_F, l0.float(),
                      fvu(x_BD, x_hat_BD, mse), losses, inexact)  # fmt: skip
    return LossAndGrads(out, grads, idx_BK, keep_N)


class FastTrainStep:
    """`step(x_BD, dead_mask_F=None) -> TrainOutput`: one training step (sparse gradients, then
    `training.step.optimizer_step_`: `grad_hook`, decoder hooks, global-norm clip,
    `opt.step()`), on CUDA captured in a CUDA graph; the call of `training.step.AutogradStep`.

    Graph use: per input signature (x shape/dtype, dead mask given or not) the first `warmup`
    calls run eagerly on a side stream (real steps: they also compile kernels and create the
    optimiser state); the next call captures the step on its inputs and replays it, later calls
    copy their inputs into the captured buffers and replay. Each signature gets its own graph.
    The outputs of a replay are the captured buffers: read them before the next call. The
    optimiser must be capturable (set here) and its learning rate is read at capture: to
    schedule it, give the group a 0-dim CUDA tensor lr and update it in place (fused Adam
    takes one). Everything in the step is sync-free, the clip included
    (`clip_grad_norm_` without `error_if_nonfinite`), so it captures.

    `select`, `aux_candidates` and `backward` are passed to `sparse_loss_and_grads`.

    `grad_hook()` runs once the gradients are set (the data-parallel all-reduce); it must be
    capturable to be used with `cuda_graph=True` (the trainer turns graphs off instead).
    """

    def __init__(
        self,
        sae: SAE,
        opt: torch.optim.Optimizer,
        *,
        compute_dtype: torch.dtype | None = torch.bfloat16,
        cuda_graph: bool = True,
        warmup: int = 2,
        grad_clip: float | None = None,
        grad_hook: Callable[[], None] | None = None,
        select: str = "auto",
        aux_candidates: int | None = None,
        backward: str = "sparse",
    ):
        self.sae, self.opt, self.compute_dtype, self.warmup = sae, opt, compute_dtype, warmup
        check_select(select)
        _check_backward(backward)
        self.select, self.aux_candidates, self.backward = select, aux_candidates, backward
        self.grad_clip, self.grad_hook = grad_clip, grad_hook
        self.params = dict(sae.named_parameters())
        owned = {id(q) for g in opt.param_groups for q in g["params"]}
        if owned != {id(q) for q in self.params.values()}:
            raise ValueError("FastTrainStep: the optimiser must hold exactly the SAE's parameters")
        self.use_graph = cuda_graph and sae.W_enc.device.type == "cuda"
        if self.use_graph:
            for g in opt.param_groups:
                g["capturable"] = True
        self.inexact_rows_total = torch.zeros((), dtype=torch.int64, device=sae.W_enc.device)
        """Rows whose pruned top-k may be inexact, summed over the steps (select="pruned")."""
        self._calls: dict = {}
        # signature -> (graph, static inputs, outputs)
        self._graphs: dict = {}

    def _body(self, x_BD: Tensor, dead_mask_F: Tensor | None) -> TrainOutput:
        res = sparse_loss_and_grads(
            self.sae, x_BD, dead_mask_F=dead_mask_F, compute_dtype=self.compute_dtype,
            select=self.select, aux_candidates=self.aux_candidates, backward=self.backward,
        )  # fmt: skip
        if res.out.inexact_rows is not None:
            self.inexact_rows_total += res.out.inexact_rows
        for name, q in self.params.items():
            q.grad = res.grads[name]
        optimizer_step_(self.sae, self.opt, self.params.values(), grad_clip=self.grad_clip,
                        grad_hook=self.grad_hook)  # fmt: skip
        return res.out

    def __call__(
        self,
        x_BD: Tensor,
        dead_mask_F: Tensor | None = None,
        *,
        sparsity_scale: float = 1.0,
        target_BD: Tensor | None = None,
    ) -> TrainOutput:
        """As `training.step.AutogradStep`; `sparsity_scale` has no term to scale here (the
        architectures the fast step covers have no sparsity penalty) and a target other than
        the input is not supported (fast_step_supports declines transcoders)."""
        if target_BD is not None:
            raise ValueError("FastTrainStep: target_BD is not supported (transcoders train "
                             "with training.step.AutogradStep)")
        if not self.use_graph:
            return self._body(x_BD, dead_mask_F)
        key = (tuple(x_BD.shape), x_BD.dtype, dead_mask_F is None)
        if key in self._graphs:
            graph, (sx, sd), out = self._graphs[key]
            sx.copy_(x_BD)
            if sd is not None:
                sd.copy_(dead_mask_F)
            graph.replay()
            return out
        self._calls[key] = n = self._calls.get(key, 0) + 1
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        if n <= self.warmup:
            with torch.cuda.stream(side):
                out = self._body(x_BD, dead_mask_F)
            torch.cuda.current_stream().wait_stream(side)
            return out
        static = (x_BD.clone(), None if dead_mask_F is None else dead_mask_F.clone())
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the trainer's data thread may use CUDA (a device-resident array, a
            # streamed model) on its own stream during the capture
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = self._body(*static)
        except RuntimeError as e:  # nothing ran during the capture: the eager step is safe
            log.warning("CUDA graph capture failed, training eagerly: %s", str(e)[:300])
            self.use_graph = False
            return self._body(x_BD, dead_mask_F)
        self._graphs[key] = (graph, static, out)
        graph.replay()
        return out
