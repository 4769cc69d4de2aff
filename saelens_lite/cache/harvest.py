"""Harvest hidden states from a model into an on-disk :class:`ActivationCache`.

text corpus -> packed contexts (``corpus``) -> one forward per batch with every hook captured
and the forward stopped after the deepest hooked module, the token rule applied
(``lm.capture.capture_rows``) -> kept token rows
-> resumable shard writer (``cache.CacheWriter``).

Resume contract: contexts are produced deterministically, rows are written in (context,
position) order, and the writer records the (context, position) of the last committed row.
Re-running the same command after a crash (even ``kill -9``) skips every context before that
one, drops the already committed rows of that context, and ends with exactly the rows an
uninterrupted run writes.

Sharded (``torchrun``, W processes): rank r harvests the contexts ``i % W == r`` among those
that hold the first ``tokens`` kept rows of the corpus (every rank re-tokenises the corpus
prefix to find that cut, without running the model on it), into ``out/rank_0000r/`` with the
same writer and the same resume contract. Rank 0 then writes the merged ``out/manifest.json``
(``cache.write_merged_manifest``: rank-major row order), so the rows are those of a
one-process harvest. A re-run must use the same W.

GPU path (``overlap``, on by default on CUDA): the kept rows are gathered and cast to the
storage dtype on the GPU, copied into reused pinned host buffers with ``non_blocking=True``, and
a writer thread waits for each batch's copy (a CUDA event) and appends it to the cache (the
disk writes) while the model runs the next batch. At most two batches are in flight and they
are appended in order, so the cache and the resume contract are those of the plain loop. On a
CPU the plain loop runs (nothing to overlap a host copy with).

Shapes: B contexts in a batch, S sequence length, D hook width, n kept tokens.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from saelens_lite.cache.format import MANIFEST
from saelens_lite.cache.reader import ActivationCache
from saelens_lite.cache.writer import CacheWriter, write_merged_manifest
from saelens_lite.corpus.text import iter_documents, pack_contexts
from saelens_lite.lm.capture import Context, capture_rows, count_kept
from saelens_lite.lm.hooks import hook_widths, resolve_hooks
from saelens_lite.lm.tokens import (
    DEFAULT_EXCLUDE,
    EXCLUDE_CHOICES,
    check_exclude,
)
from saelens_lite.util import distributed
from saelens_lite.util.validate import check_ints

if TYPE_CHECKING:  # lm.load imports transformers; the CLI imports HarvestConfig without it
    from saelens_lite.lm.load import LoadedModel

log = logging.getLogger(__name__)

HARVEST_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""Precisions of the harvested activations (HarvestConfig.dtype) and of the model (model_dtype)."""


@dataclass
class HarvestConfig:
    """What to harvest. Fields that change the cache's content are recorded in its manifest;
    resuming with different values is refused."""

    model: str = "smollm2-135m"
    """Model alias, Hugging Face id, local folder or ``.gguf`` path (see ``models.ALIASES``)."""
    hooks: list[str] = field(default_factory=lambda: ["blocks.14.hook_resid_post"])
    """Hook point names (``saelens-lite hooks --model M`` lists them); all from one forward."""
    dataset: str = "builtin:pydocs"
    """Corpus spec: ``builtin:NAME``, a local .txt/.jsonl/.parquet file or folder, or an HF id."""
    text_column: str = "text"
    """Column / key holding the text in jsonl, parquet and HF datasets."""
    split: str = "train"
    """Split of a Hugging Face dataset."""
    context_size: int = 128
    """Tokens per packed context (BOS included)."""
    tokens: int = 200_000
    """Total number of token rows to write (after exclusions)."""
    batch_size: int = 16
    """Contexts per forward pass; does not change the cache's content."""
    dtype: str = "float32"
    """Storage dtype of activations: float32, float16 or bfloat16."""
    model_dtype: str = "auto"
    """Compute dtype of the model: auto (float32 on CPU, bfloat16 on CUDA) or a dtype name."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto (CUDA when present)."""
    exclude: str = DEFAULT_EXCLUDE
    """Tokens left out, the one rule of ``saelens_lite.lm.tokens`` that the evaluation uses too:
    special (BOS/CLS, EOS, pad, SEP: document separators included), bos or none. Padding is
    always left out."""
    shard_tokens: int = 65_536
    """Rows per shard file; only the last shard is shorter."""

    def __post_init__(self) -> None:
        if not self.hooks:
            raise ValueError("hooks: give at least one hook point name")
        check_ints(self, ("context_size", "tokens", "batch_size", "shard_tokens"), minimum=1)
        if self.context_size < 2:
            raise ValueError(f"context_size={self.context_size}: must be at least 2")
        if self.dtype not in HARVEST_DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: choose one of {sorted(HARVEST_DTYPES)}")
        if self.model_dtype != "auto" and self.model_dtype not in HARVEST_DTYPES:
            raise ValueError(f"model_dtype={self.model_dtype!r}: choose auto or one of {sorted(HARVEST_DTYPES)}")
        check_exclude(self.exclude)


