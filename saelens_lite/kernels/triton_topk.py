"""Fused encoder matmul + top-k (the CUDA fast path's latent selection), and its key packing.

Shape legend: B batch, D model width, F features, K active features per token,
T = cdiv(F, BLOCK_F) feature tiles, KT per-tile candidates (a power of two >= K, <= BLOCK_F).

The unfused selection writes the whole (B, F) pre-activation matrix and then reads it several
times in `torch.topk`'s radix select; on an H100 at D=768, F=24576, B=16384 that top-k took
3.1 of a 7.3 ms training step, more than the matmul itself. Here one kernel computes each
(BLOCK_B, BLOCK_F) tile of pre = xc @ W + b with `tl.dot`, rounds it to the input dtype (16-bit,
as the unfused matmul's output), and keeps only the tile's KT largest entries per row
(`tl.topk`), so only (B, T*KT) candidates (BLOCK_F/KT times fewer) ever reach memory; a
`torch.topk` over the candidates then picks the K. Exactness: a row's K largest entries are
among the KT >= K largest of whichever tile holds them, so the result is the exact top-k of
the 16-bit pre-activations (ties aside).

Each candidate is one int32 sort key carrying value and column together (the classic
"pack the index into the low bits" trick): the 16 bits of the bf16/fp16 value, mapped to an
order-preserving signed integer (negative floats get their magnitude bits flipped), in the high
half and the column (F <= 65536) in the low half. Integer order is then value order with ties
broken by the larger column, and one top-k moves both.

`encode_topk_reference` is the unfused PyTorch equivalent (the fallback, and the tests'
oracle); on a CPU the kernel runs under TRITON_INTERPRET=1 (tests only).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

MAX_F = 1 << 16
"""Columns must fit the key's low 16 bits."""

MAX_K = 64
"""Largest k served: BLOCK_F / next_pow2(k) >= 4, so the candidates are at most F/4."""

BLOCKS = (64, 256, 64)
"""Largest (BLOCK_B, BLOCK_F, BLOCK_D); smaller problems get smaller tiles (`_blocks`).
Untimed: chosen so the tile's int32 keys (64 x 256) sit in registers at 8 warps and
BLOCK_F/KT = 8 at K = 32; `scripts/bench_train.py --device cuda --topk-blocks` compares
other choices."""

WARPS = 8
"""Warps per program of the fused kernel."""

STAGES = 3
"""Software-pipelining stages of its D loop (Triton's `num_stages`): each stage holds one
(BLOCK_B, BLOCK_D) and one (BLOCK_D, BLOCK_F) bf16 tile in shared memory."""


def supports(dtype: torch.dtype, F: int, k: int) -> bool:
    """Whether `encode_topk` serves this selection (bfloat16 compute, F and k in range)."""
    return dtype == torch.bfloat16 and F <= MAX_F and 0 < k <= MAX_K


def _blocks(B: int, F: int, D: int, k: int, blocks: tuple[int, int, int] | None):
    if blocks is not None:
        return blocks
    bb, bf, bd = BLOCKS
    np2 = triton.next_power_of_2
    # tl.dot needs every tile side >= 16; a tile needs BLOCK_F >= KT
    return (max(16, min(bb, np2(B))), max(16, np2(k), min(bf, np2(F))), max(16, min(bd, np2(D))))


def _order16(bits):
    """int16 bit patterns of a 16-bit float -> integers in the floats' order (an involution on
    the negative half: the same map decodes)."""
    return bits ^ ((bits >> 15) & 0x7FFF)


def pack_keys(vals: Tensor, cols: Tensor) -> Tensor:
    """int32 keys: order-preserved 16-bit value in the high half, column in the low half."""
    if vals.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"pack_keys takes bfloat16 or float16 values, got {vals.dtype}")
    hi = _order16(vals.view(torch.int16).to(torch.int32))
    return (hi << 16) | cols.to(torch.int32)


