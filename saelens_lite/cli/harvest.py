"""``saelens-lite harvest``: activations into a cache."""

from __future__ import annotations

import argparse

from saelens_lite.cli._common import Formatter
from saelens_lite.util.dataclass_args import add_dataclass_args, dataclass_from_args


def add(sub) -> None:
    from saelens_lite.cache.harvest import EXCLUDE_CHOICES, HARVEST_DTYPES, HarvestConfig

    p = sub.add_parser("harvest", help="harvest hook activations into an on-disk cache", formatter_class=Formatter,
                       description="Run the model over a corpus and write the activations of every hook (one "
                                   "forward pass, stopped after the deepest hook) into a resumable cache folder. "
                                   "Re-running the same command resumes an interrupted harvest.")
    p.add_argument("--out", required=True, help="cache folder to write (resumed when it holds a partial run)")
    p.add_argument("--overwrite", action="store_true", help="replace a cache written with other settings")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_dataclass_args(p, HarvestConfig, choices={"dtype": list(HARVEST_DTYPES), "exclude": EXCLUDE_CHOICES,
                                                 "model_dtype": ["auto", *HARVEST_DTYPES]})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saelens_lite.cache.harvest import HarvestConfig, harvest

    cfg = dataclass_from_args(HarvestConfig, args)
    cache = harvest(cfg, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    print(cache.summary())
    return 0
