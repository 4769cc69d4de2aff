"""The activation cache's on-disk format: the folder layout, the manifest, the storage dtypes,
and the checks shared by the writer (:mod:`saelens_lite.cache.writer`) and the reader
(:mod:`saelens_lite.cache.reader`).

Shapes: n rows in one shard, D hook width.

Folder layout (format version 1)::

    manifest.json                      the commit point (see saelens_lite.cache.writer)
    tokens/shard_00000.npy             int32 (n, 3): token id, context index, position in context
    acts/<hook>/shard_00000.npy        (n, D) float32 | float16 | uint16 (bfloat16 bit patterns)

Every shard holds ``shard_tokens`` rows except possibly the last. ``manifest.json`` holds
``format_version``, ``meta`` (free dict from the writer: model, corpus, harvest settings...),
``hooks`` ``{name: {"width": D}}``, ``dtype`` ("float32" | "float16" | "bfloat16"),
``shard_tokens``, ``shards`` (list of ``{index, n_tokens, files: {relpath: {"bytes", "crc32"
or "blake2b"}}}``), ``n_tokens``, ``complete`` and ``last_committed`` ([context, position] of
the last committed row, or null).

A cache harvested by W processes (format version 2, see
:func:`~saelens_lite.cache.writer.write_merged_manifest`) holds one version-1 cache per rank in
``rank_00000/`` ... ``rank_{W-1}/`` and a merged top-level
``manifest.json`` whose shards carry ``"dir": "rank_0000r"`` (file paths are relative to the top
folder) and ``layout`` ``{"world_size": W, "ranks": [...]}``. Rows are in rank-major order:
all of rank 0's rows in (context, position) order, then rank 1's, ...; each rank's last shard
may be short. Readers see one cache of all the rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

FORMAT_VERSION = 2  # the newest layout this module reads
PLAIN_FORMAT_VERSION = 1  # what CacheWriter writes: a single-writer cache (version-1 readers read it)
MANIFEST = "manifest.json"
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}  # name -> storage


class CacheCorruptError(OSError):
    """A cache file is missing, truncated or fails its checksum; the message names the file."""


class HookNotCachedError(KeyError):
    """The requested hook is not in the cache; the message lists the cached ones."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def shard_files(i: int, hooks: Sequence[str]) -> list[str]:
    """The files of shard ``i`` relative to the cache folder: its token table, then one per hook."""
    return [f"tokens/shard_{i:05d}.npy"] + [f"acts/{h}/shard_{i:05d}.npy" for h in hooks]


def shard_path(root: Path, shard: dict, kind: str) -> Path:
    """File of ``shard`` for ``kind`` ("tokens" or "acts/<hook>"); merged caches keep each
    rank's shards under their ``dir``."""
    return root / shard.get("dir", "") / kind / f"shard_{shard['index']:05d}.npy"


def read_manifest(root: Path) -> dict:
    """The manifest of the cache at ``root``; refuses a format newer than this module reads."""
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise FileNotFoundError(f"no activation cache at {root}: {mpath} not found")
    with open(mpath, encoding="utf-8") as f:
        manifest = json.load(f)
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{mpath} has format_version {version!r}, newer than the {FORMAT_VERSION} this "
                         "saelens_lite reads; upgrade saelens_lite (pip install -U saelens_lite)")
    return manifest


def check_sizes(root: Path, shards: list[dict]) -> None:
    """Every file of ``shards`` exists with its committed size; raises CacheCorruptError naming it."""
    for shard in shards:
        for rel, info in shard["files"].items():
            p = root / rel
            if not p.is_file():
                raise CacheCorruptError(f"cache file {p} is missing (committed in {root / MANIFEST})")
            if (size := p.stat().st_size) != info["bytes"]:
                raise CacheCorruptError(f"cache file {p} is truncated or altered: {size} bytes, "
                                        f"manifest says {info['bytes']}")


def to_storage(x, dtype: str) -> np.ndarray:
    """(n, D) tensor or array -> numpy in the storage dtype (bfloat16 as uint16 bits)."""
    if dtype == "bfloat16":
        return as_numpy(torch.as_tensor(x).detach().to("cpu", torch.bfloat16).contiguous())
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", getattr(torch, dtype)).numpy()
    return np.asarray(x, dtype=STORAGE_DTYPES[dtype])


def decode_np(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Storage -> numpy values; bfloat16 is upcast exactly to float32."""
    if dtype == "bfloat16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor; bfloat16 as its uint16 bits (the cache's storage)."""
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def decode_torch(raw: np.ndarray, dtype: str) -> torch.Tensor:
    """Storage -> tensor in the stored dtype (bfloat16 bits viewed as bfloat16)."""
    raw = np.ascontiguousarray(raw)
    if dtype == "bfloat16":
        return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(raw)


__all__ = ["FORMAT_VERSION", "PLAIN_FORMAT_VERSION", "MANIFEST", "STORAGE_DTYPES", "CacheCorruptError",
           "HookNotCachedError", "shard_files", "shard_path", "read_manifest", "check_sizes",
           "to_storage", "decode_np", "decode_torch", "as_numpy"]
