"""``saelens-lite info``: summarise a cache."""

from __future__ import annotations

import argparse

from saelens_lite.cli._common import Formatter


def add(sub) -> None:
    p = sub.add_parser("info", help="summarise an activation cache", formatter_class=Formatter)
    p.add_argument("path", help="cache folder")
    p.add_argument("--verify", action="store_true", help="check every shard's checksum")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saelens_lite.cache import ActivationCache

    cache = ActivationCache(args.path)
    print(cache.summary())
    if args.verify:
        cache.verify()
        print("checksums: ok")
    return 0
