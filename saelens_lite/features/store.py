"""Saved feature statistics: one folder of ``.npy`` arrays and a ``features.json`` manifest.

Shapes: as in :mod:`saelens_lite.features.stats` and :mod:`saelens_lite.features.logits`.

Layout of a features folder (a dashboard site keeps one in ``SITE/features/``)::

    features.json            {"format", "hook", "n_tokens", "n_features", "config", "meta",
                              "logits_note", "arrays": {name: {"bytes", "crc32"}}}
    count_F.npy ...          one file per FeatureStats array (max_F.npy, top_rows_FT.npy, ...)
    logits.pos_ids_FL.npy    the LogitEffects arrays, when computed
    neighbours.idx_FN.npy    the Neighbours arrays, when computed

Every array is written atomically before the manifest, and the manifest last, so a folder with
a ``features.json`` is complete. This folder is what the dashboards render and what
``interventions`` reads its max activations from; nothing parses the site's JavaScript.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from saelens_lite.features.logits import LogitEffects, Neighbours
from saelens_lite.features.stats import FeatureStats
from saelens_lite.util.atomic import write_json, write_npy

FORMAT = 1
"""Version of the folder layout; :func:`load_features` refuses any other."""
MANIFEST = "features.json"
SITE_SUBDIR = "features"
"""Where a dashboard site keeps its features folder."""
REBUILD = "rebuild it with saelens-lite dashboard --sae SAE --activations CACHE --out SITE"

_STATS_ARRAYS = tuple(f.name for f in dataclasses.fields(FeatureStats) if f.name not in ("n_tokens", "hook"))


class SavedFeatures(NamedTuple):
    stats: FeatureStats
    logits: LogitEffects | str | None
    """The logit effects, or a note saying why there are none, or None (not computed)."""
    neighbours: Neighbours | None
    meta: dict
    """What the writer added (model, SAE, cache...), plus ``config``: the StatsConfig used."""


def save_features(folder: str | os.PathLike, stats: FeatureStats, *, logits: LogitEffects | str | None = None,
                  neighbours: Neighbours | None = None, config=None, meta: dict | None = None) -> Path:
    """Write ``stats`` (and logit effects / neighbours when given) to ``folder``; returns it.
    ``config``: the StatsConfig (or a subclass) they were computed with, kept for the record."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # incomplete until the new manifest lands
    arrays = {name: getattr(stats, name) for name in _STATS_ARRAYS}
    if isinstance(logits, LogitEffects):
        arrays.update({f"logits.{k}": v for k, v in logits._asdict().items()})
    if neighbours is not None:
        arrays.update({f"neighbours.{k}": v for k, v in neighbours._asdict().items()})
    written = {name: write_npy(folder / f"{name}.npy", a) for name, a in arrays.items()}
    manifest = {"format": FORMAT, "hook": stats.hook, "n_tokens": int(stats.n_tokens),
                "n_features": int(len(stats.count_F)),
                "config": dataclasses.asdict(config) if config is not None else None,
                "meta": meta or {}, "logits_note": logits if isinstance(logits, str) else None,
                "arrays": written}
    write_json(folder / MANIFEST, manifest)
    return folder


def features_dir(path: str | os.PathLike) -> Path:
    """The features folder at ``path``: ``path`` itself when it holds the manifest, else a
    dashboard site's ``path/features``. FileNotFoundError (naming the rebuild) when neither."""
    path = Path(path)
    for folder in (path, path / SITE_SUBDIR):
        if (folder / MANIFEST).is_file():
            return folder
    if (path / "data" / "meta.js").is_file():
        raise FileNotFoundError(f"{path} is a dashboard site built before its feature statistics were saved "
                                f"with it (no {SITE_SUBDIR}/{MANIFEST}); {REBUILD}")
    raise FileNotFoundError(f"{path} holds no saved feature statistics ({MANIFEST}, or {SITE_SUBDIR}/{MANIFEST} "
                            f"of a site written by saelens-lite dashboard)")


def read_manifest(path: str | os.PathLike) -> tuple[Path, dict]:
    """(folder, manifest) of the features folder at ``path`` (:func:`features_dir`); ValueError
    for a format this version does not read."""
    folder = features_dir(path)
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{folder} has features format {manifest.get('format')!r}; this version reads "
                         f"{FORMAT}: {REBUILD}")
    return folder, manifest


def load_array(folder: Path, manifest: dict, name: str, mmap: bool = False) -> np.ndarray:
    """One saved array, checked against the manifest's feature count."""
    if name not in manifest["arrays"]:
        raise KeyError(f"{folder} has no array {name!r} (it has {sorted(manifest['arrays'])})")
    a = np.load(folder / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
    if a.shape[:1] != (manifest["n_features"],):
        raise ValueError(f"{folder}/{name}.npy has shape {a.shape}; the manifest says "
                         f"{manifest['n_features']} features")
    return a


def load_features(path: str | os.PathLike, *, mmap: bool = False) -> SavedFeatures:
    """Everything :func:`save_features` wrote (``mmap``: memory-map the arrays)."""
    folder, manifest = read_manifest(path)
    get = lambda name: load_array(folder, manifest, name, mmap)  # noqa: E731
    stats = FeatureStats(manifest["n_tokens"], *(get(n) for n in _STATS_ARRAYS), hook=manifest["hook"])
    names = manifest["arrays"]
    logits = manifest.get("logits_note")
    if "logits.pos_ids_FL" in names:
        logits = LogitEffects(*(get(f"logits.{k}") for k in LogitEffects._fields))
    neighbours = (Neighbours(*(get(f"neighbours.{k}") for k in Neighbours._fields))
                  if "neighbours.idx_FN" in names else None)
    return SavedFeatures(stats, logits, neighbours, {**manifest["meta"], "config": manifest["config"]})


__all__ = ["save_features", "load_features", "read_manifest", "load_array", "features_dir", "SavedFeatures",
           "FORMAT", "MANIFEST", "SITE_SUBDIR"]
