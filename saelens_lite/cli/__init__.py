"""Command line: ``saelens-lite SUBCOMMAND`` (also ``python -m saelens_lite``).

Argument parsing only: every subcommand calls the public Python API. One module per
subcommand in this package, each with ``add(subparsers)`` that registers its parser and sets
``func``. Options of the config dataclasses are generated from their fields, so ``--help``
shows each field's docstring and default.

Errors of the input (ValueError, KeyError, OSError such as a missing file or a corrupt cache,
ImportError of an optional dependency) end in one line ``saelens-lite CMD: error: ...`` and exit
status 2; ``--verbose`` or ``SAELENS_LITE_DEBUG=1`` re-raises them with the full traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from saelens_lite.cli._common import Formatter

EPILOG = """\
An error in the input (a bad value, a missing or corrupt file) ends in one line
'saelens-lite COMMAND: error: ...' and exit status 2; -v (before COMMAND) or the
environment variable SAELENS_LITE_DEBUG=1 shows the full traceback instead."""

# Order of appearance in --help; each name is a module of this package.
SUBCOMMANDS = ["hooks", "harvest", "train", "finetune", "eval", "bench", "info", "dashboard", "serve", "convert",
               "compare", "steer", "ablate", "attribute", "trace", "explain"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saelens-lite", formatter_class=Formatter,
                                     description="Harvest activations, train sparse autoencoders, evaluate "
                                                 "and browse their features.", epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"saelens_lite.cli.{name}").add(sub)
    return parser


def debug_requested(args: argparse.Namespace) -> bool:
    """Whether errors keep their traceback: --verbose or SAELENS_LITE_DEBUG set (not to 0)."""
    return args.verbose or os.environ.get("SAELENS_LITE_DEBUG", "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (ValueError, KeyError, OSError, ImportError) as e:
        if debug_requested(args):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"saelens-lite {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130

