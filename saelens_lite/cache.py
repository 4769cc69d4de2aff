"""On-disk activation cache: a resumable, crash-safe writer and a memory-mapped reader.

Shapes: N tokens in the cache, n rows in one call or shard, D hook width, B batch.

Folder layout (format version 1)::

    manifest.json                      the commit point (see below)
    tokens/shard_00000.npy             int32 (n, 3): token id, context index, position in context
    acts/<hook>/shard_00000.npy        (n, D) float32 | float16 | uint16 (bfloat16 bit patterns)

Every shard holds ``shard_tokens`` rows except possibly the last. ``manifest.json`` holds
``format_version``, ``meta`` (free dict from the writer: model, corpus, harvest settings...),
``hooks`` ``{name: {"width": D}}``, ``dtype`` ("float32" | "float16" | "bfloat16"),
``shard_tokens``, ``shards`` (list of ``{index, n_tokens, files: {relpath: {"bytes", "crc32"
or "blake2b"}}}``), ``n_tokens``, ``complete`` and ``last_committed`` ([context, position] of
the last committed row, or null).

A cache harvested by W processes (format version 2, see :func:`write_merged_manifest`) holds
one version-1 cache per rank in ``rank_00000/`` ... ``rank_{W-1}/`` and a merged top-level
``manifest.json`` whose shards carry ``"dir": "rank_0000r"`` (file paths are relative to the top
folder) and ``layout`` ``{"world_size": W, "ranks": [...]}``. Rows are in rank-major order:
all of rank 0's rows in (context, position) order, then rank 1's, ...; each rank's last shard
may be short. Readers see one cache of all the rows.

A shard's files are written to temp names, fsynced and renamed into place; then the manifest is
replaced atomically. Only shards listed in the manifest exist for readers, so a ``kill -9`` at
any moment leaves a cache that reopens at its last committed shard; reopening the writer sweeps
away temp files and shard files the manifest does not list.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from saelens_lite._atomic import TMP_SUFFIX, file_checksum, write_json, write_npy

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # the newest layout this module reads
PLAIN_FORMAT_VERSION = 1  # what CacheWriter writes: a single-writer cache (version-1 readers read it)
MANIFEST = "manifest.json"
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}  # name -> storage
VERIFY_MODES = ("none", "size", "full")


class CacheCorruptError(OSError):
    """A cache file is missing, truncated or fails its checksum; the message names the file."""


class HookNotCachedError(KeyError):
    """The requested hook is not in the cache; the message lists the cached ones."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _shard_files(i: int, hooks: Sequence[str]) -> list[str]:
    return [f"tokens/shard_{i:05d}.npy"] + [f"acts/{h}/shard_{i:05d}.npy" for h in hooks]


def _shard_path(root: Path, shard: dict, kind: str) -> Path:
    """File of ``shard`` for ``kind`` ("tokens" or "acts/<hook>"); merged caches keep each
    rank's shards under their ``dir``."""
    return root / shard.get("dir", "") / kind / f"shard_{shard['index']:05d}.npy"


def write_merged_manifest(root: str | Path, subdirs: Sequence[str], *, extra_meta: dict | None = None) -> dict:
    """Write ``root/manifest.json`` (format version 2) listing the shards of the caches in
    ``root/<subdir>`` (one per rank, written by :class:`CacheWriter`) in the given order, so that
    :class:`ActivationCache` reads them as one cache. The sub-caches must share hooks, dtype and
    shard size; ``meta`` is the first one's without its ``shard`` key, updated by ``extra_meta``."""
    root = Path(root)
    subs = [_read_manifest(root / d) for d in subdirs]
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


def _check_sizes(root: Path, shards: list[dict]) -> None:
    for shard in shards:
        for rel, info in shard["files"].items():
            p = root / rel
            if not p.is_file():
                raise CacheCorruptError(f"cache file {p} is missing (committed in {root / MANIFEST})")
            if (size := p.stat().st_size) != info["bytes"]:
                raise CacheCorruptError(f"cache file {p} is truncated or altered: {size} bytes, "
                                        f"manifest says {info['bytes']}")


def _to_storage(x, dtype: str) -> np.ndarray:
    """(n, D) tensor or array -> numpy in the storage dtype (bfloat16 as uint16 bits)."""
    if dtype == "bfloat16":
        return as_numpy(torch.as_tensor(x).detach().to("cpu", torch.bfloat16).contiguous())
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", getattr(torch, dtype)).numpy()
    return np.asarray(x, dtype=DTYPES[dtype])