def _model_dtype(cfg: HarvestConfig, device: torch.device) -> torch.dtype:
    if cfg.model_dtype != "auto":
        return HARVEST_DTYPES[cfg.model_dtype]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _cache_meta(cfg: HarvestConfig, lm: LoadedModel) -> dict:
    """The settings that define the cache's content (compared on resume)."""
    tok = lm.tokenizer
    return {
        "model": cfg.model,
        "model_source": str(lm.source),
        "family": lm.family,
        "corpus": cfg.dataset,
        "text_column": cfg.text_column,
        "split": cfg.split,
        "tokenizer": {"name": getattr(tok, "name_or_path", ""), "vocab_size": len(tok),
                      "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id},
        "context_size": cfg.context_size,
        "tokens_requested": cfg.tokens,
        "exclude": cfg.exclude,
    }


def _rank_dir(rank: int) -> str:
    return f"rank_{rank:05d}"


def _check_layout(out: Path, world: int, overwrite: bool, is_main: bool) -> None:
    """Refuse to resume a cache written by another number of processes (with ``overwrite``,
    rank 0 instead removes the rank folders this run will not rewrite)."""
    ranks = sorted(p for p in out.glob("rank_*") if p.is_dir()) if out.is_dir() else []
    if overwrite:
        if is_main:
            for d in ranks[world if world > 1 else 0:]:
                shutil.rmtree(d)
            if world > 1:
                (out / MANIFEST).unlink(missing_ok=True)
        return
    found = None
    if ranks:
        found = len(ranks)
        if (ranks[0] / MANIFEST).is_file():
            meta = json.loads((ranks[0] / MANIFEST).read_text(encoding="utf-8"))["meta"]
            found = meta.get("shard", {}).get("world_size", found)
    elif world > 1 and (out / MANIFEST).is_file():
        found = 1
    if found is not None and found != world:
        how = f"{found} processes (torchrun)" if found > 1 else "one process (no torchrun)"
        raise ValueError(f"cache at {out} was harvested by {found} process(es) and this run has "
                         f"WORLD_SIZE={world}; resume it with {how}, pass overwrite=True, or choose "
                         "another folder")


class _Owned:
    """The contexts of this rank among those holding the first ``tokens`` kept rows of the
    corpus, as (context index, ids, rows of it to write). Counting kept rows needs only the
    tokens, so every rank finds the same cut without running the model."""

    def __init__(self, contexts, tokens: int, exclude: str, tokenizer, rank: int, world: int):
        self.contexts, self.tokens, self.exclude, self.tokenizer = contexts, tokens, exclude, tokenizer
        self.rank, self.world = rank, world
        self.total = 0  # kept rows of all ranks' contexts read so far

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, int]]:
        for i, ids in self.contexts:
            if self.total >= self.tokens:
                return
            n = count_kept([ids], self.tokenizer, self.exclude)
            limit = min(n, self.tokens - self.total)
            self.total += n
            if i % self.world == self.rank:
                yield i, ids, limit


