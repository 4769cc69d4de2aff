"""Sparse encode/decode kernels for SAEs whose latents are mostly zero (TopK, BatchTopK).

Shape legend: B batch, D model width, F features (latents), K active features per token,
N non-zero (token, feature) pairs in a batch (N = B*K for TopK).

Every fast function has its dense PyTorch reference beside it (`*_reference`); the tests compare
the two in float64, values and gradients. Why the fast path is fast: the gradient of a TopK
pre-activation is zero except at the K selected latents, so the weight gradients are
(F, B) sparse x (B, D) dense products (N*D multiply-adds instead of B*F*D) and no dense (B, F)
gradient or (B, K, D) temporary is ever built.

  decode:  x_hat_BD = A_BF @ W_dec_FD,     A sparse with values vals_N at (rows_N, cols_N)
  select:  vals_N   = ((x - b_dec) @ W_enc + b_enc)[rows_N, cols_N]

Both autograd Functions reduce to three primitives on a SparsePattern: `gather_rows_sum`
(embedding_bag), `sampled_dot` (SDDMM) and `transposed_matmul` (CSR SpMM). On CPU they use
PyTorch's sparse library; on CUDA, Triton kernels (kernels/triton_sparse.py: one launch each,
no host sync, so a training step can be captured in a CUDA graph) when triton imports.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

_SPARSE_LIB_DTYPES = (torch.float32, torch.float64)  # dtypes the CSR SpMM / SDDMM paths support


_CUDA_MODES = ("triton", "cusparse", "gather")


def _cuda_mode() -> str:
    """CUDA path for the primitives, from SAELENS_LITE_CUDA_SPARSE: "triton" (default when
    triton imports: one sync-free launch per primitive, see kernels/triton_sparse.py),
    "cusparse" (CSR SpMM / SDDMM: 5-20% faster than "gather" on an H100, but launch-bound and
    syncing) or "gather" (chunked gathers + index_add)."""
    mode = os.environ.get("SAELENS_LITE_CUDA_SPARSE")
    if mode is None:
        return "triton" if _triton() is not None else "cusparse"
    if mode not in _CUDA_MODES:
        raise ValueError(f"SAELENS_LITE_CUDA_SPARSE={mode!r} is invalid; allowed: {_CUDA_MODES}")
    return mode


_TRITON: list = []  # [module or None], imported on first use: CPU-only runs never import it


def _triton():
    if not _TRITON:
        try:
            from saelens_lite.kernels import triton_sparse
        except ImportError:
            triton_sparse = None
        _TRITON.append(triton_sparse)
    return _TRITON[0]


FORCE_TRITON_ENV = "SAELENS_LITE_FORCE_TRITON"
"""Set to 1 to route tensors on any device to the Triton kernels, not only CUDA ones: how the
tests run the CUDA path on the CPU (under ``TRITON_INTERPRET=1``) and
scripts/triton_compile_check.py compiles it on meta tensors. Read per call."""


def _use_triton(t: Tensor) -> bool:
    on_device = t.device.type == "cuda" or os.environ.get(FORCE_TRITON_ENV) == "1"
    return on_device and _cuda_mode() == "triton"


def use_triton(t: Tensor) -> bool:  # for the fast step
    return _use_triton(t)


def _use_sparse_lib(t: Tensor) -> bool:
    return t.dtype in _SPARSE_LIB_DTYPES and (t.device.type == "cpu" or _cuda_mode() == "cusparse")


_CHUNK = 1 << 14  # rows of gathered (chunk, D) temporaries in the fallback paths


class SparsePattern:
    """Positions (rows_N, cols_N) of the non-zeros of a (B, F) activation matrix, rows sorted.

    `idx_BK` is set when every row has exactly K entries (TopK): then rows are implicit and the
    fast paths use the fixed-bag forms. The feature-sorted (transposed CSR) layout that both
    backward passes need is built once, on first use, and shared between them.
    """

    def __init__(
        self, rows_N: Tensor, cols_N: Tensor, n_rows: int, n_cols: int, idx_BK: Tensor | None = None
    ):
        self.rows_N, self.cols_N, self.idx_BK = rows_N, cols_N, idx_BK
        self.n_rows, self.n_cols = n_rows, n_cols
        self._offsets_B: Tensor | None = None
        self._by_feature: tuple[Tensor, Tensor, Tensor] | None = None

    @classmethod
    def from_topk(cls, idx_BK: Tensor, n_cols: int) -> SparsePattern:
        idx_BK = idx_BK.contiguous()
        B, K = idx_BK.shape
        rows_N = torch.arange(B, device=idx_BK.device)[:, None].expand(B, K).reshape(-1)
        p = cls(rows_N, idx_BK.view(-1), B, n_cols, idx_BK)
        p._offsets_B = torch.arange(0, B * K, K, device=idx_BK.device)  # no bincount (a sync)
        return p

    @classmethod
    def from_coo(cls, rows_N: Tensor, cols_N: Tensor, n_rows: int, n_cols: int) -> SparsePattern:
        """`rows_N` must be sorted ascending (e.g. from sorted flat indices)."""
        return cls(rows_N.contiguous(), cols_N.contiguous(), n_rows, n_cols)

    @property
    def offsets_B(self) -> Tensor:
        if self._offsets_B is None and self.rows_N.device.type != "cpu":  # no bincount sync
            bounds = torch.arange(self.n_rows, device=self.rows_N.device)
            self._offsets_B = torch.searchsorted(self.rows_N, bounds)
        if self._offsets_B is None:
            counts = torch.bincount(self.rows_N, minlength=self.n_rows)
            self._offsets_B = torch.cumsum(counts, 0) - counts
        return self._offsets_B

    def by_feature(self) -> tuple[Tensor, Tensor, Tensor]:
        """(order_N, crow_F1, rows_sorted_N): the pattern sorted by feature, as CSR of A^T."""
        if self._by_feature is None and self.cols_N.device.type != "cpu":
            order_N, crow = _sync_free_csr(self.cols_N, self.n_cols)
            self._by_feature = (order_N, crow, self.rows_N[order_N])
        if self._by_feature is None:
            order_N = torch.argsort(self.cols_N)
            # [:n_cols]: entries at the sentinel column n_cols (triton_sparse) sort last, unvisited
            counts_F = torch.bincount(self.cols_N, minlength=self.n_cols)[: self.n_cols]
            crow = torch.zeros(self.n_cols + 1, dtype=torch.int64, device=self.cols_N.device)
            torch.cumsum(counts_F, 0, out=crow[1:])
            self._by_feature = (order_N, crow, self.rows_N[order_N])
        return self._by_feature

    def transposed_matmul(
        self, vals_N: Tensor, dense_BD: Tensor, *, out_DF: bool = False,
        out_dtype: torch.dtype | None = None,
    ) -> Tensor:
        """A^T @ dense -> (F, D), where A (B, F) holds vals_N at this pattern. With out_DF the
        result is written as the transpose of a contiguous (D, F) tensor, which is returned, so
        that a (D, F) parameter's gradient needs no layout copy. `out_dtype` (without out_DF):
        the result's dtype (Triton: mixed dtypes, float32 accumulation, as the pair's)."""
        if _use_triton(dense_BD):
            return _triton().transposed_matmul(
                *self._by_feature_triton(), [(vals_N, dense_BD)], out_DF=out_DF,
                out_dtype=out_dtype,
            )[0]
        if out_dtype is not None and not out_DF:
            return self.transposed_matmul(vals_N, dense_BD).to(out_dtype)
        if dense_BD.device.type == "cpu" and dense_BD.dtype in _SPARSE_LIB_DTYPES:
            # one embedding_bag over the feature-sorted pattern: bag f = A^T's row f (an empty
            # bag is a zero row); 2-11x torch's CSR SpMM on CPU for the (F, D) output
            # (scripts/bench_cpu_spmm.py; docs/benchmarks.md)
            order_N, crow, rows_sorted = self.by_feature()
            n = int(crow[-1])  # entries at the sentinel column F sort last: not in any bag
            out_FD = F.embedding_bag(rows_sorted[:n], dense_BD, crow,
                                     per_sample_weights=vals_N[order_N[:n]].to(dense_BD.dtype),
                                     mode="sum", include_last_offset=True)
            return out_FD.t().contiguous() if out_DF else out_FD
        if not _use_sparse_lib(dense_BD):  # half types, CUDA: chunked gather + index_add
            out_FD = dense_BD.new_zeros(self.n_cols, dense_BD.shape[1])
            for s in range(0, self.cols_N.numel(), _CHUNK):
                r, c = self.rows_N[s : s + _CHUNK], self.cols_N[s : s + _CHUNK]
                out_FD.index_add_(0, c, vals_N[s : s + _CHUNK, None] * dense_BD[r])
            return out_FD.t().contiguous() if out_DF else out_FD
        order_N, crow, rows_sorted = self.by_feature()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR is beta": we use the stable SpMM only
            At = torch.sparse_csr_tensor(
                crow,
                rows_sorted,
                vals_N[order_N],
                size=(self.n_cols, self.n_rows),
                check_invariants=False,
            )
        if not out_DF:
            return At @ dense_BD
        out = dense_BD.new_empty(dense_BD.shape[1], self.n_cols)  # CUDA (cusparse): CPU took the branch above
        out.copy_((At @ dense_BD).t())
        return out

    def transposed_matmul_pair(
        self,
        vals1_N: Tensor,
        dense1_BD: Tensor,
        vals2_N: Tensor,
        dense2_BD: Tensor,
        out_dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(A1^T @ dense1, A2^T @ dense2), both (F, D), A1 and A2 holding vals1_N and vals2_N
        at this pattern: the encoder and decoder weight gradients of a TopK SAE. On CUDA with
        Triton one launch does both (one pass over the feature-sorted pattern), and mixed
        dtypes are allowed (e.g. bfloat16 dense rows, float32 values, `out_dtype` float32)."""
        if _use_triton(dense1_BD):
            o1, o2 = _triton().transposed_matmul(
                *self._by_feature_triton(),
                [(vals1_N, dense1_BD), (vals2_N, dense2_BD)],
                out_dtype=out_dtype,
            )
            return o1, o2
        o1 = self.transposed_matmul(vals1_N, dense1_BD)
        o2 = self.transposed_matmul(vals2_N, dense2_BD)
        return (o1, o2) if out_dtype is None else (o1.to(out_dtype), o2.to(out_dtype))

    def _by_feature_triton(self) -> tuple[Tensor, Tensor, Tensor]:
        order_N, crow, rows_sorted = self.by_feature()
        return crow, order_N, rows_sorted

    def sampled_dot(self, left_BD: Tensor, right_FD: Tensor) -> Tensor:
        """vals_N[n] = <left[rows_n], right[cols_n]> (an SDDMM at this pattern).
        Triton: dtype promote(left, right), float32 accumulation."""
        if _use_triton(left_BD):
            return _triton().sampled_dot(self.rows_N, self.cols_N, left_BD, right_FD)
        if _use_sparse_lib(left_BD):
            crow = torch.cat([self.offsets_B, self.offsets_B.new_tensor([self.rows_N.numel()])])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                S = torch.sparse_csr_tensor(
                    crow,
                    self.cols_N,
                    left_BD.new_zeros(self.rows_N.numel()),
                    size=(self.n_rows, self.n_cols),
                    check_invariants=False,
                )
                return torch.sparse.sampled_addmm(S, left_BD, right_FD.t(), beta=0.0).values()
        out = left_BD.new_empty(self.rows_N.numel())
        for s in range(0, out.numel(), _CHUNK):
            r, c = self.rows_N[s : s + _CHUNK], self.cols_N[s : s + _CHUNK]
            out[s : s + _CHUNK] = (left_BD[r] * right_FD[c]).sum(-1)
        return out

    def gather_rows_sum(self, vals_N: Tensor, table_FD: Tensor) -> Tensor:
        """out_BD[b] = sum over n in row b of vals_N[n] * table[cols_n] (embedding_bag).
        Triton (TopK patterns on CUDA): dtype promote(vals, table), float32 accumulation."""
        if self.idx_BK is not None and _use_triton(table_FD):
            return _triton().decode_topk(self.idx_BK, vals_N.view(self.idx_BK.shape), table_FD)
        if self.idx_BK is not None:
            return F.embedding_bag(
                self.idx_BK, table_FD, per_sample_weights=vals_N.view(self.idx_BK.shape), mode="sum"
            )
        return F.embedding_bag(
            self.cols_N, table_FD, self.offsets_B, per_sample_weights=vals_N, mode="sum"
        )


