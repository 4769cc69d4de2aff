"""The files of an explanation run (``saelens-lite explain``), read by ``explain`` and by the
dashboards: ``run.json`` (the run's settings) and ``explanations.jsonl`` (one record per feature).

Promoted out of ``saelens_lite.explain.store`` so that the dashboards can read explanations
without importing ``explain``, which imports the dashboards.
"""

from __future__ import annotations

import json
import os

RECORDS = "explanations.jsonl"
SETTINGS = "run.json"


def read_records(path: str | os.PathLike) -> list[dict]:
    """Complete records of an explanations file (a torn last line is skipped)."""
    out = []
    with open(path, "rb") as fh:
        for line in fh:
            if line.endswith(b"\n"):
                out.append(json.loads(line))
    return out


__all__ = ["RECORDS", "SETTINGS", "read_records"]
