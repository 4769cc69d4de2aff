"""``saelens-lite hooks``: list a model's hook points."""

from __future__ import annotations

import argparse

from saelens_lite.cli._common import Formatter, model_help


def add(sub) -> None:
    p = sub.add_parser("hooks", help="list a model's hook points and their widths", formatter_class=Formatter,
                       description="List the uniform hook point names of a model (blocks.{i}.hook_*) with "
                                   "their widths. --all adds every raw module path.")
    p.add_argument("--model", default="smollm2-135m", help=model_help())
    p.add_argument("--all", action="store_true", help="also list raw module paths of model.named_modules()")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saelens_lite.lm.hooks import hook_widths, list_hook_points
    from saelens_lite.lm.load import load_model

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
