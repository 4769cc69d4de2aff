"""Which features to explain: ``--features`` as a list, a range or the N densest."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

FEATURES_HELP = ("'all' (every alive feature), a list '3,17,42', a range 'A-B' (inclusive) or "
                 "'A:B' (B excluded), or 'top:N' (the N densest alive features)")

_RANGE = re.compile(r"^(\d+)\s*([-:])\s*(\d+)$")


def parse_features(spec: str | list[int] | None) -> Callable[[np.ndarray], list[int]]:
    """Check the syntax of ``spec`` now (before any heavy work); the returned function maps the
    per-feature firing counts ``count_F`` to the features to explain, in order."""
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "all")):
        return lambda count_F: np.flatnonzero(count_F > 0).tolist()
    if not isinstance(spec, str):
        wanted = [int(f) for f in spec]
        return lambda count_F: _alive(wanted, count_F)
    s = spec.strip()
    if s.startswith("top:"):
        n = s[4:]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--features {spec!r}: top:N needs a positive integer N")
        # Densest first; a stable sort keeps ties in index order.
        return lambda count_F: [f for f in np.argsort(-count_F, kind="stable")[:int(n)].tolist()
                                if count_F[f] > 0]
    m = _RANGE.match(s)
    if m:
        a, b = int(m[1]), int(m[3]) + (m[2] == "-")
        if b <= a:
            raise ValueError(f"--features {spec!r}: an empty range")
        return lambda count_F: _alive(range(a, b), count_F)
    try:
        wanted = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--features {spec!r} is not valid; use {FEATURES_HELP}") from None
    return lambda count_F: _alive(wanted, count_F)


def _alive(wanted, count_F: np.ndarray) -> list[int]:
    F = len(count_F)
    bad = [f for f in wanted if not 0 <= f < F]
    if bad:
        raise ValueError(f"--features names {bad[:5]}, outside the SAE's {F} features [0, {F})")
    dead = [f for f in wanted if count_F[f] == 0]
    if dead:
        log.warning("skipping %d feature(s) that never fire in the cache: %s", len(dead), dead[:10])
    return list(dict.fromkeys(f for f in wanted if count_F[f] > 0))


__all__ = ["parse_features", "FEATURES_HELP"]
