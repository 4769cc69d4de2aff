"""``saelens-lite dashboard``: a static feature-dashboard site from an SAE and a cache."""

from __future__ import annotations

import argparse

from saelens_lite.cli._common import Formatter, model_help
from saelens_lite.util.dataclass_args import add_dataclass_args, dataclass_from_args


def add(sub) -> None:
    from saelens_lite.dashboards.config import DashboardConfig

    p = sub.add_parser("dashboard", help="write a browsable static site of every feature", formatter_class=Formatter,
                       description="Encode the cache with the SAE (one pass), compute each feature's density, "
                                   "histogram, top and quantile-sampled contexts, logit effects and nearest "
                                   "features, and write a static site that works from disk or served "
                                   "(saelens-lite serve SITE_DIR). The index also shows the training curves "
                                   "when the SAE folder or its run folder has training_curves.png.")
    p.add_argument("--sae", required=True, help="SAE folder (cfg.json + sae.safetensors), e.g. RUN/HOOK of a "
                                                "training run")
    p.add_argument("--activations", required=True, help="activation cache folder")
    p.add_argument("--out", required=True, help="site folder to write (an earlier site there is replaced)")
    p.add_argument("--model", default=None, help=model_help() + "; default: the cache's model")
    p.add_argument("--explanations", default=None, metavar="FILE",
                   help="explanations.jsonl of saelens-lite explain (or its folder) for this SAE: the index gets "
                        "an explanation column (searchable) and score columns (sortable), each feature page "
                        "its explanation and scores beside the shuffled baseline")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_dataclass_args(p, DashboardConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saelens_lite.dashboards import DashboardConfig, build_dashboard

    cfg = dataclass_from_args(DashboardConfig, args)
    index = build_dashboard(args.sae, args.activations, args.out, model=args.model, config=cfg,
                            progress=not args.no_progress, explanations=args.explanations)
    print(f"dashboard written: open file://{index.resolve()}\n"
          f"or serve it: saelens-lite serve {args.out}")
    return 0
