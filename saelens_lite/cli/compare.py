"""``saelens-lite compare``: every autoencoder type under one budget -> table + plots."""

from __future__ import annotations

import argparse

from saelens_lite.cli._common import Formatter, arch_options_help, parse_arch_options


def add(sub) -> None:
    from saelens_lite.compare import CompareConfig
    from saelens_lite.util.dataclass_args import add_dataclass_args

    p = sub.add_parser("compare", help="compare SAEs with dense, denoising, variational and conv autoencoders",
                       formatter_class=Formatter,
                       description="Train every registered autoencoder type (SAEs and baselines) under one "
                                   "latent and token budget on an activation cache (--activations DIR) or an "
                                   "image set (--images digits), and write results.md, results.json and PNG "
                                   "plots (L0-FVU frontier; for images reconstructions, VAE samples, ROC curves) "
                                   "to --out.",
                       epilog=arch_options_help("ARCH.KEY=VALUE"))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--activations", metavar="DIR", help="activation cache folder")
    src.add_argument("--images", choices=["digits", "mnist"],
                     help="image set: digits (scikit-learn, offline) or mnist (torchvision, downloads)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--hook", default=None, help="hook of the cache (default: its first)")
    add_dataclass_args(p, CompareConfig, skip=("options",))
    p.add_argument("--option", action="append", default=[], metavar="ARCH.KEY=VALUE",
                   help="SAEConfig field for one architecture (repeatable), e.g. --option relu.l1_coeff=1")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saelens_lite.compare import CompareConfig, compare, format_table
    from saelens_lite.util.dataclass_args import dataclass_from_args

    cfg = dataclass_from_args(CompareConfig, args, options=parse_arch_options(args.option))
    result = compare(args.out, activations=args.activations, hook=args.hook, images=args.images, config=cfg)
    print(format_table(result["rows"]), end="")
    print(f"wrote results.md, results.json and {', '.join(result['plots'])} to {args.out}")
    return 0
