"""On-disk activation cache: a resumable, crash-safe writer and a memory-mapped reader.

This module holds the reader: :class:`ActivationCache` over a cache folder, :class:`ShardedArray`
(one hook's (N, D) rows over memory-mapped shard files) and the row gathers its batches are made
of. The writer (:class:`CacheWriter`, :func:`write_merged_manifest`) is in
:mod:`saelens_lite.cache.writer`, the folder layout and the manifest in
:mod:`saelens_lite.cache.format`; both are re-exported here.

Only shards listed in the manifest exist for readers, so a cache whose writer was killed at any
moment opens at its last committed shard; a cache harvested by W processes (format version 2)
reads as one cache of all the ranks' rows, in rank-major order.

Shapes: N tokens in the cache, n rows in one call or shard, D hook width, B batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from saelens_lite.cache.format import (
    STORAGE_DTYPES,
    CacheCorruptError,
    HookNotCachedError,
    as_numpy,
    check_sizes,
    decode_np,
    decode_torch,
    read_manifest,
    shard_path,
)
from saelens_lite.util.atomic import file_checksum

log = logging.getLogger(__name__)

VERIFY_MODES = ("none", "size", "full")


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
PAR_MIN = 1 << 22
"""Elements (rows x width) below which `take_rows` gathers on one thread; read per call."""


def take_rows(src: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """out[:] = src[rows] (rows in range), split over up to 4 threads for big gathers
    (np.take releases the GIL)."""
    n = min(4, os.cpu_count() or 1, max(1, rows.size * src.shape[1] // PAR_MIN))
    if n == 1:
        np.take(src, rows, axis=0, out=out, mode="clip")
        return
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(4, thread_name_prefix="cache-gather"))
    cuts = np.linspace(0, len(rows), n + 1).astype(int)
    list(_POOL[0].map(lambda i: np.take(src, rows[cuts[i]:cuts[i + 1]], axis=0,
                                        out=out[cuts[i]:cuts[i + 1]], mode="clip"), range(n)))


class ShardedArray:
    """Read-only (N, D) array over memory-mapped shard files. Indexing with an int, a slice or
    an integer/boolean index array returns numpy (bfloat16 upcast to float32); :meth:`torch`
    returns a tensor in the stored dtype (bfloat16 stays bfloat16)."""

    ndim = 2

    def __init__(self, paths: list[Path], counts: list[int], width: int, dtype: str):
        self.paths, self.width, self.cache_dtype = paths, width, dtype
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self._maps: list[np.ndarray | None] = [None] * len(paths)
        self._storage = np.dtype(STORAGE_DTYPES.get(dtype, dtype))  # "int32" is used for the token table
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
        return decode_np(self._raw(key), self.cache_dtype)

    def torch(self, key=slice(None)) -> torch.Tensor:
        """Rows as a tensor in the stored dtype (all rows by default)."""
        return decode_torch(self._raw(key), self.cache_dtype)

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
        self.manifest = read_manifest(self.path)
        self._shards: list[dict] = self.manifest["shards"]
        if not self.complete:
            log.warning("cache %s is incomplete (%d tokens committed); reading the committed shards",
                        self.path, self.n_tokens)
        if verify != "none":
            check_sizes(self.path, self._shards)
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
            paths = [shard_path(self.path, s, f"acts/{hook}") for s in self._shards]
            self._arrays[hook] = ShardedArray(paths, [s["n_tokens"] for s in self._shards],
                                              self.widths[hook], self.dtype)
        return self._arrays[hook]

    def _token_table(self) -> np.ndarray:
        if self._tokens is None:
            paths = [shard_path(self.path, s, "tokens") for s in self._shards]
            table = ShardedArray(paths, [s["n_tokens"] for s in self._shards], 3, "int32")[:]
            self._tokens = np.ascontiguousarray(table.T)  # (3, N): contiguous columns
        return self._tokens

    token_ids = property(lambda self: self._token_table()[0])
    context_ids = property(lambda self: self._token_table()[1])
    positions = property(lambda self: self._token_table()[2])

    def verify(self) -> None:
        """Check every committed file's size and checksum; raises CacheCorruptError naming it."""
        check_sizes(self.path, self._shards)
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


__all__ = ["ActivationCache", "ShardedArray", "take_rows", "VERIFY_MODES"]
