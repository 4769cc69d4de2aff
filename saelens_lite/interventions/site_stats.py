"""Feature statistics read back from a dashboard site, for edits in max-activation units.

Shape legend: F features.

``saelens-lite dashboard`` saves the statistics it renders in ``SITE/features/``
(:mod:`saelens_lite.features.store`). :func:`load_site_stats` reads the hook and ``max_F`` from
there (or from any features folder), which ``add_direction``'s ``alpha`` is measured in when
given as ``stats`` (:mod:`saelens_lite.interventions.edits`). A site built before the statistics
were saved with it has none: FileNotFoundError, naming the command that rebuilds it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from saelens_lite.features.store import load_array, read_manifest


class SiteStats(NamedTuple):
    hook: str
    """The hook the site's SAE reads."""
    max_F: np.ndarray
    """float64 (F,): each feature's largest activation seen (0: dead)."""
    site: Path


def load_site_stats(site: str | os.PathLike) -> SiteStats:
    """The hook and per-feature max activations of a dashboard site (or a features folder)."""
    folder, manifest = read_manifest(site)
    max_F = np.asarray(load_array(folder, manifest, "max_F"), dtype=np.float64)
    return SiteStats(manifest["hook"], max_F, Path(site))


__all__ = ["load_site_stats", "SiteStats"]
