"""Explanations (``saelens-lite explain``) shown in a dashboard site.

``load_explanations`` reads the run's JSONL (or takes a dict feature -> record) and checks that
it was written for this SAE; ``check_densities`` compares the records' densities with the
dashboard's own when both come from the same cache (the same SAE gives the same numbers, so
this also catches an SAE retrained into the same folder); ``index_columns``, ``meta_entry`` and
``shard_entry`` are the parts of the site's data that carry them (the record: docs/explanations.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from saelens_lite.explain.store import RECORDS, SETTINGS, read_records

#: A record's density is rounded to 8 decimals; the same SAE and cache agree to far better.
DENSITY_TOL = 1e-6


class Explanations:
    """The records by feature, the file they came from and the run's settings (``{}`` for a dict)."""

    def __init__(self, records: dict[int, dict], source: str, settings: dict):
        self.records, self.source, self.settings = records, source, settings


def _read(path: Path) -> tuple[list[dict], dict]:
    if path.is_dir():
        path = path / RECORDS
    if not path.is_file():
        raise FileNotFoundError(f"explanations={str(path)!r}: no such file (expected the {RECORDS} "
                                "that saelens-lite explain writes)")
    settings_path = path.with_name(SETTINGS)
    settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    return read_records(path), settings


def load_explanations(source, d_sae: int, sae_path: str | os.PathLike | None = None) -> Explanations:
    """``source``: a path to ``explanations.jsonl`` (or its folder) or a dict feature -> record.
    Raises ValueError when a feature is outside ``[0, d_sae)`` or the run's settings name another
    SAE folder than ``sae_path``."""
    if isinstance(source, dict):
        recs, settings, name = [{**r, "feature": int(f)} for f, r in source.items()], {}, "explanations"
    else:
        recs, settings = _read(Path(source))
        name = str(source)
    out = {}
    for r in recs:
        f = r.get("feature")
        if not isinstance(f, int) or not 0 <= f < d_sae:
            raise ValueError(f"{name}: feature {f!r} is outside this SAE's {d_sae} features (0..{d_sae - 1}); "
                             "these explanations were written for another SAE")
        out[f] = r
    there = settings.get("sae")
    if there and sae_path is not None and Path(there).resolve() != Path(sae_path).resolve():
        raise ValueError(f"{name} was written for the SAE {there!r}, not {str(Path(sae_path).resolve())!r}; "
                         "run saelens-lite explain on this SAE")
    return Explanations(out, name, settings)


def check_densities(expl: Explanations, density_F: np.ndarray, cache_path: str | os.PathLike) -> None:
    """When the explanations come from the same cache as the dashboard, each record's density must
    be the dashboard's: a difference means another SAE (or one retrained in the same folder)."""
    if expl.settings.get("cache") != str(Path(cache_path).resolve()):
        return
    for f, r in expl.records.items():
        d = r.get("density")
        if d is not None and abs(d - float(density_F[f])) > DENSITY_TOL:
            raise ValueError(f"{expl.source}: feature {f} has density {d} there but {float(density_F[f]):.8f} "
                             "with this SAE on the same cache; these explanations were written for another SAE")


def index_columns(expl: Explanations, n_features: int) -> dict:
    """The index's columns: ``expl`` (text or None per feature) and ``scores`` {scorer: AUROC or
    None per feature}, the AUROC being the one metric every scorer reports."""
    text = [None] * n_features
    scorers = sorted({s for r in expl.records.values() for s in r.get("scores", {})})
    scores = {s: [None] * n_features for s in scorers}
    for f, r in expl.records.items():
        text[f] = r.get("explanation")
        for s, entry in r.get("scores", {}).items():
            scores[s][f] = entry.get("auroc")
    return {"expl": text, "scores": scores}


def meta_entry(expl: Explanations) -> dict:
    """The site's summary: the file's name, how many features, the explainers and the scorers."""
    recs = expl.records.values()
    return {"source": Path(expl.source).name, "n": len(expl.records),
            "explainers": sorted({str(r.get("explainer")) for r in recs}),
            "scorers": sorted({s for r in recs for s in r.get("scores", {})})}


def shard_entry(record: dict) -> dict:
    """What a feature page shows: the explanation, its explainer, every score beside the shuffled
    one, and the shuffled explanation itself (the examples used stay in the JSONL)."""
    return {"text": record.get("explanation"), "explainer": record.get("explainer"),
            "scores": record.get("scores", {}), "shuffled": record.get("shuffled")}


__all__ = ["Explanations", "load_explanations", "check_densities", "index_columns", "meta_entry",
           "shard_entry"]