def harvest(cfg: HarvestConfig, out: str | Path, *, model: LoadedModel | None = None,
            overwrite: bool = False, progress: bool = True, overlap: bool | None = None) -> ActivationCache:
    """Run ``cfg`` into the cache folder ``out`` (resuming it when it holds a partial run of the
    same settings) and return the opened cache. ``model`` reuses an already loaded model.
    Under ``torchrun`` each rank harvests its share (see the module docstring). ``overlap``:
    write batch i in a background thread while batch i+1 runs (None: on CUDA only); it never
    changes the cache's content."""
    from saelens_lite.lm.load import load_model

    dinfo, device = distributed.setup(cfg.device)
    out = Path(out)
    lm = model or load_model(cfg.model, device=device, dtype=_model_dtype(cfg, device))
    hook_points = resolve_hooks(lm.model, cfg.hooks)
    widths = hook_widths(lm.model, hook_points)
    # Pass the corpus spec through before creating any folder: a bad path fails with nothing written.
    docs = iter_documents(cfg.dataset, text_column=cfg.text_column, split=cfg.split)
    first_doc = next(docs, None)
    if first_doc is None:
        raise ValueError(f"dataset={cfg.dataset!r}: the corpus holds no documents")
    docs = itertools.chain([first_doc], docs)

    _check_layout(out, dinfo.world_size, overwrite, dinfo.is_main)
    distributed.barrier()
    meta = _cache_meta(cfg, lm)
    root = out
    if dinfo.distributed:
        meta["shard"] = {"rank": dinfo.rank, "world_size": dinfo.world_size}
        root = out / _rank_dir(dinfo.rank)
        if not overwrite and (out / MANIFEST).is_file() and ActivationCache(out, verify="none").complete:
            log.info("cache %s is already complete; nothing to do", out)
            return ActivationCache(out)
    writer = CacheWriter.open(root, meta=meta, hooks={h.name: widths[h.name] for h in hook_points},
                              dtype=cfg.dtype, shard_tokens=cfg.shard_tokens, overwrite=overwrite)
    if writer.complete and not dinfo.distributed:
        log.info("cache %s is already complete (%d tokens); nothing to do", out, writer.tokens_committed)
        return ActivationCache(out)
    if not writer.complete:
        if overlap is None:
            overlap = device.type == "cuda"
        _harvest_rank(cfg, writer, lm, hook_points, docs, device, dinfo, progress, overlap)
    if dinfo.distributed:
        distributed.barrier()
        if dinfo.is_main:
            m = write_merged_manifest(out, [_rank_dir(r) for r in range(dinfo.world_size)],
                                      extra_meta={"world_size": dinfo.world_size})
            log.info("merged %d ranks into %s: %d tokens", dinfo.world_size, out, m["n_tokens"])
        distributed.barrier()
    return ActivationCache(out)


def _resume_start(ctx: int, S: int, last_ctx: int, last_pos: int) -> int:
    """First position of context ``ctx`` not yet committed (S: none, it is all committed)."""
    return 0 if ctx > last_ctx else last_pos + 1 if ctx == last_ctx else S