def unpack_keys(keys: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(values in `dtype`, int64 columns) of `pack_keys` keys."""
    vals = _order16(keys >> 16).to(torch.int16).view(dtype)
    return vals, (keys & 0xFFFF).to(torch.int64)


@triton.jit
def _tile_topk_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, B, D, F, sx_b, sw_d, sw_f, n_out,
    KT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
):  # fmt: skip
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rf = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    mb, mf = rb < B, rf < F
    acc = tl.zeros((BLOCK_B, BLOCK_F), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        md = rd < D
        a = tl.load(x_ptr + rb[:, None].to(tl.int64) * sx_b + rd[None, :],
                    mask=mb[:, None] & md[None, :], other=0.0)  # fmt: skip
        w = tl.load(w_ptr + rd[:, None].to(tl.int64) * sw_d + rf[None, :] * sw_f,
                    mask=md[:, None] & mf[None, :], other=0.0)  # fmt: skip
        if UPCAST:  # the interpreter's tl.dot mishandles bfloat16 operands (triton 3.9)
            a, w = a.to(tl.float32), w.to(tl.float32)
        acc = tl.dot(a, w, acc)
    bias = tl.load(b_ptr + rf, mask=mf, other=0.0).to(tl.float32)
    # bf16 bits of pre by round-to-nearest-even of the float32 bits (as a float32 -> bfloat16
    # cast; NaN aside), in integer arithmetic: portable, the interpreter included
    u = (acc + bias[None, :]).to(tl.int32, bitcast=True)
    bits = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    key = ((bits ^ ((bits >> 15) & 0x7FFF)) << 16) | rf[None, :]
    key = tl.where(mf[None, :], key, -2147483648)  # padding columns never win
    top = tl.topk(key, KT)
    ro = tl.program_id(1) * KT + tl.arange(0, KT)
    tl.store(out_ptr + rb[:, None].to(tl.int64) * n_out + ro[None, :], top, mask=mb[:, None])


def tile_candidates(
    xc_BD: Tensor,
    W_DF: Tensor,
    b_F: Tensor,
    k: int,
    blocks: tuple[int, int, int] | None = None,
    kt: int | None = None,
) -> Tensor:
    """int32 keys (B, T*KT): each feature tile's KT largest pre-activations per row (bfloat16
    xc_BD, W_DF, b_F), sorted descending within a tile; KT = kt or next_pow2(k)."""
    B, D = xc_BD.shape
    F_ = W_DF.shape[1]
    KT = kt or triton.next_power_of_2(k)
    BLOCK_B, BLOCK_F, BLOCK_D = _blocks(B, F_, D, KT, blocks)
    if KT > BLOCK_F or F_ > MAX_F or xc_BD.dtype != torch.bfloat16:
        raise ValueError(f"fused top-k needs bfloat16 inputs, next_pow2(k) <= BLOCK_F and "
                         f"F <= {MAX_F}; got {xc_BD.dtype}, k={k}, BLOCK_F={BLOCK_F}, "
                         f"F={F_}")  # fmt: skip
    if xc_BD.stride(1) != 1:
        xc_BD = xc_BD.contiguous()
    T = triton.cdiv(F_, BLOCK_F)
    out = torch.empty(B, T * KT, dtype=torch.int32, device=xc_BD.device)
    grid = (triton.cdiv(B, BLOCK_B), T)
    _tile_topk_kernel[grid](
        xc_BD, W_DF, b_F, out, B, D, F_, xc_BD.stride(0), W_DF.stride(0), W_DF.stride(1),
        T * KT, KT, BLOCK_B, BLOCK_F, BLOCK_D, _INTERPRET, num_warps=WARPS, num_stages=STAGES,
    )  # fmt: skip
    return out


def encode_topk(
    xc_BD: Tensor, W_DF: Tensor, b_F: Tensor, k: int, blocks: tuple[int, int, int] | None = None
) -> tuple[Tensor, Tensor]:
    """(vals_BK, idx_BK): the k largest of pre = xc @ W + b per row, pre rounded to bfloat16
    (xc's dtype), unsorted; as `encode_topk_reference` up to ties and matmul rounding."""
    cand = tile_candidates(xc_BD, W_DF.to(xc_BD.dtype), b_F.to(xc_BD.dtype), k, blocks)
    keys = cand.topk(k, dim=-1, sorted=False).values
    return unpack_keys(keys, xc_BD.dtype)


def encode_topk_reference(xc_BD: Tensor, W_DF: Tensor, b_F: Tensor, k: int):
    """The unfused selection: one 16-bit matmul, then `torch.topk`."""
    dt = xc_BD.dtype
    pre_BF = torch.addmm(b_F.to(dt), xc_BD, W_DF.to(dt))
    return pre_BF.topk(k, dim=-1, sorted=False)


# --- pruned candidates ------------------------------------------------------------------------
# Keeping KT >= K candidates per tile makes the tile's sorting network the kernel's main cost
# (about 80 instructions per pre-activation at KT = 32, see docs/benchmarks.md). With KT' < K
# the network is about half as long (KT' = 8) and 4x fewer candidates reach memory, and the
# result is still exact for every row where no tile had all its KT' candidates in the row's
# top K (the rows we call saturated):
#   a key x missing from the candidates of tile t lies below all of t's candidates, so if
#   x > kth (the smallest key picked) then t's smallest candidate > kth: t is saturated.
# Saturated rows are rare when latents are spread over T tiles as at random (exchangeable
# latents: a tile holds Bin(K, 1/T) of a row's top K), and `pruned_kt` picks KT' so that they
# stay rare; they are recomputed exactly, up to `capacity` rows per batch (sync-free: a fixed
# number of rows, the saturated ones first). Rows beyond the capacity keep the pruned result
# and are counted.

PRUNED_CAPACITY = 64
"""Rows per batch the pruned selection recomputes exactly."""


def pruned_kt(B: int, F: int, k: int, block_f: int | None = None,
              capacity: int | None = None) -> int:  # fmt: skip
    """Smallest power of two KT' in [8, next_pow2(k)] whose expected number of saturated rows
    per batch, B * T * P(Bin(k, 1/T) >= KT') (latents placed as at random), is at most
    capacity / 64; next_pow2(k) (no pruning) if none is, or if T * KT' < k."""
    bf = block_f or _blocks(B, F, 1, 8, None)[1]
    return _pruned_kt(B, triton.cdiv(F, bf), k, PRUNED_CAPACITY if capacity is None else capacity)


@functools.lru_cache(maxsize=256)  # every eager step asks
def _pruned_kt(B: int, T: int, k: int, capacity: int) -> int:
    full, p, kt = triton.next_power_of_2(k), 1.0 / T, 8
    while kt < full:
        tail = sum(math.comb(k, j) * p**j * (1 - p) ** (k - j) for j in range(kt, k + 1))
        if T * kt >= k and B * T * tail <= capacity / 64:
            return kt
        kt *= 2
    return full


class PrunedSelection(NamedTuple):
    keys_BK: Tensor
    """int32 keys of the K largest pre-activations per row (unsorted)."""
    saturated_B: Tensor
    """bool (B,): rows where the pruned candidates may have missed a key."""
    unrepaired: Tensor
    """0-dim int64: saturated rows beyond the repair capacity (their keys may be inexact)."""


def select_pruned(
    cand_BC: Tensor, kt: int, k: int, exact_keys: Callable[[Tensor], Tensor],
    capacity: int | None = None,
) -> PrunedSelection:  # fmt: skip
    """The K largest keys per row from pruned candidates (B, T*kt), with the saturated rows'
    keys replaced by `exact_keys(rows_R)` (the exact top-k keys of rows_R, (R, K)) for the
    first `capacity` saturated rows. No host sync."""
    capacity = PRUNED_CAPACITY if capacity is None else capacity
    B = cand_BC.shape[0]
    keys_BK = cand_BC.topk(k, dim=-1, sorted=False).values
    kth_B = keys_BK.min(-1).values
    tile_min_BT = cand_BC.view(B, -1, kt).min(-1).values
    saturated_B = (tile_min_BT > kth_B[:, None]).any(-1)
    R = min(capacity, B)
    rows_R = torch.argsort(saturated_B.to(torch.int8), descending=True, stable=True)[:R]
    fix_R = saturated_B[rows_R]
    keys_BK[rows_R] = torch.where(fix_R[:, None], exact_keys(rows_R), keys_BK[rows_R])
    unrepaired = (saturated_B.sum() - R).clamp_min(0)
    return PrunedSelection(keys_BK, saturated_B, unrepaired)


def encode_topk_pruned(
    xc_BD: Tensor, W_DF: Tensor, b_F: Tensor, k: int,
    blocks: tuple[int, int, int] | None = None, kt: int | None = None,
    capacity: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """(vals_BK, idx_BK, unrepaired): as `encode_topk`, from KT' = kt or `pruned_kt` candidates
    per tile, saturated rows recomputed by the unfused matmul + top-k (see above); capacity
    None: PRUNED_CAPACITY."""
    dt = xc_BD.dtype
    W, b = W_DF.to(dt), b_F.to(dt)
    (B, D), F_ = xc_BD.shape, W.shape[1]
    kt = kt or pruned_kt(B, F_, k, _blocks(B, F_, D, 8, blocks)[1], capacity)
    cand = tile_candidates(xc_BD, W, b, k, blocks, kt=kt)
    if kt >= k:  # nothing pruned: exact as encode_topk
        vals, idx = unpack_keys(cand.topk(k, dim=-1, sorted=False).values, dt)
        return vals, idx, torch.zeros((), dtype=torch.int64, device=cand.device)

    def exact_keys(rows_R: Tensor) -> Tensor:  # the rows' keys by the unfused matmul
        pre_RF = torch.addmm(b, xc_BD[rows_R], W)
        cols_F = torch.arange(F_, device=pre_RF.device, dtype=torch.int32)
        return pack_keys(pre_RF, cols_F.expand_as(pre_RF)).topk(k, dim=-1, sorted=False).values

    sel = select_pruned(cand, kt, k, exact_keys, capacity)
    vals, idx = unpack_keys(sel.keys_BK, dt)
    return vals, idx, sel.unrepaired
