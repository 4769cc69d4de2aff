"""Dashboard build time against its floor, one SAE encoding pass over the same tokens.

For an SAE of width expansion * D on SmolLM2's blocks.14 residual stream over N cached tokens
(the cache is harvested first when absent; the SAE is random-init, or briefly trained with
--train-tokens), prints:
  1. the floor: ``encode_sparse`` over every cache row, in order, reading from the cache,
  2. ``build_dashboard`` end to end (both statistics passes, windows, logit effects through the
     unembedding, nearest features, writing the site), with its stages,
and checks the target: build <= 2 x floor + 30 s.

Usage: python scripts/bench_dashboard.py [--cache runs/bench_dashboard/cache] [--tokens 200000]
       [--expansion 8] [--k 32] [--out runs/bench_dashboard/site] [--train-tokens 0]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from saelens_lite.cache import ActivationCache
from saelens_lite.cache.harvest import HarvestConfig, harvest
from saelens_lite.dashboards import build_dashboard
from saelens_lite.lm.load import load_model
from saelens_lite.saes import SAE, SAEConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="runs/bench_dashboard/cache")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hook", default="blocks.14.hook_resid_post")
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--train-tokens", type=int, default=0, help="brief training on this many tokens (0: random init)")
    ap.add_argument("--out", default="runs/bench_dashboard/site")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    torch.manual_seed(0)
    lm = load_model(args.model)
    if not (Path(args.cache) / "manifest.json").is_file():
        harvest(HarvestConfig(model=args.model, hooks=[args.hook], tokens=args.tokens), args.cache, model=lm)
    cache = ActivationCache(args.cache)
    D = cache.d(args.hook)
    if args.train_tokens:
        from saelens_lite.training import TrainConfig, train

        sae = train(TrainConfig(sae=SAEConfig.build(architecture="topk", k=args.k), hooks=[args.hook],
                                expansion=args.expansion,
                                tokens=args.train_tokens, warmup_steps=10, progress=False,
                                out_dir=str(Path(args.out).parent / "sae")), cache)
    else:
        sae = SAE.from_config(SAEConfig.build(architecture="topk", d_in=D, d_sae=args.expansion * D, k=args.k,
                                        hook_name=args.hook, model_name=args.model))
        sae.init_from_data_(torch.from_numpy(np.asarray(cache.activations(args.hook)[:8192], np.float32)))
    sae.eval()
    print(f"cache: {cache.n_tokens:,} tokens, D={D}; SAE topk F={sae.cfg.d_sae} k={args.k}; "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")

    t = time.perf_counter()
    with torch.no_grad():
        for x in cache.iter_batches(args.hook, args.batch_size, shuffle=False, drop_last=False):
            sae.encode_sparse(x)
    floor = time.perf_counter() - t
    print(f"floor (one encode_sparse pass over the cache): {floor:.1f} s")

    stages: dict = {}
    t = time.perf_counter()
    index = build_dashboard(sae, cache, args.out, model=lm, batch_size=args.batch_size, progress=False,
                            timings=stages)
    total = time.perf_counter() - t
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
    target = 2 * floor + 30
    print(f"build_dashboard: {total:.1f} s  ({', '.join(f'{k} {v:.1f}' for k, v in stages.items())})")
    print(f"site: {size / 2**20:.1f} MiB, {len(list((Path(args.out) / 'data' / 'f').iterdir()))} shards -> {index}")
    print(f"ratio build/floor = {total / floor:.2f}; target build <= 2 x floor + 30 s = {target:.1f} s: "
          f"{'PASS' if total <= target else 'FAIL'}")


if __name__ == "__main__":
    main()
