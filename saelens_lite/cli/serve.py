"""``saelens-lite serve``: serve a dashboard site on loopback."""

from __future__ import annotations

import argparse

from saelens_lite.cli._common import Formatter, model_help


def add(sub) -> None:
    p = sub.add_parser("serve", help="serve a dashboard site locally", formatter_class=Formatter,
                       description="Serve SITE_DIR (written by saelens-lite dashboard) over HTTP. With --model "
                                   "and --sae the index page gets a box where typed text shows the features "
                                   "that fire on each token and an 'explain this output' section (attribution "
                                   "of a next token to features), and each feature page gets a steer panel and "
                                   "an 'ablate this feature' view; the JSON API behind them is described at "
                                   "/docs.")
    p.add_argument("site", metavar="SITE_DIR", help="site folder")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; other than loopback exposes the site "
                                                       "and the model endpoints to the network")
    p.add_argument("--model", default=None, help=model_help() + " (live panels)")
    p.add_argument("--sae", default=None, help="SAE folder (live panels)")
    p.add_argument("--activations", default=None, metavar="CACHE",
                   help="activation cache the SAE was read on: turns on the feature pages' 'Explain this "
                        "feature' button (needs --model and --sae; the first request runs one SAE pass over it)")
    p.add_argument("--explainer", default="template",
                   help="explainer of the button, as for saelens-lite explain: template, hf:NAME_OR_PATH "
                        "or openai:URL (with --openai-model)")
    p.add_argument("--scorers", default="embedding", help="scorers of the button's explanations "
                                                          "(comma-separated: embedding, detection, fuzzing; none)")
    p.add_argument("--openai-model", default=None, help="model name for --explainer openai:URL")
    p.add_argument("--explain-out", default=None, metavar="DIR",
                   help="where the button's explanations are kept (default SITE_DIR/live-explanations; "
                        "a feature explained once is answered from there)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saelens_lite.dashboards.server import serve

    try:
        serve(args.site, host=args.host, port=args.port, model=args.model, sae=args.sae,
              activations=args.activations, explain_out=args.explain_out, explainer=args.explainer,
              scorers=args.scorers, openai_model=args.openai_model)
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from e
    return 0
