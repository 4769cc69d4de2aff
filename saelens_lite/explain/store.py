"""The output folder of an explanation run: ``run.json`` (the settings) and ``explanations.jsonl``
(one record per feature), appended a batch at a time with flush + fsync. The dashboards read
these files through :func:`read_records` and the names below.

A kill -9 can leave at most one torn last line (a batch written but not flushed whole); opening
the file again truncates it to its last complete line, so a rerun redoes that batch and the file
ends exactly as an uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from saelens_lite.util.atomic import fsync_dir, write_json

log = logging.getLogger(__name__)

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


class RecordStore:
    """Opened on a folder: checks its settings against this run's, keeps the records done so
    far and appends new ones."""

    def __init__(self, out: str | os.PathLike, settings: dict):
        self.out = Path(out)
        self.path = self.out / RECORDS
        known = self.out / SETTINGS
        if known.is_file():
            old = json.loads(known.read_text())
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            if diff:
                k = diff[0]
                raise ValueError(f"{self.out} holds explanations made with other settings "
                                 f"({k}: {old.get(k)!r} there, {settings.get(k)!r} now); use another "
                                 "--out, or the same settings to resume")
        elif self.out.exists() and any(self.out.iterdir()):
            raise FileExistsError(f"{self.out} is not empty and holds no {SETTINGS}; choose a new folder")
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(known, settings)
        self._drop_torn_tail()
        self.records = read_records(self.path) if self.path.exists() else []
        self.done = {r["feature"] for r in self.records}

    def _drop_torn_tail(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "r+b") as fh:
            data = fh.read()
            keep = data.rfind(b"\n") + 1
            if keep < len(data):
                log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run",
                            self.path, len(data) - keep)
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())

    def append(self, records: list[dict]) -> None:
        """Write ``records`` (one batch) and make them durable before returning."""
        text = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
        new = not self.path.exists()
        with open(self.path, "ab") as fh:
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        if new:
            fsync_dir(self.out)
        self.records += records
        self.done.update(r["feature"] for r in records)


__all__ = ["RecordStore", "read_records", "RECORDS", "SETTINGS"]