def _sync_free_csr(cols_N: Tensor, n_cols: int) -> tuple[Tensor, Tensor]:
    """(order_N, crow_F1) by sort + searchsorted: bincount on CUDA syncs to size its output.
    The keys are sorted as int32 (a radix sort of half the key bits; columns, the sentinel
    n_cols included, fit) where they arrive as int64 (top-k indices)."""
    if n_cols < 2**31 - 1:
        cols_N = cols_N.to(torch.int32)
    cols_sorted, order_N = torch.sort(cols_N)
    bounds = torch.arange(n_cols + 1, device=cols_N.device, dtype=cols_sorted.dtype)
    return order_N, torch.searchsorted(cols_sorted, bounds)


def _no_autocast(t: Tensor):
    return torch.autocast(t.device.type, enabled=False)


def as_pattern(idx: Tensor | SparsePattern, n_cols: int) -> SparsePattern:
    return idx if isinstance(idx, SparsePattern) else SparsePattern.from_topk(idx, n_cols)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vals_N: Tensor, W_dec_FD: Tensor, pattern: SparsePattern) -> Tensor:
        vals_N = vals_N.to(W_dec_FD.dtype)  # bf16 values under autocast: computed in W's dtype
        ctx.save_for_backward(vals_N, W_dec_FD)
        ctx.pattern = pattern
        with _no_autocast(W_dec_FD):
            return pattern.gather_rows_sum(vals_N, W_dec_FD)

    @staticmethod
    def backward(ctx, g_BD: Tensor):
        vals_N, W_dec_FD = ctx.saved_tensors
        p: SparsePattern = ctx.pattern
        g_BD = g_BD.to(W_dec_FD.dtype).contiguous()  # a bf16 gradient under autocast: parameter dtype
        with _no_autocast(W_dec_FD):  # a backward run inside autocast: the sparse products stay in W's dtype
            grad_vals = p.sampled_dot(g_BD, W_dec_FD) if ctx.needs_input_grad[0] else None
            grad_W = p.transposed_matmul(vals_N, g_BD) if ctx.needs_input_grad[1] else None
        return grad_vals, grad_W, None


