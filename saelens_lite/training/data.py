"""Training data sources behind one small interface.

A :class:`DataSource` is an endless, deterministic stream of batches ``{hook: x_BD}`` (float32)
that can start exactly at any batch index, which is what makes resume exact: batch ``b``
of a run is the same tensor whether or not the run was interrupted before it.

Sources:

* :class:`ArraySource` — tensors / arrays held in memory or memory-mapped (a user's ``.npy``
  or ``.safetensors`` file of shape (N, D)). The stream is the concatenation of shuffled
  passes; pass ``e`` uses the permutation seeded by ``(seed, e)``, so batch ``b`` covers
  positions ``[b B, (b + 1) B)`` of that concatenation and is found in O(B).
* :class:`CacheSource` — an :class:`~saelens_lite.cache.ActivationCache`, shuffled by its own
  ``iter_batches`` (which skips to a batch).
* :class:`StreamSource` — harvested on the fly from a model: packed contexts are grouped in
  chunks of ``buffer_contexts``; the kept tokens of chunk ``c`` are shuffled together (seed
  ``(seed, c)``) and the stream is the concatenation of chunks over a cyclic corpus. To start
  at batch ``b`` the source re-tokenises (but does not run the model on) the contexts before
  it; ``contexts_consumed`` records how far the corpus has been read.

Shapes: N tokens in a source, B batch, D hook width, S sequence length.
"""

from __future__ import annotations

import itertools
import json
import logging
import struct
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from saelens_lite.cache import as_numpy, take_rows
from saelens_lite.training.targets import check_row_counts, check_widths, data_hooks, resolve
from saelens_lite.util.devices import resolve_device

log = logging.getLogger(__name__)

DEFAULT_HOOK = "activations"


