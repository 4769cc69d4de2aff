"""CPU cost of the sparse transposed product A^T @ X (the weight gradients of a top-k SAE step,
``kernels.SparsePattern.transposed_matmul``): torch's CSR SpMM (the path before session 22)
against the embedding_bag over the feature-sorted pattern (now), in one process, same inputs.

    python scripts/bench_cpu_spmm.py [--threads 2] [--shape B F D K ...]

Prints ms per call (median of --rounds) for the (F, D) output and the (D, F) one (out_DF: the
encoder's layout), and the ratio old / new. ``--step``: also a Matryoshka SAE's whole training
step (D 768, F 4096, k 25, batch 512 of SynthSAEBench-16k samples; autograd, the default on CPU,
and the fast step, each without and with AuxK over 40 dead latents), with the product patched
back to the CSR SpMM as the baseline, rounds interleaved. Shape legend: B rows (tokens), F latents, D width,
K entries per row.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from saelens_lite.kernels.sparse import SparsePattern


def csr_spmm(p: SparsePattern, vals_N, x_BD, out_DF: bool):
    """The previous CPU path: A^T as a CSR tensor, torch.mm into a (D, F)-strided output."""
    order_N, crow, rows_sorted = p.by_feature()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        At = torch.sparse_csr_tensor(crow, rows_sorted, vals_N[order_N], size=(p.n_cols, p.n_rows),
                                     check_invariants=False)
    if not out_DF:
        return At @ x_BD
    out = x_BD.new_empty(x_BD.shape[1], p.n_cols)
    torch.mm(At, x_BD, out=out.t())
    return out


def timed(f, rounds: int, calls: int) -> float:
    f()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            f()
        times.append((time.perf_counter() - t) / calls * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--step", action="store_true", help="also the Matryoshka training step (below)")
    ap.add_argument("--shape", type=int, nargs=4, action="append", metavar=("B", "F", "D", "K"),
                    help="default: 512 4096 768 50 (Matryoshka, SynthSAEBench) and 512 4096 768 384 (AuxK, D/2)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; ms per call, median of {args.rounds} rounds")
    print("| B, F, D, K | output | CSR SpMM (before) | embedding_bag (now) | before / now |")
    print("|---|---|---|---|---|")
    for B, F, D, K in args.shape or [(512, 4096, 768, 50), (512, 4096, 768, 384)]:
        g = torch.Generator().manual_seed(0)
        idx = torch.rand(B, F, generator=g).topk(K, dim=1).indices
        p = SparsePattern.from_topk(idx, F)
        vals, x = torch.randn(B * K, generator=g), torch.randn(B, D, generator=g)
        for out_DF in (False, True):
            torch.testing.assert_close(p.transposed_matmul(vals, x, out_DF=out_DF), csr_spmm(p, vals, x, out_DF),
                                       rtol=1e-4, atol=1e-4)
            old = timed(lambda p=p, v=vals, x=x, o=out_DF: csr_spmm(p, v, x, o), args.rounds, args.calls)
            new = timed(lambda p=p, v=vals, x=x, o=out_DF: p.transposed_matmul(v, x, out_DF=o), args.rounds,
                        args.calls)
            print(f"| {B}, {F}, {D}, {K} | {'(D, F)' if out_DF else '(F, D)'} | {old:.2f} | {new:.2f} | {old / new:.1f}x |")
    if args.step:
        step_table(args.rounds)
    return 0


def step_table(rounds: int, steps: int = 8) -> None:
    from saelens_lite.evals.synthsae.model import SynthSAEConfig
    from saelens_lite.saes import SAE, SAEConfig
    from saelens_lite.training.fast_step import FastTrainStep
    from saelens_lite.training.step import AutogradStep

    model = SynthSAEConfig().build()
    xs = [model.batch(512, stream=0, seed=0, index=i)[0] for i in range(steps)]
    dead_F = torch.zeros(4096, dtype=torch.bool)
    dead_F[torch.randperm(4096, generator=torch.Generator().manual_seed(0))[:40]] = True
    new_tm = SparsePattern.transposed_matmul

    def old_tm(self, vals_N, dense_BD, *, out_DF=False, out_dtype=None):
        out = csr_spmm(self, vals_N, dense_BD, out_DF)
        return out if out_dtype is None or out_DF else out.to(out_dtype)

    def run(fast: bool, mask) -> float:
        torch.manual_seed(0)
        sae = SAE.from_config(SAEConfig.build(architecture="matryoshka", d_in=768, d_sae=4096, k=25))
        opt = torch.optim.Adam(sae.parameters(), lr=4e-4)
        step = FastTrainStep(sae, opt, cuda_graph=False) if fast else AutogradStep(sae, opt)
        step(xs[0], mask)
        t = time.perf_counter()
        for x in xs:
            step(x, mask)
        return (time.perf_counter() - t) / len(xs) * 1e3

    cases = [("autograd", False, None), ("autograd, AuxK", False, dead_F), ("fast step", True, None),
             ("fast step, AuxK", True, dead_F)]
    times: dict = {}
    for _ in range(rounds):
        for name, fast, mask in cases:
            for which, tm in (("before", old_tm), ("now", new_tm)):
                SparsePattern.transposed_matmul = tm
                try:
                    times.setdefault((name, which), []).append(run(fast, mask))
                finally:
                    SparsePattern.transposed_matmul = new_tm
    print(f"\nMatryoshka step, ms (median of {rounds} rounds of {steps} steps)\n")
    print("| step | CSR SpMM (before) | embedding_bag (now) | before / now |\n|---|---|---|---|")
    for name, _, _ in cases:
        b, n = statistics.median(times[(name, "before")]), statistics.median(times[(name, "now")])
        print(f"| {name} | {b:.1f} | {n:.1f} | {b / n:.2f}x |")


if __name__ == "__main__":
    raise SystemExit(main())
