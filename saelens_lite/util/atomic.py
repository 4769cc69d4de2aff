"""Crash-safe file writes: write to a temp name in the same folder, flush + fsync, ``os.replace``
onto the final name, fsync the folder. A reader sees either the old file or the new one, never a
partial one. Temp files end in :data:`TMP_SUFFIX` so a later writer can sweep them up."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

TMP_SUFFIX = ".tmp"
_CHUNK = 1 << 22  # 4 MiB: large enough that crc32 runs at disk speed


def fsync_dir(path: str | Path) -> None:
    """Make a rename/unlink in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _ChecksumFile:
    """File wrapper that checksums what passes through ``write`` (saves re-reading the file)."""

    def __init__(self, f):
        self.f, self.crc, self.size = f, 0, 0

    def write(self, data) -> int:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(memoryview(data).cast("B"))
        return self.f.write(data)


def _replace(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """A file open for writing at ``path`` + :data:`TMP_SUFFIX`; on a clean exit flushed, fsynced
    and renamed onto ``path`` (the folder fsynced), on an error removed with ``path`` untouched.
    ``mode``: ``"wb"`` or ``"w"`` (text in ``encoding``, utf-8 when None)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode={mode!r} is invalid; allowed: 'wb', 'w'")
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, path)


def write_npy(path: str | Path, array: np.ndarray) -> dict:
    """Atomically write ``array`` as ``.npy``; returns ``{"bytes": size, "crc32": hex}``."""
    with atomic_open(path) as f:
        cf = _ChecksumFile(f)
        np.save(cf, np.ascontiguousarray(array), allow_pickle=False)
    return {"bytes": cf.size, "crc32": f"{cf.crc:08x}"}


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write ``data``."""
    with atomic_open(path) as f:
        f.write(data)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Atomically write ``text``."""
    with atomic_open(path, "w", encoding) as f:
        f.write(text)


def write_json(path: str | Path, obj) -> None:
    """Atomically write ``obj`` as indented JSON."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=1)


def file_checksum(path: str | Path, algo: str) -> str:
    """``crc32`` (8 hex digits) or ``blake2b`` (hex digest) of a file, read in chunks."""
    if algo == "crc32":
        crc = 0
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                crc = zlib.crc32(chunk, crc)
        return f"{crc:08x}"
    if algo == "blake2b":
        h = hashlib.blake2b()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()
    raise ValueError(f"unknown checksum {algo!r}; expected 'crc32' or 'blake2b'")