class DataSource(ABC):
    """Endless stream of ``{hook: x_BD}`` batches that can skip exactly to a batch: float32,
    or a cache's stored 16-bit dtype (the consumer upcasts, on its device). Batches are on the
    CPU, or on the device of a tensor the user passed."""

    widths: dict[str, int]
    """Hook name -> input width D."""
    n_tokens: int | None = None
    """Tokens in one pass over the data (None when unknown, e.g. streaming)."""
    model_name: str = ""
    """The model the activations come from, when the source knows it (a cache's manifest, the
    streamed model); '' otherwise (arrays). Saved as each SAE's ``cfg.model_name``."""

    @property
    def hooks(self) -> list[str]:
        return list(self.widths)

    @abstractmethod
    def batches(self, batch_size: int, *, seed: int, start_batch: int = 0,
                reuse: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches ``start_batch, start_batch + 1, ...`` of the stream for ``seed``. With
        ``reuse=R`` a source may cycle R output buffers, so a batch can be overwritten R batches
        after it was yielded (the trainer consumes each batch at once); 0: every batch is new."""

    def sample(self, n: int, *, seed: int) -> dict[str, torch.Tensor]:
        """About ``n`` tokens for estimating statistics (normalisation, decoder-bias init)."""
        return next(iter(self.batches(n, seed=seed + 7919)))

    def select(self, hooks: list[str]) -> None:
        """Restrict the stream to ``hooks``; a missing hook fails naming what exists."""
        missing = [h for h in hooks if h not in self.widths]
        if missing:
            raise ValueError(f"hooks={missing!r}: not in the data; available: {sorted(self.widths)}")
        self.widths = {h: self.widths[h] for h in hooks}

    def state(self) -> dict:
        """Extra position information recorded in checkpoints (informational)."""
        return {}


# ---------------------------------------------------------------------------------------------
# In-memory / memory-mapped arrays


_KEPT = (torch.float32, torch.float16, torch.bfloat16)  # batch dtypes kept as they are
_NP_TORCH = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}


def _host_dtype(a) -> torch.dtype | None:
    """The torch dtype of a tensor or a float32/float16 numpy array (None for other arrays)."""
    return a.dtype if isinstance(a, torch.Tensor) else _NP_TORCH.get(np.dtype(a.dtype))


class ArraySource(DataSource):
    """(N, D) arrays, one per hook, sharing N: torch tensors, numpy arrays or memmaps."""

    def __init__(self, arrays: Mapping[str, torch.Tensor | np.ndarray]):
        if not arrays:
            raise ValueError("data: no arrays given")
        self.arrays = dict(arrays)
        ns = {}
        self.widths = {}
        for hook, a in self.arrays.items():
            if a.ndim != 2:
                raise ValueError(f"data[{hook!r}]: expected shape (N, D), got {tuple(a.shape)}")
            ns[hook] = int(a.shape[0])
            self.widths[hook] = int(a.shape[1])
        if len(set(ns.values())) != 1:
            raise ValueError(f"data: hooks hold different token counts {ns}")
        self.n_tokens = next(iter(ns.values()))
        if self.n_tokens == 0:
            raise ValueError("data: holds no tokens")

    def select(self, hooks: list[str]) -> None:
        super().select(hooks)
        self.arrays = {h: self.arrays[h] for h in hooks}  # the others are never read

    def _perm(self, seed: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(self.n_tokens)

    def _gather(self, idx: np.ndarray, outs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Rows ``idx`` of every hook: float32, or a 16-bit array's own dtype (upcast by the
        consumer on its device). Host arrays go through one ``np.take`` (into ``outs`` when
        given); a tensor on an accelerator is indexed there (not copied back)."""
        out = {}
        for hook in self.widths:
            a = self.arrays[hook]
            if isinstance(a, torch.Tensor) and a.device.type != "cpu":
                x = a.detach()[torch.from_numpy(idx).to(a.device)]
                out[hook] = x if x.dtype in _KEPT else x.to(torch.float32)
                continue
            src = as_numpy(a.detach()) if isinstance(a, torch.Tensor) else a
            dt = _host_dtype(a)
            if dt not in _KEPT:  # float64, ints...: one conversion after the gather
                out[hook] = torch.from_numpy(np.asarray(src[idx])).to(torch.float32)
                continue
            buf = outs[hook] if outs is not None else torch.empty(len(idx), src.shape[1], dtype=dt)
            take_rows(src, idx, as_numpy(buf))
            out[hook] = buf
        return out

    def _ring(self, reuse: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
        """``reuse`` output buffers per host array kept in its dtype (see ``batches``)."""
        ring = []
        for _ in range(reuse):
            slot = {}
            for hook in self.widths:  # the selected hooks
                a = self.arrays[hook]
                dt = _host_dtype(a)
                if dt not in _KEPT or (isinstance(a, torch.Tensor) and a.device.type != "cpu"):
                    return []
                slot[hook] = torch.empty(batch_size, self.widths[hook], dtype=dt)
            ring.append(slot)
        return ring

    def batches(self, batch_size: int, *, seed: int, start_batch: int = 0,
                reuse: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        N = self.n_tokens
        ring = self._ring(reuse, batch_size)
        t = start_batch * batch_size  # position in the concatenation of passes
        epoch, perm = t // N, self._perm(seed, t // N)
        for b in itertools.count():
            parts = []
            need = batch_size
            while need:
                if t // N != epoch:
                    epoch, perm = t // N, self._perm(seed, t // N)
                off = t % N
                take = min(need, N - off)
                parts.append(perm[off: off + take])
                t += take
                need -= take
            yield self._gather(np.concatenate(parts), ring[b % len(ring)] if ring else None)

    def sample(self, n: int, *, seed: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([seed, 7919])
        idx = np.sort(rng.choice(self.n_tokens, size=min(n, self.n_tokens), replace=False))
        return {h: x.float() for h, x in self._gather(idx).items()}


def load_array_file(path: str | Path, hook: str | None = None) -> dict[str, np.ndarray]:
    """``.npy`` (memory-mapped) or ``.safetensors`` (memory-mapped when numpy knows the dtype)
    holding (N, D) arrays. A safetensors file with several tensors maps each name to a hook."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"activations={str(path)!r}: no such file")
    if path.suffix == ".npy":
        return {hook or DEFAULT_HOOK: np.load(path, mmap_mode="r")}
    if path.suffix == ".safetensors":
        arrays = _mmap_safetensors(path)
        if len(arrays) == 1 and hook is not None:
            return {hook: next(iter(arrays.values()))}
        return arrays
    raise ValueError(f"activations={str(path)!r}: expected a .npy or .safetensors file or a cache folder")


_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def _mmap_safetensors(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:  # bf16 and friends: numpy cannot map them, load through torch
            from safetensors.torch import load_file

            out[name] = load_file(path)[name].float().numpy()
            continue
        start, _ = info["data_offsets"]
        out[name] = np.memmap(path, dtype=dtype, mode="r", offset=8 + header_len + start,
                              shape=tuple(info["shape"]))
    return out


# ---------------------------------------------------------------------------------------------
# Activation cache


class CacheSource(DataSource):
    """An :class:`~saelens_lite.cache.ActivationCache`, shuffled by ``cache.iter_batches``."""

    def __init__(self, cache):
        self.cache = cache
        self.n_tokens = int(cache.n_tokens)
        self.widths = dict(cache.widths)
        self.model_name = str(cache.meta.get("model") or "")  # harvest's HarvestConfig.model

    def select(self, hooks: list[str]) -> None:
        super().select(hooks)
        for h, w in self.widths.items():  # the manifest's width must match the shard files
            arr = self.cache.activations(h)
            if len(arr.paths) and np.load(arr.paths[0], mmap_mode="r").shape[1] != w:
                raise ValueError(f"hook {h!r}: the cache manifest says width {w}, its shard "
                                 f"{arr.paths[0]} holds another")

    def batches(self, batch_size: int, *, seed: int, start_batch: int = 0,
                reuse: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        hooks = self.hooks  # a list, so every batch is {hook: (B, D)} with the same rows
        # in the stored dtype: a 16-bit cache crosses to a GPU at half the bytes and is upcast
        # there, not by the CPU (which took longer than the GPU's whole training step)
        yield from self.cache.iter_batches(hooks, batch_size, shuffle=True, seed=seed, start_batch=start_batch,
                                           epochs=None, as_torch=True, dtype=None, reuse=reuse)

    def sample(self, n: int, *, seed: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([seed, 7919])
        idx = np.sort(rng.choice(self.n_tokens, size=min(n, self.n_tokens), replace=False))
        return {h: torch.from_numpy(np.asarray(self.cache.activations(h)[idx])).float() for h in self.hooks}


# ---------------------------------------------------------------------------------------------
# Streaming from a model


class StreamSource(DataSource):
    """Activations harvested on the fly: several hooks from one forward pass, token-shuffled in
    chunks of ``buffer_contexts`` contexts (see the module docstring for the resume contract)."""

    def __init__(self, model, hooks: list[str], *, dataset: str, text_column: str = "text",
                 context_size: int = 128, model_batch_size: int = 16, buffer_contexts: int = 256,
                 exclude: str = "bos", device: str | torch.device = "cpu"):
        from saelens_lite.lm.hooks import hook_widths, resolve_hooks
        from saelens_lite.lm.load import LoadedModel, load_model

        if not hooks:
            raise ValueError("hooks=[]: name at least one hook point to stream from a model")
        self.lm = model if isinstance(model, LoadedModel) else load_model(model, device=device)
        self.model_name = self.lm.name
        self.device = next(self.lm.model.parameters()).device
        self.points = resolve_hooks(self.lm.model, hooks)
        self.widths = dict(hook_widths(self.lm.model, self.points))
        self.dataset, self.text_column = dataset, text_column
        self.context_size, self.model_batch_size = context_size, model_batch_size
        self.buffer_contexts, self.exclude = buffer_contexts, exclude
        self.contexts_consumed = 0
        if next(self._contexts_once(), None) is None:
            raise ValueError(f"dataset={dataset!r}: the corpus holds no documents")

    def select(self, hooks: list[str]) -> None:
        super().select(hooks)
        self.points = [p for p in self.points if p.name in self.widths]

    def _contexts_once(self) -> Iterator[np.ndarray]:
        from saelens_lite.corpus.text import iter_documents, pack_contexts

        docs = iter_documents(self.dataset, text_column=self.text_column)
        return pack_contexts(docs, self.lm.tokenizer, self.context_size)

    def _cyclic_contexts(self) -> Iterator[np.ndarray]:
        while True:  # fresh passes over a finite corpus, in the same order each time
            yield from self._contexts_once()

    @torch.no_grad()
    def _chunk(self, contexts: list[np.ndarray], seed: int, c: int) -> dict[str, torch.Tensor]:
        from saelens_lite.lm.capture import capture_rows

        rows: dict[str, list[torch.Tensor]] = {h: [] for h in self.widths}
        for batch in capture_rows(self.lm, self.points, contexts, exclude=self.exclude,
                                  batch_size=self.model_batch_size):
            for h in rows:
                rows[h].append(batch.acts[h].float().cpu())
        n = sum(len(r) for r in rows[self.hooks[0]])
        perm = torch.from_numpy(np.random.default_rng([seed, c]).permutation(n))
        return {h: (torch.cat(r) if r else torch.zeros(0, self.widths[h]))[perm] for h, r in rows.items()}

    def _kept_count(self, contexts: list[np.ndarray]) -> int:
        from saelens_lite.lm.capture import count_kept

        return count_kept(contexts, self.lm.tokenizer, self.exclude)

    def batches(self, batch_size: int, *, seed: int, start_batch: int = 0,
                reuse: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        ctx = self._cyclic_contexts()
        skip = start_batch * batch_size  # tokens to skip; whole chunks are only re-tokenised
        c = 0
        self.contexts_consumed = 0
        while True:
            contexts = list(itertools.islice(ctx, self.buffer_contexts))
            self.contexts_consumed += len(contexts)
            n = self._kept_count(contexts)
            if skip >= n:
                skip -= n
                c += 1
                continue
            break
        pending: dict[str, torch.Tensor] = {h: x[skip:] for h, x in self._chunk(contexts, seed, c).items()}
        while True:
            while pending[self.hooks[0]].shape[0] < batch_size:
                c += 1
                contexts = list(itertools.islice(ctx, self.buffer_contexts))
                self.contexts_consumed += len(contexts)
                new = self._chunk(contexts, seed, c)
                pending = {h: torch.cat([pending[h], new[h]]) for h in pending}
            yield {h: x[:batch_size] for h, x in pending.items()}
            pending = {h: x[batch_size:] for h, x in pending.items()}

    def state(self) -> dict:
        return {"contexts_consumed": self.contexts_consumed}


# ---------------------------------------------------------------------------------------------


def open_source(data, config) -> DataSource:
    """Turn what the user passed to ``train`` into a :class:`DataSource`, restricted to
    ``config.hooks`` (all hooks of the data when empty) and the transcoders' targets, patterns
    expanded over the data's (or the model's) hook names (``training.targets.resolve``). Fails
    naming the missing hook."""
    hooks = data_hooks(config)
    if data is None:
        if config.activations is not None:
            data = config.activations
        elif config.model is not None:
            data = StreamSource(config.model, hooks, dataset=config.dataset,
                                text_column=config.text_column, context_size=config.context_size,
                                model_batch_size=config.model_batch_size,
                                buffer_contexts=config.buffer_contexts, device=resolve_device(config.device))
        else:
            raise ValueError("data: pass data to train(), or set activations= or model= in the config")
    if isinstance(data, DataSource):
        source = data
    elif isinstance(data, (torch.Tensor, np.ndarray)):
        source = ArraySource({hooks[0] if len(hooks) == 1 else DEFAULT_HOOK: data})
    elif isinstance(data, Mapping):
        check_row_counts(config, {h: len(a) for h, a in data.items()})
        source = ArraySource(data)
    elif isinstance(data, (str, Path)):
        path = Path(data)
        if path.is_dir():
            from saelens_lite.cache import ActivationCache

            source = CacheSource(ActivationCache(path))
        else:
            source = ArraySource(load_array_file(path, hooks[0] if len(hooks) == 1 else None))
    elif hasattr(data, "iter_batches") and hasattr(data, "hook_names"):
        source = CacheSource(data)
    else:
        raise TypeError(f"data: cannot train on a {type(data).__name__}; pass an ActivationCache, a path, "
                        "a tensor / array, a {hook: tensor} dict or a DataSource")
    pairs = resolve(config, source.hooks)
    check_widths(pairs, source.widths)
    source.select(pairs.data_hooks)
    return source


__all__ = ["DataSource", "ArraySource", "CacheSource", "StreamSource", "open_source", "load_array_file"]
