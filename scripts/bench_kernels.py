"""Time each Triton kernel of the CUDA fast training step alone, over its launch settings.

The full-step benchmark (`bench_train.py`) says how fast a step is; this says which kernel
costs what and which launch settings make it cheaper, in one short GPU run, so the defaults in
`kernels.triton_topk` and `kernels.triton_sparse` are picked from measurements. Sections:

  topk     the fused matmul + top-k (`triton_topk.encode_topk`, candidates then the final
           torch.topk) per tile setting (BLOCK_B, BLOCK_F, BLOCK_D, warps, stages), the pruned
           selection (`encode_topk_pruned`) per candidates-per-tile KT', against cuBLAS alone
           (the matmul floor) and cuBLAS + torch.topk (the unfused path)
  segment  the weight-gradient segment reduction (`triton_sparse.transposed_matmul`, both
           gradients in one launch) per (BLOCK_N, BLOCK_D, warps, prefetch), on a uniform and
           a skewed pattern (latent frequencies spread as in trained SAEs), with the bandwidth
           of its row gathers, against torch's index_add_
  gather   the decoder gather-sum and the sampled dot at the default settings

Every variant is checked against a reference first (a wrong variant is reported, not timed).
Times are the median of `triton.testing.do_bench` (L2 flushed between runs, so rows come
from HBM: a conservative number); "x default" is the default setting's time over the row's.

    python scripts/bench_kernels.py --device cuda [--shape 768 24576 32 16384] [--only segment]
    python scripts/bench_kernels.py --device cpu --shape 32 256 4 64   # dry run: interpreter
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

SEGMENT_VARIANTS = [  # (BLOCK_N, BLOCK_D, warps, prefetch); the first is the default
    (8, 256, 4, False), (8, 256, 4, True), (4, 256, 4, True), (16, 256, 4, True),
    (8, 128, 2, False), (8, 128, 4, True), (8, 512, 8, False), (8, 512, 8, True),
    (16, 512, 8, True), (8, 1024, 8, True),
]  # fmt: skip
TOPK_VARIANTS = [  # (BLOCK_B, BLOCK_F, BLOCK_D, warps, stages); the first is the default
    (64, 256, 64, 8, 3), (64, 256, 64, 8, 2), (64, 256, 32, 8, 3), (128, 128, 64, 8, 3),
    (64, 128, 64, 4, 3), (128, 256, 64, 8, 2),
]  # fmt: skip


def _timer(dev: str, reps: int):
    if dev == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=5, rep=max(reps, 1) * 20,
                                                  return_mode="median")  # fmt: skip

    def cpu_time(fn):  # the interpreter: a dry run, not a measurement (no warm-up)
        ts = []
        for _ in range(max(reps, 1)):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts)

    return cpu_time


def _row(name: str, ms: float | None, base: float | None, extra: str = "") -> None:
    if ms is None:
        print(f"  {name:44s} {'-':>9s}  {extra}", flush=True)
        return
    x = f"{base / ms:9.2f}" if base else f"{'':9s}"
    print(f"  {name:44s} {ms:9.3f} {x}  {extra}", flush=True)


def _pattern(B: int, F: int, K: int, dev: str, skewed: bool, g: torch.Generator):
    """idx_BK: distinct latents per row; skewed: per-latent rates spread over ~2 decades."""
    logits_F = torch.randn(F, generator=g, device=dev) * (1.5 if skewed else 0.0)
    score_BF = torch.rand(B, F, generator=g, device=dev).log().neg().log().neg() + logits_F
    return score_BF.topk(K, dim=-1).indices  # Gumbel top-k: K distinct draws by rate


def bench_segment(D, F, K, B, dev, timer, variants) -> None:
    g = torch.Generator(device=dev).manual_seed(0)
    print(f"\nsegment reduction (both weight gradients), N = B*K = {B * K} entries, ms "
          f"(x default)")  # fmt: skip
    for skewed in (False, True):
        _bench_segment_pattern(D, F, K, B, dev, timer, variants, _pattern(B, F, K, dev, skewed, g),
                               "skewed" if skewed else "uniform", g)  # fmt: skip


def _bench_segment_pattern(D, F, K, B, dev, timer, variants, idx_BK, label, g) -> None:
    from saelens_lite.kernels import sparse as sparse_mod
    from saelens_lite.kernels import triton_sparse

    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    N = B * K
    cols_N = idx_BK.reshape(-1)
    rows_N = torch.arange(B, device=dev).repeat_interleave(K)
    order_N, crow = sparse_mod._sync_free_csr(cols_N, F)
    rows_sorted = rows_N[order_N]
    pairs = [(torch.randn(N, generator=g, device=dev),
              torch.randn(B, D, generator=g, device=dev).to(dt)) for _ in range(2)]  # fmt: skip

    def torch_ref():
        return [torch.zeros(F, D, device=dev).index_add_(0, cols_N, v[:, None] * x[rows_N].float())
                for v, x in pairs]  # fmt: skip

    ref = torch_ref()
    seg = torch.diff(crow).float()
    print(f" pattern {label}: entries per latent mean {seg.mean():.1f}, max {seg.max():.0f}")
    gathered = 2 * N * D * pairs[0][1].element_size()  # bytes of the row gathers
    base = None
    for bn, bd, w, pf in variants:
        name = f"BLOCK_N={bn} BLOCK_D={bd} warps={w}{' prefetch' if pf else ''}"

        def run(bn=bn, bd=bd, w=w, pf=pf):
            return triton_sparse.transposed_matmul(
                crow, order_N, rows_sorted, pairs, out_dtype=torch.float32,
                block_n=bn, block_d=bd, num_warps=w, prefetch=pf,
            )  # fmt: skip

        try:
            err = max(float((o - r).norm() / r.norm()) for o, r in zip(run(), ref))
            if err > 2e-2:
                _row(name, None, None, f"WRONG: relative error {err:.1e}")
                continue
            ms = timer(run)
        except Exception as e:  # one failing setting must not stop the sweep
            _row(name, None, None, f"FAILED {type(e).__name__}: {str(e)[:150]}")
            continue
        base = base or ms
        _row(name, ms, base, f"{gathered / ms / 1e6:7.0f} GB/s of row gathers")
    _row("torch index_add_ (reference)", timer(torch_ref), base)


def bench_topk(D, F, K, B, dev, timer, variants, kts) -> None:
    import triton

    from saelens_lite.kernels import triton_topk

    g = torch.Generator(device=dev).manual_seed(0)
    dt = torch.bfloat16
    xc = torch.randn(B, D, generator=g, device=dev).to(dt)
    W = (torch.randn(F, D, generator=g, device=dev) / D**0.5).to(dt).T  # (D, F) view, as W_enc
    b = (torch.randn(F, generator=g, device=dev) * 0.1).to(dt)
    print(f"\nencoder matmul + top-k (B={B}, F={F}, K={K}), ms (x unfused)")
    floor = timer(lambda: torch.addmm(b, xc, W))
    unfused = timer(lambda: triton_topk.encode_topk_reference(xc, W, b, K))
    _row("cuBLAS matmul alone (the floor)", floor, unfused)
    _row("cuBLAS matmul + torch.topk (unfused)", unfused, unfused)
    rv = triton_topk.encode_topk_reference(xc, W, b, K)[0].float().sort(-1).values
    saved = (triton_topk.BLOCKS, triton_topk.WARPS, triton_topk.STAGES)
    try:
        for bb, bf, bd, w, st in variants:
            triton_topk.BLOCKS, triton_topk.WARPS, triton_topk.STAGES = (bb, bf, bd), w, st
            full = triton.next_power_of_2(K)
            picks = {full if kt == 0 else triton_topk.pruned_kt(B, F, K, bf) if kt < 0
                     else min(kt, full) for kt in kts}  # fmt: skip
            for kt_eff in sorted(picks, reverse=True):
                pruned = kt_eff < full
                name = f"{bb}x{bf}x{bd} warps={w} stages={st} KT={kt_eff}"
                if pruned:

                    def run(kt_eff=kt_eff):
                        return triton_topk.encode_topk_pruned(xc, W, b, K, kt=kt_eff)[:2]
                else:

                    def run():
                        return triton_topk.encode_topk(xc, W, b, K)

                if pruned and triton.cdiv(F, bf) * kt_eff < K:
                    _row(name, None, None, f"skipped: {triton.cdiv(F, bf)} tiles x KT < K")
                    continue
                try:
                    if kt_eff > bf:
                        raise ValueError(f"KT={kt_eff} > BLOCK_F={bf}")
                    vals, _ = run()
                    same = float((vals.float().sort(-1).values == rv).all(-1).float().mean())
                    if same < 0.99:
                        _row(name, None, None, f"WRONG: rows identical {same:.4f}")
                        continue
                    ms = timer(run)
                    cand = ""
                    if dev == "cuda":  # the candidates kernel alone (no final top-k)
                        c_ms = timer(lambda kt_eff=kt_eff: triton_topk.tile_candidates(
                            xc, W, b, K, kt=kt_eff))  # fmt: skip
                        cand = f"candidates kernel {c_ms:.3f} ms"
                except Exception as e:
                    _row(name, None, None, f"FAILED {type(e).__name__}: {str(e)[:150]}")
                    continue
                _row(name + (" (pruned)" if pruned else ""), ms, unfused, cand)
    finally:
        triton_topk.BLOCKS, triton_topk.WARPS, triton_topk.STAGES = saved


def bench_gather(D, F, K, B, dev, timer) -> None:
    from saelens_lite.kernels import triton_sparse

    g = torch.Generator(device=dev).manual_seed(0)
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    idx_BK = _pattern(B, F, K, dev, False, g)
    vals_BK = torch.randn(B, K, generator=g, device=dev)
    table = torch.randn(F, D, generator=g, device=dev).to(dt)
    left = torch.randn(B, D, generator=g, device=dev).to(dt)
    rows_N = torch.arange(B, device=dev).repeat_interleave(K)
    print("\ngather kernels (default settings), ms")
    dec = triton_sparse.decode_topk(idx_BK, vals_BK, table)
    ref = (vals_BK[..., None] * table[idx_BK].float()).sum(1)
    err = float((dec.float() - ref).norm() / ref.norm())
    gathered = B * K * D * table.element_size()
    ms = timer(lambda: triton_sparse.decode_topk(idx_BK, vals_BK, table))
    _row("decode_topk (decoder gather-sum)", ms, None,
         f"{gathered / ms / 1e6:7.0f} GB/s of row gathers, rel error {err:.1e}")  # fmt: skip
    cols_N = idx_BK.reshape(-1)
    ms = timer(lambda: triton_sparse.sampled_dot(rows_N, cols_N, left, table))
    _row("sampled_dot (pre-activation gradient)", ms, None,
         f"{gathered / ms / 1e6:7.0f} GB/s of table-row gathers")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"],
                    default="cuda" if torch.cuda.is_available() else "cpu")  # fmt: skip
    ap.add_argument("--shape", nargs=4, type=int, action="append", metavar=("D", "F", "K", "B"),
                    help="repeatable; default 768 24576 32 16384")  # fmt: skip
    ap.add_argument("--only", nargs="+", choices=["topk", "segment", "gather"],
                    default=["topk", "segment", "gather"])  # fmt: skip
    ap.add_argument("--reps", type=int, default=5, help="timing repetitions (CPU: runs)")
    ap.add_argument("--quick", action="store_true",
                    help="the first tile and two segment settings only (a dry run's test)")
    ap.add_argument("--kt", nargs="+", type=int, default=[0, -1, 8, 16],
                    help="candidates per tile to time: 0 = next_pow2(K) (unpruned), -1 = "
                         "pruned_kt's pick, else KT' (pruned below next_pow2(K))")  # fmt: skip
    args = ap.parse_args(argv)
    if args.device == "cpu":  # before triton is imported: the kernels run in the interpreter
        os.environ["TRITON_INTERPRET"] = "1"
    import triton

    timer = _timer(args.device, args.reps)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (Triton interpreter)"
    print(f"device {name}, torch {torch.__version__}, triton {triton.__version__}")
    n = 2 if args.quick else None
    for D, F, K, B in args.shape or [[768, 24576, 32, 16384]]:
        print(f"\nshape D={D} F={F} K={K} B={B}")
        if "topk" in args.only:
            bench_topk(D, F, K, B, args.device, timer, TOPK_VARIANTS[: n and 1], args.kt)
        if "segment" in args.only:
            bench_segment(D, F, K, B, args.device, timer, SEGMENT_VARIANTS[:n])
        if "gather" in args.only:
            bench_gather(D, F, K, B, args.device, timer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
