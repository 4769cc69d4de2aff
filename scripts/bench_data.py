"""How fast the training data path delivers shuffled batches from an activation cache.

A GPU training step takes a few milliseconds (2.25M tokens/s at D=768 on an H100), so the
host side must deliver a shuffled (B, D) float32 batch about as fast or the GPU waits. This
writes a synthetic cache (random activations, the harvest's shard layout) to a temporary
folder, then times in this process:

  floor      one sequential copy of the batch's bytes out of the memory-mapped shards (the
             least any reader must do)
  iter       ActivationCache.iter_batches(..., shuffle=True), float32 batches, a new buffer each
  iter-ring  the same, cycling 6 output buffers
  trainer    what the trainer's CacheSource asks for: the stored dtype (a 16-bit cache is
             upcast on the training device) and 6 cycled buffers

and prints tokens/s and the ratio to the floor (the machine's noise cancels in the ratio).

    python scripts/bench_data.py [--d 768] [--batch 16384] [--tokens 400000] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from saelens_lite.cache import ActivationCache, CacheWriter


def write_cache(root: str, n: int, d: int, dtype: str, shard_tokens: int) -> ActivationCache:
    w = CacheWriter.open(root, meta={"bench": True}, hooks={"h": d}, dtype=dtype,
                         shard_tokens=shard_tokens)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    step = 32768
    for s in range(0, n, step):
        m = min(step, n - s)
        z = np.zeros(m, np.int64)
        w.append({"h": torch.randn(m, d, generator=g)}, z, z, z)
    w.finalize()
    return ActivationCache(root)


def time_batches(it, n_batches: int) -> float:
    next(it)  # the first window's read is timed with the others below only once
    t = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return (time.perf_counter() - t) / n_batches


def floor_seconds(cache: ActivationCache, batch: int, n_batches: int) -> float:
    arr = cache.activations("h")
    buf = np.empty((batch, arr.width), arr.shard(0).dtype)
    t = time.perf_counter()
    done = 0
    for _ in range(n_batches):
        s = arr.shard(done % len(arr.paths) if len(arr.paths) else 0)
        n = min(batch, len(s))
        np.copyto(buf[:n], s[:n])
        done += 1
    return (time.perf_counter() - t) / n_batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--batch", type=int, default=16384)
    ap.add_argument("--tokens", type=int, default=400_000)
    ap.add_argument("--shard-tokens", type=int, default=65536)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--batches", type=int, default=24, help="timed batches per run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cache = write_cache(tmp + "/c", args.tokens, args.d, args.dtype, args.shard_tokens)
        print(f"cache {args.tokens} tokens x D={args.d} {args.dtype}, shards of "
              f"{args.shard_tokens}; batch {args.batch}; torch threads {torch.get_num_threads()}")
        kw = dict(shuffle=True, seed=0, epochs=None, dtype=torch.float32)
        runs = {
            "floor": lambda: floor_seconds(cache, args.batch, args.batches),
            "iter": lambda: time_batches(cache.iter_batches("h", args.batch, **kw), args.batches),
        }
        stored = {**kw, "dtype": None}
        try:
            cache.iter_batches("h", args.batch, reuse=6, **kw)
            runs["iter-ring"] = lambda: time_batches(
                cache.iter_batches("h", args.batch, reuse=6, **kw), args.batches
            )
            runs["trainer"] = lambda: time_batches(
                cache.iter_batches("h", args.batch, reuse=6, **stored), args.batches
            )
        except TypeError:  # an older iter_batches without output-buffer reuse
            pass
        best = {k: min(f() for _ in range(args.rounds)) for k, f in runs.items()}
        for k, s in best.items():
            print(f"  {k:10s} {args.batch / s / 1e6:7.2f}M tok/s {s * 1e3:8.1f} ms/batch "
                  f"{s / best['floor']:6.2f}x floor")  # fmt: skip


if __name__ == "__main__":
    main()
