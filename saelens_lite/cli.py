"""Command line: ``saelens-lite SUBCOMMAND`` (also ``python -m saelens_lite``).

Argument parsing only: every subcommand calls the public Python API. Options of the config
dataclasses are generated from their fields, so ``--help`` shows each field's docstring and
default.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from saelens_lite._dataclass_args import add_dataclass_args, dataclass_from_args

log = logging.getLogger("saelens_lite")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _model_help() -> str:
    from saelens_lite.models import ALIASES

    names = ", ".join(ALIASES)
    return f"model alias ({names}), Hugging Face id, local folder or .gguf file"


# --- hooks -----------------------------------------------------------------------------------
def _add_hooks(sub) -> None:
    p = sub.add_parser("hooks", help="list a model's hook points and their widths", formatter_class=_Formatter,
                       description="List the uniform hook point names of a model (blocks.{i}.hook_*) with "
                                   "their widths. --all adds every raw module path.")
    p.add_argument("--model", default="smollm2-135m", help=_model_help())
    p.add_argument("--all", action="store_true", help="also list raw module paths of model.named_modules()")
    p.set_defaults(func=_run_hooks)


def _run_hooks(args: argparse.Namespace) -> int:
    from saelens_lite.hooks import hook_widths, list_hook_points
    from saelens_lite.models import load_model

    lm = load_model(args.model)
    points = list_hook_points(lm.model)
    widths = hook_widths(lm.model, points)
    print(f"# {args.model} ({lm.family}): {len(points)} hook points")
    for h in points:
        print(f"{h.name:40s} {widths[h.name]:6d}  {h.kind:4s} {h.module_path}")
    if args.all:
        print("# raw module paths (output of the module)")
        for name, _ in lm.model.named_modules():
            if name:
                print(name)
    return 0


# --- harvest ---------------------------------------------------------------------------------
def _add_harvest(sub) -> None:
    from saelens_lite.harvest import DTYPES, EXCLUDE_CHOICES, HarvestConfig

    p = sub.add_parser("harvest", help="harvest hook activations into an on-disk cache", formatter_class=_Formatter,
                       description="Run the model over a corpus and write the activations of every hook (one "
                                   "forward pass, stopped after the deepest hook) into a resumable cache folder. "
                                   "Re-running the same command resumes an interrupted harvest.")
    p.add_argument("--out", required=True, help="cache folder to write (resumed when it holds a partial run)")
    p.add_argument("--overwrite", action="store_true", help="replace a cache written with other settings")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_dataclass_args(p, HarvestConfig, choices={"dtype": list(DTYPES), "exclude": EXCLUDE_CHOICES,
                                                 "model_dtype": ["auto", *DTYPES]})
    p.set_defaults(func=_run_harvest)


def _run_harvest(args: argparse.Namespace) -> int:
    from saelens_lite.harvest import HarvestConfig, harvest

    cfg = dataclass_from_args(HarvestConfig, args)
    cache = harvest(cfg, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    print(cache.summary())
    return 0


# --- info ------------------------------------------------------------------------------------
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="summarise an activation cache", formatter_class=_Formatter)
    p.add_argument("path", help="cache folder")
    p.add_argument("--verify", action="store_true", help="check every shard's checksum")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from saelens_lite.cache import ActivationCache

    cache = ActivationCache(args.path)
    print(cache.summary())
    if args.verify:
        cache.verify()
        print("checksums: ok")
    return 0


SUBCOMMANDS: list[Callable] = [_add_hooks, _add_harvest, _add_info]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saelens-lite", formatter_class=_Formatter,
                                     description="Harvest activations, train sparse autoencoders, evaluate "
                                                 "and browse their features.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError, ImportError) as e:
        if args.verbose or os.environ.get("SAELENS_LITE_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"saelens-lite {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
