"""``saelens-lite dashboard``: a static feature-dashboard site from an SAE and a cache, and graph
pages from attribution graphs (``--graphs``)."""

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
                                   "when the SAE folder or its run folder has training_curves.png. With --graphs "
                                   "(alone or with --sae), the site also gets graph pages of attribution graphs "
                                   "(saelens-lite trace) whose feature nodes link to the transcoder dashboards "
                                   "inside the site.")
    p.add_argument("--sae", default=None, help="SAE folder (cfg.json + sae.safetensors), e.g. RUN/HOOK of a "
                                               "training run (with --activations)")
    p.add_argument("--activations", default=None, help="activation cache folder (with --sae)")
    p.add_argument("--out", required=True, help="site folder to write (an earlier site there is replaced, its "
                                                "graph pages kept)")
    p.add_argument("--graphs", nargs="+", default=None, metavar="GRAPH",
                   help="graph JSON files of saelens-lite trace to add to OUT/graphs/ (a graph of the same name "
                        "is replaced, its saved supernodes kept)")
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
    from saelens_lite.dashboards.graphs import (
        add_graphs,
        check_site,
        graphs_dir,
        read_graphs,
        refresh_enclosing,
    )

    if args.sae is None and args.activations is None and not args.graphs:
        raise ValueError("nothing to write: give --sae and --activations (a feature dashboard), --graphs "
                         "(graph pages), or both")
    if (args.sae is None) != (args.activations is None):
        raise ValueError(f"--sae and --activations go together (got only {'--sae' if args.sae else '--activations'})")
    if args.graphs:  # checked before the dashboard's work
        read_graphs(args.graphs)
        check_site(args.out)
    if args.sae is not None:
        cfg = dataclass_from_args(DashboardConfig, args)
        index = build_dashboard(args.sae, args.activations, args.out, model=args.model, config=cfg,
                                progress=not args.no_progress, explanations=args.explanations)
        print(f"dashboard written: open file://{index.resolve()}")
        for site in refresh_enclosing(args.out):
            print(f"linked from the graph pages of {site}")
    if args.graphs:
        slugs = add_graphs(args.out, args.graphs)
        print(f"graph pages written ({', '.join(slugs)}): open file://{(graphs_dir(args.out) / 'index.html').resolve()}")
    print(f"or serve it: saelens-lite serve {args.out}")
    return 0
