"""``saelens-lite eval``: evaluate a trained SAE on an activation cache (+ the spliced model)."""

from __future__ import annotations

import argparse

from saelens_lite.cli._common import Formatter, model_help


def add(sub) -> None:
    from saelens_lite.lm.tokens import DEFAULT_EXCLUDE, EXCLUDE_CHOICES

    p = sub.add_parser("eval", help="evaluate an SAE (L0, FVU, dead latents, CE loss recovered, KL)",
                       formatter_class=Formatter,
                       description="Reconstruction and sparsity metrics, held out: on the hook's activations "
                                   "for the contexts after the cache's last one (never cached, so never trained "
                                   "on), beside the same metrics over the cache's rows (in-sample); and the "
                                   "model's loss with the SAE spliced in at its hook on held-out contexts (CE "
                                   "loss recovered against zero and mean ablation, KL; pooled-embedding cosine "
                                   "for encoders). Every number is labelled with where it was measured. Writes "
                                   "OUT/metrics.json, OUT/summary.md and OUT/feature_density.png.")
    p.add_argument("--sae", required=True, help="SAE folder (cfg.json + sae.safetensors)")
    p.add_argument("--activations", required=True, help="activation cache folder or an (N, D) .npy/.safetensors")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--hook", default=None, help="cache hook to read (default: the SAE's hook; another one warns)")
    p.add_argument("--model", default=None, help=model_help() + " (default: the cache's model)")
    p.add_argument("--dataset", default=None, help="corpus for the spliced-model loss (default: the cache's)")
    p.add_argument("--heldout-tokens", type=int, default=16_384,
                   help="held-out tokens for the reconstruction metrics (needs the model; 0: in-sample only)")
    p.add_argument("--n-tokens", type=int, default=200_000, help="cached rows for the in-sample column (0: all)")
    p.add_argument("--no-in-sample", action="store_true", help="skip the in-sample column")
    p.add_argument("--batch-size", type=int, default=1024, help="tokens per SAE batch")
    p.add_argument("--ce-contexts", type=int, default=16, help="contexts for the spliced-model loss")
    p.add_argument("--context-size", type=int, default=None, help="tokens per context (default: the cache's)")
    p.add_argument("--model-batch-size", type=int, default=4, help="contexts per model forward")
    p.add_argument("--exclude", choices=EXCLUDE_CHOICES, default=DEFAULT_EXCLUDE,
                   help="tokens left out of every metric and kept clean in the spliced model "
                        "(special = bos, eos, pad, sep, as SAEBench; the harvest's default too)")
    p.add_argument("--dense-threshold", type=float, default=0.1, help="firing frequency above which a latent is dense")
    p.add_argument("--no-downstream", action="store_true", help="skip the spliced-model metrics")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def eval_config(args: argparse.Namespace):
    """The EvalConfig of the parsed flags (``--no-*`` flags are its booleans negated, 0 tokens
    means all rows)."""
    from saelens_lite.evals import EvalConfig

    return EvalConfig(dataset=args.dataset, hook=args.hook, heldout_tokens=args.heldout_tokens,
                      n_tokens=args.n_tokens or None, in_sample=not args.no_in_sample,
                      batch_size=args.batch_size, downstream=not args.no_downstream,
                      ce_contexts=args.ce_contexts, context_size=args.context_size,
                      model_batch_size=args.model_batch_size, exclude=args.exclude,
                      dense_threshold=args.dense_threshold, device=args.device, out_dir=args.out,
                      progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    from saelens_lite.evals import evaluate, format_summary
    from saelens_lite.evals.report import headline

    metrics = evaluate(args.sae, args.activations, eval_config(args), model=args.model)
    print(format_summary(metrics))
    print(headline(metrics))
    print(f"wrote {args.out}/metrics.json, summary.md, feature_density.png")
    return 0