def sparse_decode(idx: Tensor | SparsePattern, vals: Tensor, W_dec_FD: Tensor) -> Tensor:
    """x_BD = sum_k vals[b, k] * W_dec[idx[b, k]] (no bias). `idx` is idx_BK or a SparsePattern."""
    p = as_pattern(idx, W_dec_FD.shape[0])
    return _SparseDecode.apply(vals.reshape(-1), W_dec_FD, p)


def sparse_decode_reference(idx: Tensor | SparsePattern, vals: Tensor, W_dec_FD: Tensor) -> Tensor:
    p = as_pattern(idx, W_dec_FD.shape[0])
    acts_BF = vals.new_zeros(p.n_rows, p.n_cols).index_put(
        (p.rows_N, p.cols_N), vals.reshape(-1), accumulate=True
    )
    return acts_BF @ W_dec_FD


class _SelectPreacts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_BD, W_enc_DF, b_enc_F, b_dec_D, pattern: SparsePattern, pre_N):
        xc_BD = x_BD.to(W_enc_DF.dtype) - b_dec_D
        if pre_N is None:
            with _no_autocast(W_enc_DF):
                pre_N = pattern.sampled_dot(xc_BD, W_enc_DF.t()) + b_enc_F[pattern.cols_N]
        ctx.save_for_backward(xc_BD, W_enc_DF)
        ctx.pattern = pattern
        return pre_N.reshape(-1).clone()

    @staticmethod
    def backward(ctx, g_N: Tensor):
        with _no_autocast(g_N):  # a backward run inside autocast: products stay in W's dtype
            return _SelectPreacts._backward(ctx, g_N)

    @staticmethod
    def _backward(ctx, g_N: Tensor):
        xc_BD, W_enc_DF = ctx.saved_tensors
        p: SparsePattern = ctx.pattern
        need_x, need_W, need_be, need_bd = ctx.needs_input_grad[:4]
        g_N = g_N.to(W_enc_DF.dtype).contiguous()
        grad_x = grad_W = grad_be = grad_bd = None
        if need_W:
            # match W_enc's layout so AccumulateGrad keeps the tensor instead of copying it
            col_major = W_enc_DF.t().is_contiguous()
            grad_W = (
                p.transposed_matmul(g_N, xc_BD).t()
                if col_major
                else p.transposed_matmul(g_N, xc_BD, out_DF=True)
            )
        if need_be or need_bd:
            grad_be = g_N.new_zeros(p.n_cols).index_add_(0, p.cols_N, g_N)
            # d pre_n / d b_dec = -W_enc[:, cols_n], so the sum over n is -W_enc @ grad_b_enc
            grad_bd = -(W_enc_DF @ grad_be) if need_bd else None
            grad_be = grad_be if need_be else None
        if need_x:
            grad_x = p.gather_rows_sum(g_N, W_enc_DF.t().contiguous())
        return grad_x, grad_W, grad_be, grad_bd, None, None


def select_preacts(
    x_BD: Tensor,
    W_enc_DF: Tensor,
    b_enc_F: Tensor,
    b_dec_D: Tensor,
    idx: Tensor | SparsePattern,
    pre: Tensor | None = None,
) -> Tensor:
    """vals[n] = ((x - b_dec) @ W_enc + b_enc)[row_n, col_n], differentiable, sparse backward.

    `pre` (the same values, e.g. from the top-k of a dense no-grad matmul) skips the recompute.
    Returns the shape of `idx` when it is idx_BK, else (N,).
    """
    p = as_pattern(idx, W_enc_DF.shape[1])
    out = _SelectPreacts.apply(
        x_BD, W_enc_DF, b_enc_F, b_dec_D, p, None if pre is None else pre.reshape(-1)
    )
    return out.view(idx.shape) if isinstance(idx, Tensor) else out


def select_preacts_reference(x_BD, W_enc_DF, b_enc_F, b_dec_D, idx, pre=None) -> Tensor:
    p = as_pattern(idx, W_enc_DF.shape[1])
    out = ((x_BD - b_dec_D) @ W_enc_DF + b_enc_F)[p.rows_N, p.cols_N]
    return out.view(idx.shape) if isinstance(idx, Tensor) else out
