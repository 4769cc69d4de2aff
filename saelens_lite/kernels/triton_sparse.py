"""Triton kernels for the three SparsePattern primitives (the CUDA fast path).

Shape legend: B batch, D model width, F features, K active features per token,
N non-zero (token, feature) pairs (N = B*K for TopK).

  decode_topk:        out_BD[b]   = sum_k vals_BK[b, k] * table_FD[idx_BK[b, k]]
  sampled_dot:        out_N[n]    = <left_BD[rows_n], right_FD[cols_n]>
  transposed_matmul:  out_FD[f]   = sum_{n: cols_n = f} vals_N[n] * dense_BD[rows_n]
                      (optionally two such products over one pattern in one launch:
                      the encoder and decoder weight gradients share the feature sort)

Inactive entries: a column equal to the table's row count F (a sentinel one past the last
feature) marks an entry that contributes nothing: decode and sampled_dot load nothing for it
(sampled_dot returns 0), and the feature-sorted segments (crow_F1 over F features) end before
the sentinels, so the transposed product never visits them. The fast step routes AuxK's
non-dead picks and BatchTopK's dropped candidates there, so they cost an index load, not a
D-wide row gather each.

Why these shapes of kernel: each is one launch, reads every gathered row once with
D-contiguous (coalesced) loads and accumulates in float32 (float64 for float64 inputs, which
the tests use). The transposed product is a segment reduction over the pattern sorted by
feature (`crow_F1` from sparse._sync_free_csr: no bincount, so no host sync): one program per
(feature, D block) sums its segment and writes the row, zeros included, so the output needs
no memset and no atomics. Nothing here synchronises with the host, so the whole training step
can be captured in a CUDA graph.

Block shapes were chosen from ptxas resource reports for sm_90 (no spills; 8 x 256 tiles with
4 warps keep the gather kernels at 32-72 registers, so many programs stay in flight; 16-row tiles
of the two-output segment kernel needed ~150-210 registers). Not yet tuned by timing.
On a CPU the kernels run under TRITON_INTERPRET=1 (tests only; the CPU fast path is PyTorch).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

SEGMENT_BLOCK_N = 8
"""Pattern entries per loop iteration of the weight-gradient segment reduction (about
B*K/F per feature: 21 at D=768, F=24576, K=32, B=16384). Untimed against 16 or 32;
`scripts/bench_train.py --segment-block-n` compares them."""
SEGMENT_BLOCK_D = 256
"""Largest D slice per program of the segment reduction (the slice is min(this,
next_pow2(D))); one program per (feature, slice)."""
SEGMENT_WARPS = 4
"""Warps per program of the segment reduction."""
SEGMENT_PREFETCH = False
"""Load the next iteration's pattern indices before this iteration's row gathers, so their
latency overlaps (an H100 profile: the reduction ran at ~1.1 TB/s of gathered
rows, 1.5 ms at the first shape; the index loads sit in front of every gather).
`scripts/bench_kernels.py` times all four settings."""


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Kernels accumulate in their output's dtype: float64 for float64, else float32 (the
    wrappers cast half-precision results afterwards)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _block_d(D: int, cap: int = 256) -> int:
    return min(cap, triton.next_power_of_2(D))


@triton.jit
def _decode_topk_kernel(
    idx_ptr, vals_ptr, table_ptr, out_ptr, B, D, F, stride_t, K: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    ACC = out_ptr.dtype.element_ty
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mb, md = rb < B, rd < D
    acc = tl.zeros((BLOCK_B, BLOCK_D), ACC)
    for k in range(K):
        f = tl.load(idx_ptr + rb * K + k, mask=mb, other=0).to(tl.int64)
        on = mb & (f < F)  # the sentinel column F: inactive, nothing loaded
        v = tl.load(vals_ptr + rb * K + k, mask=on, other=0.0).to(ACC)
        w = tl.load(
            table_ptr + f[:, None] * stride_t + rd[None, :],
            mask=(on & (v != 0))[:, None] & md[None, :],
            other=0.0,
        )
        acc += v[:, None] * w.to(ACC)
    out = out_ptr + rb[:, None].to(tl.int64) * D + rd[None, :]
    tl.store(out, acc, mask=mb[:, None] & md[None, :])


@triton.jit
def _sampled_dot_kernel(
    rows_ptr, cols_ptr, left_ptr, right_ptr, out_ptr, N, D, F, stride_l, stride_r,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    ACC = out_ptr.dtype.element_ty
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    c = tl.load(cols_ptr + rn, mask=rn < N, other=F).to(tl.int64)
    mn = (rn < N) & (c < F)  # the sentinel column F: inactive, 0, nothing loaded
    r = tl.load(rows_ptr + rn, mask=mn, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_N, BLOCK_D), ACC)
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        m = mn[:, None] & (rd < D)[None, :]
        a = tl.load(left_ptr + r[:, None] * stride_l + rd[None, :], mask=m, other=0.0)
        b = tl.load(right_ptr + c[:, None] * stride_r + rd[None, :], mask=m, other=0.0)
        acc += a.to(ACC) * b.to(ACC)
    tl.store(out_ptr + rn, tl.sum(acc, axis=1), mask=rn < N)


@triton.jit
def _segment_matmul_kernel(
    crow_ptr, order_ptr, rows_ptr, D,
    v1_ptr, x1_ptr, o1_ptr, sx1, so1_f, so1_d,
    v2_ptr, x2_ptr, o2_ptr, sx2, so2_f, so2_d,
    TWO: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PREFETCH: tl.constexpr,
):  # fmt: skip
    ACC = o1_ptr.dtype.element_ty
    ACC2 = o2_ptr.dtype.element_ty
    f = tl.program_id(0)
    rd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    md = rd < D
    start = tl.load(crow_ptr + f)
    end = tl.load(crow_ptr + f + 1)
    acc1 = tl.zeros((BLOCK_N, BLOCK_D), ACC)
    acc2 = tl.zeros((BLOCK_N, BLOCK_D), ACC2)
    if PREFETCH:
        rn = start + tl.arange(0, BLOCK_N)
        n_next = tl.load(order_ptr + rn, mask=rn < end, other=0)
        r_next = tl.load(rows_ptr + rn, mask=rn < end, other=0)
    for s in range(start, end, BLOCK_N):
        rn = s + tl.arange(0, BLOCK_N)
        mn = rn < end
        m = mn[:, None] & md[None, :]
        if PREFETCH:  # this iteration's indices came with the last one; fetch the next ones
            n = n_next
            r = r_next.to(tl.int64)
            n_next = tl.load(order_ptr + rn + BLOCK_N, mask=rn + BLOCK_N < end, other=0)
            r_next = tl.load(rows_ptr + rn + BLOCK_N, mask=rn + BLOCK_N < end, other=0)
        else:
            n = tl.load(order_ptr + rn, mask=mn, other=0)
            r = tl.load(rows_ptr + rn, mask=mn, other=0).to(tl.int64)
        v1 = tl.load(v1_ptr + n, mask=mn, other=0.0).to(ACC)
        x1 = tl.load(x1_ptr + r[:, None] * sx1 + rd[None, :], mask=m, other=0.0)
        acc1 += v1[:, None] * x1.to(ACC)
        if TWO:
            v2 = tl.load(v2_ptr + n, mask=mn, other=0.0).to(ACC2)
            x2 = tl.load(x2_ptr + r[:, None] * sx2 + rd[None, :], mask=m, other=0.0)
            acc2 += v2[:, None] * x2.to(ACC2)
    f64 = f.to(tl.int64)
    tl.store(o1_ptr + f64 * so1_f + rd * so1_d, tl.sum(acc1, axis=0), mask=md)
    if TWO:
        tl.store(o2_ptr + f64 * so2_f + rd * so2_d, tl.sum(acc2, axis=0), mask=md)


def _rowmajor(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def decode_topk(idx_BK: Tensor, vals_BK: Tensor, table_FD: Tensor) -> Tensor:
    """out_BD[b] = sum_k vals[b, k] * table[idx[b, k]] over idx < F (F: the sentinel of an
    inactive entry); dtype promote(vals, table)."""
    idx_BK, vals_BK, table_FD = idx_BK.contiguous(), vals_BK.contiguous(), _rowmajor(table_FD)
    B, K = idx_BK.shape
    D = table_FD.shape[1]
    dt = torch.promote_types(vals_BK.dtype, table_FD.dtype)
    out = torch.empty(B, D, dtype=_acc(dt), device=table_FD.device)
    BLOCK_B, BLOCK_D = 16, _block_d(D)
    grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(D, BLOCK_D))
    _decode_topk_kernel[grid](
        idx_BK, vals_BK, table_FD, out, B, D, table_FD.shape[0], table_FD.stride(0), K,
        BLOCK_B, BLOCK_D,
    )  # fmt: skip
    return out.to(dt)


def sampled_dot(rows_N: Tensor, cols_N: Tensor, left_BD: Tensor, right_FD: Tensor) -> Tensor:
    """out_N[n] = <left[rows_n], right[cols_n]>, 0 where cols_n = F (the sentinel of an
    inactive entry); dtype promote(left, right)."""
    left_BD, right_FD = _rowmajor(left_BD), _rowmajor(right_FD)
    N, D = rows_N.numel(), left_BD.shape[1]
    dt = torch.promote_types(left_BD.dtype, right_FD.dtype)
    out = torch.empty(N, dtype=_acc(dt), device=left_BD.device)
    BLOCK_N, BLOCK_D = 8, _block_d(D)
    _sampled_dot_kernel[(triton.cdiv(N, BLOCK_N),)](
        rows_N.contiguous(), cols_N.contiguous(), left_BD, right_FD, out, N, D, right_FD.shape[0],
        left_BD.stride(0), right_FD.stride(0), BLOCK_N, BLOCK_D,
    )  # fmt: skip
    return out.to(dt)


def transposed_matmul(
    crow_F1: Tensor,
    order_N: Tensor,
    rows_sorted_N: Tensor,
    pairs: list[tuple[Tensor, Tensor]],
    *,
    out_DF: bool = False,
    block_n: int | None = None,
    out_dtype: torch.dtype | None = None,
    block_d: int | None = None,
    num_warps: int | None = None,
    prefetch: bool | None = None,
) -> list[Tensor]:
    """For each (vals_N, dense_BD) in `pairs` (one or two): A^T @ dense -> (F, D), A the (B, F)
    matrix holding vals_N at the pattern. With out_DF each result is returned as a contiguous
    (D, F) tensor (the transpose), written directly in that layout. Results have dtype
    `out_dtype` (default: each dense input's). `block_n`, `block_d`, `num_warps`, `prefetch`:
    the launch settings (None: SEGMENT_BLOCK_N, SEGMENT_BLOCK_D, SEGMENT_WARPS,
    SEGMENT_PREFETCH)."""
    F_ = crow_F1.numel() - 1
    dense = [_rowmajor(d) for _, d in pairs]
    D = dense[0].shape[1]
    out_dts = [out_dtype or d.dtype for d in dense]
    outs = [
        torch.empty(*((D, F_) if out_DF else (F_, D)), dtype=_acc(dt), device=d.device)
        for d, dt in zip(dense, out_dts)
    ]
    st = [(1, F_) if out_DF else (D, 1) for _ in outs]
    vals = [v.contiguous() for v, _ in pairs]
    two = len(pairs) == 2
    i2 = 1 if two else 0
    BLOCK_N, BLOCK_D = block_n or SEGMENT_BLOCK_N, _block_d(D, block_d or SEGMENT_BLOCK_D)
    prefetch = SEGMENT_PREFETCH if prefetch is None else prefetch
    _segment_matmul_kernel[(F_, triton.cdiv(D, BLOCK_D))](
        crow_F1, order_N, rows_sorted_N, D,
        vals[0], dense[0], outs[0], dense[0].stride(0), *st[0],
        vals[i2], dense[i2], outs[i2], dense[i2].stride(0), *st[i2],
        two, BLOCK_N, BLOCK_D, prefetch, num_warps=num_warps or SEGMENT_WARPS,
    )  # fmt: skip
    return [o.to(dt) for o, dt in zip(outs, out_dts)]
