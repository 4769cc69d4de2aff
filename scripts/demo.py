"""End-to-end demo on the offline default, the README's `make demo`:

1. harvest SmolLM2-135M-Instruct activations (two hooks, one forward pass each batch) from the
   built-in corpus into a resumable cache,
2. train a TopK SAE (8x expansion, k=32) on one hook,
3. evaluate it on held-out contexts (the corpus after the cached ones, never trained on): FVU,
   L0, dead latents, CE loss recovered against zero and mean ablation with the SAE spliced
   into the model; the in-sample FVU over the cache (the training rows) is printed beside it,
4. write the feature dashboards and print how to open them.

Every stage resumes or reuses its output when re-run (delete --out to start over).
Usage: python scripts/demo.py [--out runs/demo] [--tokens 100000] [--train-tokens 1000000]
       (tests run it small: --model tiny-llama --hooks blocks.1.hook_resid_post ...)
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from saelens_lite.cache.harvest import HarvestConfig, harvest
from saelens_lite.dashboards import build_dashboard
from saelens_lite.evals import EvalConfig, evaluate, format_summary
from saelens_lite.evals.report import headline
from saelens_lite.lm.load import load_model
from saelens_lite.saes import SAE, TopKConfig
from saelens_lite.training import TrainConfig, train


def _stage(title: str, t0: float) -> float:
    now = time.perf_counter()
    print(f"\n== {title} ({now - t0:.1f} s) ==", flush=True)
    return now


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hooks", nargs="+", default=["blocks.9.hook_resid_post", "blocks.14.hook_resid_post"])
    ap.add_argument("--train-hook", default="blocks.9.hook_resid_post")
    ap.add_argument("--tokens", type=int, default=100_000, help="tokens to harvest")
    ap.add_argument("--train-tokens", type=int, default=1_000_000, help="SAE training tokens (passes over the cache)")
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4096, help="SAE training batch")
    ap.add_argument("--heldout-tokens", type=int, default=16_384, help="held-out tokens for the FVU")
    ap.add_argument("--context-size", type=int, default=128)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    out = Path(args.out)
    lm = load_model(args.model)

    t = time.perf_counter()
    cache = harvest(HarvestConfig(model=args.model, hooks=args.hooks, dataset="builtin:pydocs", tokens=args.tokens,
                                  context_size=args.context_size, batch_size=16, device="cpu"), out / "activations",
                    model=lm)
    t = _stage("1. harvest", t)
    print(cache.summary())

    run = out / "sae"
    sae_dir = run / args.train_hook
    if (sae_dir / "cfg.json").exists():
        sae = SAE.load(sae_dir)
        print(f"reusing the trained SAE in {sae_dir}")
    else:
        # the default lr of a 244-step run is 4x the long-run rule (TrainConfig.lr; README, "Training")
        cfg = TrainConfig(sae=TopKConfig(k=args.k), hooks=[args.train_hook], expansion=args.expansion,
                          tokens=args.train_tokens, batch_size=args.batch_size, warmup_steps=20, out_dir=str(run),
                          checkpoint_every=500_000, resume=(run / "checkpoints").exists(), device="cpu", log_every=20)
        sae = train(cfg, cache)
    t = _stage(f"2. train TopK SAE on {args.train_hook}", t)
    print(f"{type(sae).__name__}: d_in={sae.cfg.d_in} d_sae={sae.cfg.d_sae} k={sae.cfg.k} -> {sae_dir}")

    # the CLI's defaults (16 CE contexts, 16,384 held-out tokens): `saelens-lite eval` gives the same numbers
    metrics = evaluate(sae, cache, EvalConfig(hook=args.train_hook,
                                              heldout_tokens=args.heldout_tokens,
                                              out_dir=out / "eval"),
                        model=lm)
    t = _stage("3. evaluate (held out; the in-sample column is the training rows)", t)
    print(format_summary(metrics))
    print(headline(metrics))

    index = build_dashboard(sae, cache, out / "dashboard", model=lm)
    _stage("4. feature dashboards", t)
    print(f"open file://{index.resolve()}\n  or: .venv/bin/saelens-lite serve {out / 'dashboard'}  "
          f"(then http://127.0.0.1:8000)")


if __name__ == "__main__":
    main()
