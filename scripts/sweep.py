"""Sparsity sweep: train SAEs over a grid of k (architectures that use k) or of the sparsity
coefficient (L1 / L0 for the others), evaluate each, and plot the L0-vs-FVU and
L0-vs-CE-loss-recovered frontiers, one line per architecture.

Default: a small run on SmolLM2-135M (blocks.9.hook_resid_post, 30k tokens harvested once into
OUT/activations; 16 SAEs of 200k tokens each, ~10 min on 2 CPU cores). Use --cache to sweep an
existing cache (e.g. `make demo`'s runs/demo/activations). `--model tiny-llama` is a quick
smoke run, but a random-init model's CE barely moves under ablation, so its CE-recovered
panel is noise.

Usage: python scripts/sweep.py [--out runs/sweep] [--cache DIR] [--model M --hook H]
                              [--arch topk relu] [--k 4 8 16 32] [--coeff 0.3 1 3 10]
                              [--train-tokens 200000]
Writes OUT/results.jsonl, OUT/frontier.png and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path


def main() -> None:
    from saelens_lite.saes import REGISTRY

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/sweep")
    ap.add_argument("--cache", default=None, help="existing activation cache (default: harvest one)")
    ap.add_argument("--model", default="smollm2-135m", help="model to harvest from / splice into")
    ap.add_argument("--hook", default="blocks.9.hook_resid_post")
    ap.add_argument("--harvest-tokens", type=int, default=30_000)
    ap.add_argument("--arch", nargs="+", default=sorted(REGISTRY), choices=sorted(REGISTRY))
    ap.add_argument("--k", nargs="+", type=int, default=[4, 8, 16, 32], help="grid for architectures with k")
    ap.add_argument("--coeff", nargs="+", type=float, default=[0.3, 1.0, 3.0, 10.0],
                    help="sparsity-coefficient grid for the others (L1 for relu, L0 for jumprelu)")
    ap.add_argument("--expansion", type=int, default=4)
    ap.add_argument("--train-tokens", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--eval-tokens", type=int, default=20_000)
    ap.add_argument("--ce-contexts", type=int, default=8)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from saelens_lite.cache import ActivationCache
    from saelens_lite.cache.harvest import HarvestConfig, harvest
    from saelens_lite.evals import EvalConfig, evaluate
    from saelens_lite.lm.load import load_model
    from saelens_lite.training import TrainConfig, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.cache:
        cache = ActivationCache(args.cache)
        model_name = cache.meta.get("model", args.model)
    else:
        cache = harvest(HarvestConfig(model=args.model, hooks=[args.hook], tokens=args.harvest_tokens,
                                      context_size=128, device="cpu"), out / "activations")
        model_name = args.model
    hook = args.hook if args.hook in cache.hook_names else cache.hook_names[0]
    lm = load_model(model_name)

    rows = []
    with open(out / "results.jsonl", "w") as log_f:
        for arch in args.arch:
            uses_k = getattr(REGISTRY[arch], "uses_k", False)
            for value in args.k if uses_k else args.coeff:
                t = time.perf_counter()
                run_dir = out / "runs" / f"{arch}_{value:g}"
                knobs = {"k": value} if uses_k else {"sparsity_coeff": value}
                cfg = TrainConfig.from_dict(dict(  # knobs: the flat spelling (training.sae_flags)
                    architecture=arch, hooks=[hook], expansion=args.expansion,
                    tokens=args.train_tokens, batch_size=args.batch_size, warmup_steps=20,
                    checkpoint_every=0, out_dir=str(run_dir), progress=False,
                    dead_window_tokens=args.train_tokens // 4, **knobs))
                sae = train(cfg, cache)
                m = evaluate(sae, cache, EvalConfig(hook=hook, n_tokens=args.eval_tokens,
                                                    ce_contexts=args.ce_contexts, progress=False),
                              model=lm)
                row = {"architecture": arch, "knob": "k" if uses_k else "sparsity_coeff", "value": value,
                       "seconds": time.perf_counter() - t} | m
                rows.append(row)
                log_f.write(json.dumps(row) + "\n")
                log_f.flush()
                print(f"{arch:10s} {row['knob']}={value:<6g} L0={m['l0']:8.2f} FVU={m['fvu']:.4f} "
                      f"CE recovered={m['ce_loss_recovered']:.4f} dead={m['dead_fraction']:.1%} "
                      f"({row['seconds']:.0f} s)", flush=True)
    plot_frontiers(rows, out / "frontier.png", title=f"{model_name} {hook}")
    print(f"wrote {out / 'frontier.png'} and {out / 'results.jsonl'}")


def plot_frontiers(rows: list[dict], path: Path, *, title: str = "") -> None:
    """Two panels, L0 (log x) vs FVU and vs CE loss recovered, one line per architecture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arch in sorted({r["architecture"] for r in rows}):
        pts = sorted((r for r in rows if r["architecture"] == arch), key=lambda r: r["l0"])
        l0 = [r["l0"] for r in pts]
        axes[0].plot(l0, [r["fvu"] for r in pts], "o-", label=arch)
        ce = [r["ce_loss_recovered"] if r["ce_loss_recovered"] is not None else float("nan") for r in pts]
        axes[1].plot(l0, ce, "o-", label=arch)
    for ax, ylabel in zip(axes, ("FVU, held-out (lower is better)",
                                       "CE loss recovered vs zero ablation, held-out (higher is better)")):
        ax.set_xscale("log")
        ax.set_xlabel("L0 (active latents per token)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
