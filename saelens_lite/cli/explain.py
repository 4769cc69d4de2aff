"""``saelens-lite explain``: explain an SAE's features and score the explanations."""

from __future__ import annotations

import argparse

from saelens_lite.cli._common import Formatter, model_help
from saelens_lite.util.dataclass_args import add_dataclass_args, dataclass_from_args


def add(sub) -> None:
    from saelens_lite.explain.config import ExplainConfig
    from saelens_lite.explain.explainers import choices_text
    from saelens_lite.explain.scorers import SCORERS
    from saelens_lite.explain.select import FEATURES_HELP

    p = sub.add_parser("explain", help="explain features automatically and score the explanations",
                       formatter_class=Formatter,
                       description="Read each feature's top and quantile-sampled contexts from the cache "
                                   "(one SAE pass), write an explanation with the chosen explainer, and score "
                                   "it on held-out contexts (never those the explainer saw) beside a shuffled "
                                   "explanation (another feature's). Appends one JSON line per feature to "
                                   "OUT/explanations.jsonl, a batch at a time; re-run the same command to "
                                   "resume. Prompts and scoring rules: docs/explanations.md.")
    p.add_argument("--sae", required=True, help="SAE folder (cfg.json + sae.safetensors)")
    p.add_argument("--activations", required=True, help="activation cache folder")
    p.add_argument("--site", "--hook", dest="hook", default=None,
                   help="cache hook to read (default: the SAE's hook_name)")
    p.add_argument("--out", required=True, help="output folder (a new one, or an earlier run's to resume)")
    p.add_argument("--features", default="all", help=FEATURES_HELP)
    p.add_argument("--explainer", default="template", help="one of: " + choices_text())
    p.add_argument("--openai-model", default=None, help="model name for --explainer/--judge openai:URL")
    p.add_argument("--scorers", default="embedding",
                   help=f"comma-separated among {', '.join(SCORERS)}, or 'none'")
    p.add_argument("--judge", default=None,
                   help="model of the detection and fuzzing scorers, hf:NAME_OR_PATH or openai:URL "
                        "(default: the explainer's model; hf:smollm2-135m for the template explainer)")
    p.add_argument("--model", default=None, help=model_help() + "; for token strings and logit effects "
                                                               "(default: the cache's model)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request to an openai endpoint")
    p.add_argument("--retries", type=int, default=3, help="retries of a failed request to an openai endpoint")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_dataclass_args(p, ExplainConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saelens_lite.explain import ExplainConfig, explain, read_records, summarize

    cfg = dataclass_from_args(ExplainConfig, args)
    timings: dict = {}
    path = explain(args.sae, args.activations, args.out, explainer=args.explainer, scorers=args.scorers,
                   features=args.features, config=cfg, judge=args.judge, model=args.model,
                   hook=args.hook, openai_model=args.openai_model, timeout=args.timeout,
                   retries=args.retries, progress=not args.no_progress, timings=timings)
    records = read_records(path)
    print(f"{len(records)} features in {path} ({timings['n_features']} new, "
          f"{timings['n_features'] / max(timings['explain_s'], 1e-9) * 60:.1f} features/min)")
    for scorer, m in summarize(records).items():
        print(f"  {scorer}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if not k.startswith("n_"))
              + f" (held-out, mean over {m.get('n_auroc', 0)} features)")
    return 0