def _decode_np(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Storage -> numpy values; bfloat16 is upcast exactly to float32."""
    if dtype == "bfloat16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor; bfloat16 as its uint16 bits (the cache's storage)."""
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def _gather_rows(win_ND: np.ndarray, rows: np.ndarray | range, dtype: torch.dtype,
                 out: torch.Tensor | None = None, scratch: list | None = None) -> torch.Tensor:
    """win[rows] (storage dtype) as a ``dtype`` tensor, into ``out`` if given: one gather
    (``np.take``, 3x faster than ``torch.index_select`` here), then one conversion at most,
    through a scratch buffer kept in ``scratch`` across calls. A ``range`` (unshuffled) is a
    slice: no gather, one copy or conversion."""
    if out is None:
        out = torch.empty(len(rows), win_ND.shape[1], dtype=dtype)
    store = torch.bfloat16 if win_ND.dtype == np.uint16 else torch.from_numpy(win_ND[:0]).dtype
    if isinstance(rows, range):
        view = torch.from_numpy(win_ND[rows.start:rows.stop])
        return out.copy_(view.view(torch.bfloat16) if store == torch.bfloat16 else view)
    if store == dtype:
        take_rows(win_ND, rows, as_numpy(out))
        return out
    if scratch is None or not scratch or scratch[0].shape[0] < len(rows):
        buf = torch.empty(len(rows), win_ND.shape[1], dtype=store)
        if scratch is not None:
            scratch[:] = [buf]
    else:
        buf = scratch[0][:len(rows)]
    take_rows(win_ND, rows, as_numpy(buf))
    return out.copy_(buf)


_POOL: list = []  # [ThreadPoolExecutor], made on first use
_PAR_MIN = 1 << 22  # elements below which one thread gathers


def take_rows(src: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """out[:] = src[rows] (rows in range), split over up to 4 threads for big gathers
    (np.take releases the GIL)."""
    n = min(4, os.cpu_count() or 1, max(1, rows.size * src.shape[1] // _PAR_MIN))
    if n == 1:
        np.take(src, rows, axis=0, out=out, mode="clip")
        return
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(4, thread_name_prefix="cache-gather"))
    cuts = np.linspace(0, len(rows), n + 1).astype(int)
    list(_POOL[0].map(lambda i: np.take(src, rows[cuts[i]:cuts[i + 1]], axis=0,
                                        out=out[cuts[i]:cuts[i + 1]], mode="clip"), range(n)))


def _decode_torch(raw: np.ndarray, dtype: str) -> torch.Tensor:
    raw = np.ascontiguousarray(raw)
    if dtype == "bfloat16":
        return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(raw)


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
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}; expected one of {sorted(DTYPES)}")
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
            old = _read_manifest(root)
            if overwrite:
                log.info("overwriting existing cache at %s", root)
                _remove_cache(root)
            else:
                for key, val in want.items():
                    if old.get(key) != val:
                        raise ValueError(f"cache at {root} was written with different settings: "
                                         f"{_diff_key(key, old.get(key), val)}; pass overwrite=True to "
                                         "discard it, or choose another folder")
                _check_sizes(root, old["shards"])
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
        rows = {h: _to_storage(a, self.dtype) for h, a in acts.items()}
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
            self._act_bufs = {h: np.empty((self.shard_tokens, w), DTYPES[self.dtype])
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
            for rel, arr in zip(_shard_files(index, list(self.hooks)), arrays):
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


def _read_manifest(root: Path) -> dict:
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


class ShardedArray:
    """Read-only (N, D) array over memory-mapped shard files. Indexing with an int, a slice or
    an integer/boolean index array returns numpy (bfloat16 upcast to float32); :meth:`torch`
    returns a tensor in the stored dtype (bfloat16 stays bfloat16)."""

    ndim = 2

    def __init__(self, paths: list[Path], counts: list[int], width: int, dtype: str):
        self.paths, self.width, self.cache_dtype = paths, width, dtype
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self._maps: list[np.ndarray | None] = [None] * len(paths)
        self._storage = np.dtype(DTYPES.get(dtype, dtype))  # "int32" is used for the token table
        self.dtype = np.dtype(np.float32) if dtype == "bfloat16" else self._storage  # of indexing results

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.offsets[-1]), self.width)

    def __len__(self) -> int:
        return self.shape[0]

    def shard(self, s: int) -> np.ndarray:
        """The raw memory map of shard ``s`` (storage dtype)."""
        if self._maps[s] is None:
            mm = np.load(self.paths[s], mmap_mode="r", allow_pickle=False)
            want = (int(self.offsets[s + 1] - self.offsets[s]), self.width)
            if mm.shape != want:
                raise CacheCorruptError(f"cache file {self.paths[s]} has shape {mm.shape}, manifest says {want}")
            self._maps[s] = mm
        return self._maps[s]

    def _raw(self, key) -> np.ndarray:
        """Gather rows in the storage dtype; always returns a fresh (writable) array."""
        n = len(self)
        if isinstance(key, tuple):
            rows = self._raw(key[0])
            return np.array(rows[(slice(None),) * (rows.ndim - 1) + key[1:]])
        if isinstance(key, (int, np.integer)):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"index {key} out of range for {n} rows")
            s = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return np.array(self.shard(s)[i - self.offsets[s]])
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self._raw(np.arange(start, stop, step))
            parts = [self.shard(s)[max(start - lo, 0):min(stop, hi) - lo]
                     for s, (lo, hi) in enumerate(zip(self.offsets[:-1], self.offsets[1:]))
                     if lo < stop and hi > start]
            return np.concatenate(parts) if parts else np.empty((0, self.width), self._storage)
        idx = np.asarray(key)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean index has shape {idx.shape}, expected ({n},)")
            idx = np.flatnonzero(idx)
        if idx.dtype.kind not in "iu":
            raise IndexError(f"cannot index a ShardedArray with {type(key).__name__} of dtype {idx.dtype}")
        flat = idx.reshape(-1).astype(np.int64)
        flat = np.where(flat < 0, flat + n, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= n):
            raise IndexError(f"index out of range for {n} rows")
        # Sort once so each shard is one contiguous run of ascending rows (sequential mmap reads).
        order = np.argsort(flat, kind="stable")
        sorted_idx = flat[order]
        bounds = np.searchsorted(sorted_idx, self.offsets)
        out = np.empty((flat.size, self.width), self._storage)
        for s in range(len(self.paths)):
            a, b = bounds[s], bounds[s + 1]
            if a < b:
                out[order[a:b]] = self.shard(s)[sorted_idx[a:b] - self.offsets[s]]
        return out.reshape(idx.shape + (self.width,))

    def __getitem__(self, key) -> np.ndarray:
        return _decode_np(self._raw(key), self.cache_dtype)

    def torch(self, key=slice(None)) -> torch.Tensor:
        """Rows as a tensor in the stored dtype (all rows by default)."""
        return _decode_torch(self._raw(key), self.cache_dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"ShardedArray(shape={self.shape}, dtype={self.cache_dtype}, shards={len(self.paths)})"


class ActivationCache:
    """Reader for a cache folder. ``verify``: "size" (default) checks every committed file's
    size at open (cheap, catches truncation), "full" also checks checksums, "none" skips both.
    An incomplete cache opens read-only with a warning and shows its committed shards."""

    def __init__(self, path: str | Path, *, verify: str = "size"):
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify={verify!r}; expected one of {VERIFY_MODES}")
        self.path = Path(path)
        self.manifest = _read_manifest(self.path)
        self._shards: list[dict] = self.manifest["shards"]
        if not self.complete:
            log.warning("cache %s is incomplete (%d tokens committed); reading the committed shards",
                        self.path, self.n_tokens)
        if verify != "none":
            _check_sizes(self.path, self._shards)
        if verify == "full":
            self.verify()
        self._arrays: dict[str, ShardedArray] = {}
        self._tokens: np.ndarray | None = None

    meta = property(lambda self: self.manifest["meta"])
    complete = property(lambda self: bool(self.manifest["complete"]))
    n_tokens = property(lambda self: int(self.manifest["n_tokens"]))
    dtype = property(lambda self: self.manifest["dtype"])
    hook_names = property(lambda self: list(self.manifest["hooks"]))
    widths = property(lambda self: {h: v["width"] for h, v in self.manifest["hooks"].items()})

    def _check_hook(self, hook: str) -> None:
        if hook not in self.manifest["hooks"]:
            raise HookNotCachedError(f"hook {hook!r} is not in the cache at {self.path}; "
                                     f"available: {', '.join(self.hook_names)}")

    def d(self, hook: str) -> int:
        self._check_hook(hook)
        return self.widths[hook]

    def activations(self, hook: str) -> ShardedArray:
        """(N, D) memory-mapped activations of ``hook``."""
        if hook not in self._arrays:
            self._check_hook(hook)
            paths = [_shard_path(self.path, s, f"acts/{hook}") for s in self._shards]
            self._arrays[hook] = ShardedArray(paths, [s["n_tokens"] for s in self._shards],
                                              self.widths[hook], self.dtype)
        return self._arrays[hook]

    def _token_table(self) -> np.ndarray:
        if self._tokens is None:
            paths = [_shard_path(self.path, s, "tokens") for s in self._shards]
            table = ShardedArray(paths, [s["n_tokens"] for s in self._shards], 3, "int32")[:]
            self._tokens = np.ascontiguousarray(table.T)  # (3, N): contiguous columns
        return self._tokens

    token_ids = property(lambda self: self._token_table()[0])
    context_ids = property(lambda self: self._token_table()[1])
    positions = property(lambda self: self._token_table()[2])

    def verify(self) -> None:
        """Check every committed file's size and checksum; raises CacheCorruptError naming it."""
        _check_sizes(self.path, self._shards)
        for shard in self._shards:
            for rel, info in shard["files"].items():
                algo = "crc32" if "crc32" in info else "blake2b"
                if file_checksum(self.path / rel, algo) != info[algo]:
                    raise CacheCorruptError(f"cache file {self.path / rel} is corrupted ({algo} mismatch)")

    def num_batches(self, batch_size: int, *, epochs: int = 1, drop_last: bool = True) -> int:
        """How many batches :meth:`iter_batches` yields for finite ``epochs``."""
        rows = epochs * self.n_tokens
        return rows // batch_size if drop_last else -(-rows // batch_size)

    def iter_batches(self, hooks: str | list[str], batch_size: int, *, shuffle: bool = True,
                     seed: int = 0, start_batch: int = 0, epochs: int | None = 1,
                     buffer_shards: int = 4, drop_last: bool = True, as_torch: bool = True,
                     dtype: torch.dtype | None = torch.float32, reuse: int = 0) -> Iterator:
        """Yield (B, D) batches of one hook, or ``{hook: (B, D)}`` with the same rows for several.

        The rows form one stream over ``epochs`` passes (None: forever); batch k is stream rows
        [k*B, (k+1)*B), so batches run across shard windows and epoch boundaries. With shuffle,
        epoch e visits shards in the order ``rng(seed, e)`` permutes them, in windows of
        ``buffer_shards`` shards whose rows are permuted by ``rng(seed, e, window)``. Every
        permutation depends only on (seed, epoch, window), so ``start_batch`` seeks straight to
        batch k from the manifest's token counts without reading skipped data. ``as_torch=False``
        yields numpy (bfloat16 upcast to float32); ``dtype=None`` keeps the stored dtype.

        Each window is read once, sequentially, into a buffer the iterator reuses, and each
        shuffled batch is one row gather (``np.take``, threaded when big) out of it, an
        unshuffled one a slice. ``reuse=R``
        (R >= 1) also cycles R output buffers instead of allocating every batch (a fresh
        multi-MB buffer costs more in page faults than the copy into it): a yielded batch is
        then overwritten R batches later, so a consumer must be done with it by then (the
        trainer moves each batch to the device at once).
        """
        names = [hooks] if isinstance(hooks, str) else list(hooks)
        arrays = [self.activations(h) for h in names]  # raises here, not at the first next()
        if batch_size < 1 or start_batch < 0 or buffer_shards < 1 or (epochs is not None and epochs < 0):
            raise ValueError(f"need batch_size >= 1, start_batch >= 0, buffer_shards >= 1, epochs >= 0 "
                             f"or None; got {batch_size}, {start_batch}, {buffer_shards}, {epochs}")
        if seed < 0:
            raise ValueError(f"seed={seed}; expected a non-negative int")
        if not isinstance(reuse, int) or reuse < 0:
            raise ValueError(f"reuse={reuse!r}; expected an int >= 0 (0: a new buffer per batch)")
        return self._batches(names, arrays, batch_size, shuffle, seed, start_batch, epochs,
                             buffer_shards, drop_last, as_torch, dtype, isinstance(hooks, str), reuse)

    def _batches(self, names, arrays, batch_size, shuffle, seed, start_batch, epochs, buffer_shards,
                 drop_last, as_torch, dtype, single, reuse) -> Iterator:
        N = self.n_tokens
        if N == 0 or epochs == 0:
            return
        total = None if epochs is None else epochs * N
        store = getattr(torch, self.dtype)  # bfloat16 bits are read as bfloat16
        out_dt = store if dtype is None or not as_torch else dtype
        if not as_torch:  # numpy: bfloat16 upcast to float32, else the stored dtype
            out_dt = torch.float32 if self.dtype == "bfloat16" else store
        ring = [[torch.empty(batch_size, a.width, dtype=out_dt) for a in arrays] for _ in range(reuse)]
        scratch: list[list] = [[] for _ in arrays]  # per hook, for a gather before a conversion
        n_out = 0
        pending: list[list[torch.Tensor]] = []  # gathered parts of a batch that spans windows
        n_pending = 0
        for win, rows in self._windows(arrays, start_batch * batch_size, total, shuffle, seed,
                                       buffer_shards):
            i, n = 0, len(rows)
            while i < n:
                k = min(batch_size - n_pending, n - i)
                r = rows[i:i + k]
                i += k
                if n_pending == 0 and k == batch_size:  # the common case: one gather, no parts
                    outs = ring[n_out % reuse] if reuse else [None] * len(win)
                    parts = [_gather_rows(w, r, out_dt, o, sc) for w, o, sc in zip(win, outs, scratch)]
                else:
                    pending.append([_gather_rows(w, r, out_dt) for w in win])
                    n_pending += k
                    if n_pending < batch_size:
                        continue
                    parts = [torch.cat([p[j] for p in pending]) for j in range(len(win))]
                    pending, n_pending = [], 0
                n_out += 1
                yield self._emit(names, parts, as_torch, single)
        if n_pending and not drop_last:
            yield self._emit(names, [torch.cat([p[j] for p in pending]) for j in range(len(names))],
                             as_torch, single)

    def _windows(self, arrays: list[ShardedArray], start: int, total: int | None,
                 shuffle: bool, seed: int, buffer_shards: int) -> Iterator:
        """(window buffers, rows): each window of the stream from row ``start`` up to ``total``,
        read into reused (rows, D) numpy arrays (one per hook, storage dtype), and the positions
        of its stream rows in them (a permutation suffix, or a range). The buffers are
        overwritten by the next window."""
        N, counts = self.n_tokens, [s["n_tokens"] for s in self._shards]
        cap = max(counts) * min(buffer_shards, len(counts))
        bufs = [None] * len(arrays)
        epoch, off = divmod(start, N)
        while total is None or epoch * N < total:  # total is a whole number of epochs
            order = np.random.default_rng([seed, epoch]).permutation(len(counts)) if shuffle \
                else np.arange(len(counts))
            for w in range(0, len(order), buffer_shards):
                window = order[w:w + buffer_shards]
                size = sum(counts[s] for s in window)
                if off >= size:  # skipped by arithmetic alone
                    off -= size
                    continue
                for j, a in enumerate(arrays):
                    if bufs[j] is None:
                        bufs[j] = np.empty((cap, a.width), a.shard(0).dtype)
                    at = 0
                    for s in window:  # sequential reads of whole shard files
                        m = a.shard(s)
                        np.copyto(bufs[j][at:at + len(m)], m)
                        at += len(m)
                if shuffle:
                    rows = np.random.default_rng([seed, epoch, w]).permutation(size)[off:]
                else:
                    rows = range(off, size)  # sliced, not gathered (_gather_rows)
                off = 0
                yield [b[:size] for b in bufs], rows
            epoch += 1

    def _emit(self, names, parts, as_torch, single):
        out = dict(zip(names, parts if as_torch else [p.numpy() for p in parts]))
        return out[names[0]] if single else out

    def summary(self) -> str:
        """Human-readable description: tokens, dtype, shards, size on disk, hooks and widths."""
        size = sum(i["bytes"] for s in self._shards for i in s["files"].values())
        lines = [f"ActivationCache {self.path} ({'complete' if self.complete else 'INCOMPLETE'})",
                 f"  tokens: {self.n_tokens:,}  dtype: {self.dtype}  shards: {len(self._shards)} "
                 f"x {self.manifest['shard_tokens']:,} tokens  size: {size / 2**20:,.1f} MiB"]
        lines += [f"  {h}: d={w}" for h, w in self.widths.items()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ActivationCache({str(self.path)!r}, n_tokens={self.n_tokens}, hooks={self.hook_names})"