def _harvest_rank(cfg: HarvestConfig, writer: CacheWriter, lm: LoadedModel, hook_points, docs,
                  device: torch.device, dinfo: distributed.DistInfo, progress: bool,
                  overlap: bool = False) -> None:
    """Write this rank's rows to ``writer`` (the whole cache for one process) and finalize it."""
    done = writer.tokens_committed
    last_ctx, last_pos = writer.last_committed if writer.last_committed is not None else (-1, -1)
    if done:
        log.info("resuming %s at %d tokens (after context %d, position %d)", writer.root, done,
                 last_ctx, last_pos)

    store_dtype = HARVEST_DTYPES[cfg.dtype]
    owned = _Owned(enumerate(pack_contexts(docs, lm.tokenizer, cfg.context_size)), cfg.tokens,
                   cfg.exclude, lm.tokenizer, dinfo.rank, dinfo.world_size)
    # Contexts committed before a crash are only re-tokenised, not re-run. Restart at the start
    # of the batch that held the last committed context, so every batch has the same members
    # (and so bit-identical activations) as in an uninterrupted run. Batches are formed from
    # this rank's contexts; rank r's j-th context is context j W + r.
    first = max((last_ctx - dinfo.rank) // dinfo.world_size, 0) // cfg.batch_size * cfg.batch_size
    contexts = itertools.islice(owned, first, None)
    bar = tqdm(total=-(-cfg.tokens // dinfo.world_size), initial=done, unit="tok", unit_scale=True,
               desc="harvest" if not dinfo.distributed else f"harvest rank {dinfo.rank}",
               disable=not progress, dynamic_ncols=True)
    bg = _OverlappedWriter(writer, device, cfg.batch_size * cfg.context_size) if overlap else None
    todo = (Context(ids, i, limit, _resume_start(i, len(ids), last_ctx, last_pos)) for i, ids, limit in contexts)
    try:
        for rows in capture_rows(lm, hook_points, todo, exclude=cfg.exclude, batch_size=cfg.batch_size):
            cols = (rows.token_ids_n, rows.context_n, rows.position_n)
            cast = {name: a.to(store_dtype) for name, a in rows.acts.items()}
            if bg is not None:
                bg.submit(cast, cols)
            else:
                writer.append({name: a.cpu() for name, a in cast.items()}, token_ids=cols[0],
                              context_idx=cols[1], position=cols[2])
            done += rows.n
            bar.update(rows.n)
        if bg is not None:
            bg.close()  # every submitted batch appended (or its error raised)
            bg = None
        if owned.total < cfg.tokens:
            log.warning("corpus %s ran out after %d of %d requested tokens", cfg.dataset, owned.total,
                        cfg.tokens)
        writer.finalize()
    finally:
        if bg is not None:  # an error in the main loop: still append what is in flight, in order
            bg.close(raise_errors=False)
        bar.close()


class _OverlappedWriter:
    """Appends batches to a CacheWriter in a background thread, in submission order.

    ``submit`` starts the device-to-host copy of a batch's rows into a free set of host buffers
    (pinned on CUDA, allocated once at ``max_rows`` and reused) and records a CUDA event; the
    thread waits for the event, then appends (``CacheWriter.append`` copies the rows out, so
    the buffers are free again). ``depth`` batches may wait; ``submit`` blocks beyond that."""

    def __init__(self, writer: CacheWriter, device: torch.device, max_rows: int, depth: int = 2):
        self.writer, self.max_rows = writer, max_rows
        self.cuda = device.type == "cuda"
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._free: queue.Queue = queue.Queue()
        for _ in range(depth + 1):  # depth waiting + one being appended
            self._free.put({})
        self._err: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="harvest-writer")
        self._thread.start()

    def submit(self, rows: dict[str, torch.Tensor], cols: tuple[np.ndarray, ...]) -> None:
        if self._err is not None:
            raise self._err
        bufs = self._free.get()
        host = {}
        for name, r in rows.items():
            buf = bufs.get(name)
            if buf is None or buf.shape[1:] != r.shape[1:] or buf.dtype != r.dtype or len(buf) < len(r):
                buf = bufs[name] = torch.empty((max(self.max_rows, len(r)), *r.shape[1:]),
                                               dtype=r.dtype, pin_memory=self.cuda)
            host[name] = buf[: len(r)].copy_(r, non_blocking=self.cuda)
        event = None
        if self.cuda:
            event = torch.cuda.Event()
            event.record()
        self._q.put((event, host, bufs, cols))

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            event, host, bufs, cols = item
            try:
                if event is not None:
                    event.synchronize()
                if self._err is None:
                    self.writer.append(host, token_ids=cols[0], context_idx=cols[1], position=cols[2])
            except BaseException as e:  # raised in the harvesting thread at its next call
                self._err = e
            finally:
                self._free.put(bufs)

    def close(self, raise_errors: bool = True) -> None:
        self._q.put(None)
        self._thread.join()
        if raise_errors and self._err is not None:
            raise self._err


__all__ = ["HarvestConfig", "harvest", "HARVEST_DTYPES", "EXCLUDE_CHOICES"]
