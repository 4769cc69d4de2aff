"""``saelens-lite convert``: move SAE folders between our format, SAELens and sparsify."""

from __future__ import annotations

import argparse

from saelens_lite.cli._common import Formatter


def add(sub) -> None:
    from saelens_lite.saes.interop import FORMATS

    p = sub.add_parser(
        "convert", formatter_class=Formatter,
        help="convert an SAE folder between the native, SAELens and sparsify formats",
        description="Read SRC (format detected from its files: native cfg.json + sae.safetensors, "
                    "SAELens cfg.json + sae_weights.safetensors, or a sparsify hook folder / run "
                    "folder) and write DST in the format given by --to. DST is written "
                    "atomically; for sparsify it is one hook folder (name it after the hook, "
                    "e.g. run/layers.9, for SparseCoder.load_many).")
    p.add_argument("--to", required=True, choices=FORMATS, help="output format")
    p.add_argument("--hook", default=None,
                   help="hook sub-folder of a sparsify run folder holding several")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("src", help="SAE folder to read")
    p.add_argument("dst", help="folder to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saelens_lite.saes.interop import convert, resolve

    fmt, folder = resolve(args.src, args.hook)
    try:
        out = convert(folder, args.dst, to=args.to, overwrite=args.overwrite)
    except FileExistsError as e:  # main() reports ValueError & co; this one is an OSError
        raise ValueError(str(e)) from None
    print(f"{folder} ({fmt}) -> {out} ({args.to})")
    return 0
