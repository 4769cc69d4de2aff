"""The activation cache's writer: :class:`CacheWriter` appends rows to a cache folder and commits
every full shard atomically; :func:`write_merged_manifest` joins the caches of several
harvesting processes into one. The folder layout is in :mod:`saelens_lite.cache.format`.

Shapes: n rows in one call or shard, D hook width.

A shard's files are written to temp names, fsynced and renamed into place; then the manifest is
replaced atomically. Only shards listed in the manifest exist for readers, so a ``kill -9`` at
any moment leaves a cache that reopens at its last committed shard; reopening the writer sweeps
away temp files and shard files the manifest does not list.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from saelens_lite.cache.format import (
    FORMAT_VERSION,
    MANIFEST,
    PLAIN_FORMAT_VERSION,
    STORAGE_DTYPES,
    check_sizes,
    read_manifest,
    shard_files,
    to_storage,
)
from saelens_lite.util.atomic import TMP_SUFFIX, write_json, write_npy

log = logging.getLogger(__name__)


def write_merged_manifest(root: str | Path, subdirs: Sequence[str], *, extra_meta: dict | None = None) -> dict:
    """Write ``root/manifest.json`` (format version 2) listing the shards of the caches in
    ``root/<subdir>`` (one per rank, written by :class:`CacheWriter`) in the given order, so that
    :class:`ActivationCache` reads them as one cache. The sub-caches must share hooks, dtype and
    shard size; ``meta`` is the first one's without its ``shard`` key, updated by ``extra_meta``."""
    root = Path(root)
    subs = [read_manifest(root / d) for d in subdirs]
    first = subs[0]
    for d, m in zip(subdirs, subs):
        for key in ("hooks", "dtype", "shard_tokens"):
            if m[key] != first[key]:
                raise ValueError(f"cache {root / d} has {key}={m[key]!r}, {root / subdirs[0]} has "
                                 f"{first[key]!r}; cannot merge")
    shards = []
    for d, m in zip(subdirs, subs):
        for sh in m["shards"]:
            files = {f"{d}/{rel}": info for rel, info in sh["files"].items()}
            shards.append({"index": sh["index"], "dir": d, "n_tokens": sh["n_tokens"], "files": files})
    meta = {k: v for k, v in first["meta"].items() if k != "shard"} | (extra_meta or {})
    manifest = {"format_version": FORMAT_VERSION, "meta": meta, "hooks": first["hooks"],
                "dtype": first["dtype"], "shard_tokens": first["shard_tokens"],
                "layout": {"world_size": len(subdirs), "ranks": list(subdirs), "order": "rank-major"},
                "shards": shards, "n_tokens": sum(m["n_tokens"] for m in subs),
                "complete": all(m["complete"] for m in subs), "last_committed": None}
    write_json(root / MANIFEST, manifest)
    return manifest


