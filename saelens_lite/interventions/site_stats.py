"""Feature statistics read back from a dashboard site, for edits in max-activation units.

Shape legend: F features.

``saelens-lite dashboard`` writes ``SITE/data/meta.js`` (``saeMeta({...});``: the hook, d_sae,
the site format) and ``SITE/data/index.js`` (``saeIndex({...});``: per feature the density, max
and mean activation, rounded to 4 significant digits). :func:`load_site_stats` returns the
hook and ``max_F``, which ``add_direction``'s ``alpha`` is measured in when given as ``stats``
(:mod:`saelens_lite.interventions.edits`). Reading only these two files keeps this package free
of any import of ``saelens_lite.dashboards`` (which serves the interventions).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

SITE_FORMATS = (1,)
"""Site formats this reader understands (``dashboards.site.SITE_FORMAT``)."""


class SiteStats(NamedTuple):
    hook: str
    """The hook the site's SAE reads."""
    max_F: np.ndarray
    """float64 (F,): each feature's largest activation seen (0: dead), 4 significant digits."""
    site: Path


def _read_call(path: Path, fn: str) -> dict:
    """The JSON argument of ``fn({...});`` in a site data file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {path.parent.parent} a site written by "
                                "saelens-lite dashboard?")
    text = path.read_text(encoding="utf-8").strip()
    if not (text.startswith(fn + "(") and text.endswith(");")):
        raise ValueError(f"{path} is not a dashboard data file (expected {fn}(...);)")
    return json.loads(text[len(fn) + 1:-2])


def load_site_stats(site: str | os.PathLike) -> SiteStats:
    """The hook and per-feature max activations of a dashboard site (module docstring)."""
    site = Path(site)
    meta = _read_call(site / "data" / "meta.js", "saeMeta")
    if meta.get("format") not in SITE_FORMATS:
        raise ValueError(f"{site} has site format {meta.get('format')!r}; this version reads "
                         f"{list(SITE_FORMATS)}: rebuild it with saelens-lite dashboard")
    index = _read_call(site / "data" / "index.js", "saeIndex")
    max_F = np.asarray(index["max"], dtype=np.float64)
    if max_F.shape != (meta["n_features"],):
        raise ValueError(f"{site}: index.js has {max_F.size} max activations, meta.js says "
                         f"{meta['n_features']} features")
    return SiteStats(meta["hook"], max_F, site)


__all__ = ["load_site_stats", "SiteStats", "SITE_FORMATS"]
