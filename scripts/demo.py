"""End-to-end demo on the offline default: harvest SmolLM2-135M-Instruct activations from the
built-in corpus into a cache and print a summary. Re-running resumes / reuses the cache.

Usage: python scripts/demo.py [--out runs/demo] [--tokens 60000]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from saelens_lite.harvest import HarvestConfig, harvest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hooks", nargs="+", default=["blocks.9.hook_resid_post", "blocks.14.hook_resid_post"])
    ap.add_argument("--tokens", type=int, default=60_000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")

    out = Path(args.out)
    t = time.perf_counter()
    cfg = HarvestConfig(model=args.model, hooks=args.hooks, dataset="builtin:pydocs", tokens=args.tokens,
                        context_size=128, batch_size=16)
    cache = harvest(cfg, out / "activations")
    dt = time.perf_counter() - t
    print(f"\n== harvest ({dt:.1f} s) ==")
    print(cache.summary())
    for hook in cache.hook_names:
        x = np.asarray(cache.activations(hook)[: min(cache.n_tokens, 20_000)], dtype=np.float32)
        norms = np.linalg.norm(x, axis=1)
        print(f"{hook}: mean ||x|| = {norms.mean():.2f} (min {norms.min():.2f}, max {norms.max():.2f}), "
              f"mean |x_d| = {np.abs(x).mean():.4f}")
    print(f"\ncache: {out / 'activations'}  (inspect with: saelens-lite info {out / 'activations'})")


if __name__ == "__main__":
    main()