class CacheWriter:
    """Appends rows to a cache folder and commits every full shard atomically. Use
    :meth:`open`. As a context manager it finalizes on a clean exit and, on an exception, leaves
    the cache incomplete and resumable. One writer per folder at a time."""

    def __init__(self, root: Path, manifest: dict):
        self.root, self.manifest = root, manifest
        self.hooks: dict[str, int] = {h: v["width"] for h, v in manifest["hooks"].items()}
        self.dtype: str = manifest["dtype"]
        self.shard_tokens: int = manifest["shard_tokens"]
        self._fill = 0
        self._tokens_buf: np.ndarray | None = None
        self._act_bufs: dict[str, np.ndarray] = {}

    @property
    def complete(self) -> bool:
        return self.manifest["complete"]

    @property
    def tokens_committed(self) -> int:
        return self.manifest["n_tokens"]

    @property
    def last_committed(self) -> tuple[int, int] | None:
        lc = self.manifest["last_committed"]
        return None if lc is None else (int(lc[0]), int(lc[1]))

    @classmethod
    def open(cls, path: str | Path, *, meta: dict, hooks: dict[str, int], dtype: str,
             shard_tokens: int, overwrite: bool = False) -> CacheWriter:
        """Create the cache at ``path``, or resume it when it is an incomplete cache with exactly
        these settings (a complete one gives a writer with ``complete == True``). Settings that
        differ raise ValueError naming the key; ``overwrite=True`` discards any existing cache."""
        root = Path(path)
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype={dtype!r}; expected one of {sorted(STORAGE_DTYPES)}")
        if not isinstance(shard_tokens, int) or shard_tokens < 1:
            raise ValueError(f"shard_tokens={shard_tokens!r}; expected a positive int")
        if not hooks:
            raise ValueError("hooks is empty; expected {hook name: width}")
        for h, w in hooks.items():
            if not h or "/" in h or "\\" in h or h in (".", "..") or h.endswith(TMP_SUFFIX):
                raise ValueError(f"hook name {h!r} cannot be used as a folder name")
            if not isinstance(w, (int, np.integer)) or w < 1:
                raise ValueError(f"hooks[{h!r}]={w!r}; expected a positive int width")
        try:  # normalise (tuples -> lists) so a resume compares like with like
            meta = json.loads(json.dumps(meta))
        except TypeError as e:
            raise TypeError(f"meta must be JSON-serialisable: {e}") from None
        want = {"meta": meta, "hooks": {h: {"width": int(w)} for h, w in sorted(hooks.items())},
                "dtype": dtype, "shard_tokens": shard_tokens}
        mpath = root / MANIFEST
        if mpath.is_file():
            old = read_manifest(root)
            if overwrite:
                log.info("overwriting existing cache at %s", root)
                _remove_cache(root)
            else:
                for key, val in want.items():
                    if old.get(key) != val:
                        raise ValueError(f"cache at {root} was written with different settings: "
                                         f"{_diff_key(key, old.get(key), val)}; pass overwrite=True to "
                                         "discard it, or choose another folder")
                check_sizes(root, old["shards"])
                writer = cls(root, old)
                writer._sweep()
                if not writer.complete:
                    log.info("resuming cache %s at %d tokens", root, writer.tokens_committed)
                return writer
        elif root.exists() and any(p.name not in ("tokens", "acts") and not p.name.endswith(TMP_SUFFIX)
                                   for p in root.iterdir()):
            raise FileExistsError(f"{root} exists and is not an activation cache (no {MANIFEST}); "
                                  "choose an empty or new folder")
        elif root.exists():
            _remove_cache(root)  # leftovers of a cache whose manifest was never written
        root.mkdir(parents=True, exist_ok=True)
        manifest = {"format_version": PLAIN_FORMAT_VERSION, **want, "shards": [], "n_tokens": 0,
                    "complete": False, "last_committed": None}
        write_json(mpath, manifest)
        return cls(root, manifest)

    def _sweep(self) -> None:
        """Delete temp files and shard files that no committed shard lists (a crash between a
        shard's rename and the manifest update leaves those)."""
        keep = {rel for s in self.manifest["shards"] for rel in s["files"]}
        dirs = [self.root / "tokens"] + [self.root / "acts" / h for h in self.hooks]
        stale = [p for d in dirs if d.is_dir() for p in d.iterdir()
                 if p.is_file() and p.relative_to(self.root).as_posix() not in keep]
        stale += [p for p in self.root.iterdir() if p.is_file() and p.name.endswith(TMP_SUFFIX)]
        for p in stale:
            log.info("removing uncommitted file %s", p)
            p.unlink()

    def append(self, acts: dict, token_ids, context_idx, position) -> None:
        """Buffer n rows: ``acts`` {hook: (n, D) tensor or array} for every hook of the cache,
        and (n,) token ids, context indices and positions. Each full shard is committed."""
        if self.complete:
            raise RuntimeError(f"cache {self.root} is complete; nothing more can be appended")
        if set(acts) != set(self.hooks):
            unknown, missing = sorted(set(acts) - set(self.hooks)), sorted(set(self.hooks) - set(acts))
            raise ValueError(f"append got unknown hooks {unknown} and lacks hooks {missing}; "
                             f"the cache holds {sorted(self.hooks)}")
        rows = {h: to_storage(a, self.dtype) for h, a in acts.items()}
        cols = [np.asarray(c).reshape(-1) for c in (token_ids, context_idx, position)]
        n = len(cols[0])
        for name, c in zip(("token_ids", "context_idx", "position"), cols):
            if len(c) != n:
                raise ValueError(f"{name} has {len(c)} rows, token_ids has {n}")
            if n and (c.min() < 0 or c.max() >= 2**31):
                raise ValueError(f"{name} must lie in [0, 2**31) to be stored as int32")
        for h, r in rows.items():
            if r.ndim != 2 or r.shape[1] != self.hooks[h]:
                raise ValueError(f"hook {h!r}: got shape {tuple(r.shape)}, expected (n, {self.hooks[h]}) "
                                 f"(width {r.shape[-1] if r.ndim else None} vs cache width {self.hooks[h]})")
            if r.shape[0] != n:
                raise ValueError(f"hook {h!r} has {r.shape[0]} rows, token_ids has {n}")
        if self._tokens_buf is None:  # preallocated once; rows are copied in, never concatenated
            self._tokens_buf = np.empty((self.shard_tokens, 3), np.int32)
            self._act_bufs = {h: np.empty((self.shard_tokens, w), STORAGE_DTYPES[self.dtype])
                              for h, w in self.hooks.items()}
        i = 0
        while i < n:
            k = min(n - i, self.shard_tokens - self._fill)
            dst = slice(self._fill, self._fill + k)
            for j, c in enumerate(cols):
                self._tokens_buf[dst, j] = c[i:i + k]
            for h, r in rows.items():
                self._act_bufs[h][dst] = r[i:i + k]
            self._fill += k
            i += k
            if self._fill == self.shard_tokens:
                self._commit()

    def _commit(self, complete: bool = False) -> None:
        n, index = self._fill, len(self.manifest["shards"])
        files = {}
        if n:
            arrays = [self._tokens_buf] + [self._act_bufs[h] for h in self.hooks]
            for rel, arr in zip(shard_files(index, list(self.hooks)), arrays):
                (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
                files[rel] = write_npy(self.root / rel, arr[:n])
            last = self._tokens_buf[n - 1]
            self.manifest["shards"].append({"index": index, "n_tokens": n, "files": files})
            self.manifest["n_tokens"] += n
            self.manifest["last_committed"] = [int(last[1]), int(last[2])]
        self.manifest["complete"] = complete
        write_json(self.root / MANIFEST, self.manifest)  # the commit point
        self._fill = 0

    def finalize(self) -> None:
        """Commit the final partial shard and mark the cache complete (idempotent)."""
        if not self.complete:
            self._commit(complete=True)
            log.info("cache %s complete: %d tokens in %d shards", self.root,
                     self.tokens_committed, len(self.manifest["shards"]))

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()


def _diff_key(key: str, old, new) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            if old.get(k) != new.get(k):
                return f"{key}.{k}: existing {old.get(k)!r}, requested {new.get(k)!r}"
    return f"{key}: existing {old!r}, requested {new!r}"


def _remove_cache(root: Path) -> None:
    # The manifest goes first: a crash midway leaves a folder that is no longer a cache.
    (root / MANIFEST).unlink(missing_ok=True)
    for name in ("tokens", "acts"):
        shutil.rmtree(root / name, ignore_errors=True)
    for p in root.glob("*" + TMP_SUFFIX):
        p.unlink()


__all__ = ["CacheWriter", "write_merged_manifest"]
