"""Activations of one hook on a dataset's texts, pooled per text, cached on disk.

Each text is run alone (padded on the right in batches, so a causal model's kept positions see
no padding), tokenized like the activation caches that SAEs train on: ``[BOS] + text tokens``
(``saelens_lite.corpus.text.pack_contexts``: BOS is ``bos_token_id``, else ``cls_token_id``).
A text longer than ``max_tokens`` keeps its *last* ``max_tokens - 1`` tokens, so the last token,
the one the probes read, is the text's own last token. The positions kept are those of the one
token rule (:func:`saelens_lite.lm.tokens.written_mask`: BOS, EOS, pad and SEP left out); a text
with no kept token keeps its attended positions. The model runs through the one capture loop,
:func:`saelens_lite.lm.capture.capture_rows` (``empty="attended"``), one length-sorted batch at a
time.

Two poolings (Kantamneni et al. 2025 probe the last token; SAEBench's sparse probing averages):

* ``last``: the activation at the last kept position, x_n = a_{n, t_n}.
* ``mean``: the mean over the kept positions, x_n = mean_t a_{n,t}. The per-token rows are kept
  (``TokenRows``), because an SAE probe on mean pooling averages the SAE's *latents* over the
  tokens, mean_t f(a_{n,t}) (SAEBench ``get_sae_meaned_activations``), which is not f of the
  mean activation.

Cache: ``{cache_dir}/{model}/{hook}/{dataset}/{pooling}/{key}.{rows,offsets}.npy`` plus
``{key}.json``, each written atomically (``saelens_lite.util.atomic``) with the JSON last, so a
run killed mid-write leaves no file that a later run would read; ``key`` hashes the rows chosen,
their texts, ``max_tokens`` and the token rule.

Shape legend: N texts, T kept token rows of all texts together, S sequence, D hook width,
F latents.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from saelens_lite.corpus.text import special_id
from saelens_lite.lm.capture import Context, capture_rows
from saelens_lite.lm.tokens import DEFAULT_EXCLUDE
from saelens_lite.util.atomic import write_json, write_npy

log = logging.getLogger(__name__)

POOLINGS = ("last", "mean")


@dataclass
class TokenRows:
    """The kept token rows of N texts, concatenated: text n is ``rows_TD[offsets[n]:offsets[n+1]]``.
    For ``last`` pooling only each text's last row is stored (offsets 0, 1, ..., N)."""

    rows_TD: np.ndarray
    """(T, D) float32."""
    offsets: np.ndarray
    """(N + 1,) int64, non-decreasing, offsets[0] = 0, offsets[N] = T; every text has a row."""

    @property
    def n(self) -> int:
        return len(self.offsets) - 1

    def select(self, idx_M: np.ndarray) -> TokenRows:
        """The rows of texts ``idx_M`` (in that order)."""
        lo, hi = self.offsets[idx_M], self.offsets[np.asarray(idx_M) + 1]
        parts = [self.rows_TD[a:b] for a, b in zip(lo, hi)]
        return TokenRows(np.concatenate(parts) if parts else self.rows_TD[:0],
                         np.concatenate([[0], np.cumsum(hi - lo)]).astype(np.int64))


def pool(x_TF: np.ndarray | torch.Tensor, offsets: np.ndarray, how: str):
    """(N, F): per text, its last row (``last``) or the mean of its rows (``mean``)."""
    if how == "last":
        return x_TF[offsets[1:] - 1]
    if how != "mean":
        raise ValueError(f"pooling={how!r}: choose one of {list(POOLINGS)}")
    lengths = np.diff(offsets)
    if isinstance(x_TF, torch.Tensor):
        seg_T = torch.repeat_interleave(torch.arange(len(lengths)), torch.as_tensor(lengths))
        out = torch.zeros(len(lengths), x_TF.shape[1], dtype=x_TF.dtype, device=x_TF.device)
        out.index_add_(0, seg_T.to(x_TF.device), x_TF)
        return out / torch.as_tensor(lengths, dtype=x_TF.dtype, device=x_TF.device)[:, None]
    return np.add.reduceat(x_TF, offsets[:-1], axis=0) / lengths[:, None]


def tokenize(tokenizer, texts: list[str], max_tokens: int) -> list[list[int]]:
    """``[BOS] + the last max_tokens - 1 tokens`` of each text (or the last max_tokens, no BOS)."""
    bos = special_id(tokenizer, "bos", "cls")  # what pack_contexts puts first
    body = max_tokens - (bos is not None)
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return [([bos] if bos is not None else []) + list(t[-body:] if t else []) for t in ids]


def length_batches(lengths: list[int], batch_tokens: int) -> list[np.ndarray]:
    """Indices grouped by length (shortest first), each group padding to at most
    ``batch_tokens`` tokens (a longer text goes alone)."""
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * lengths[order[stop]] <= batch_tokens:
            stop += 1
        batches.append(order[start:stop])
        start = stop
    return batches


@torch.no_grad()
def harvest_rows(lm, hook: str, texts: list[str], *, poolings: tuple[str, ...], max_tokens: int = 256,
                 batch_tokens: int = 4096, exclude: str = DEFAULT_EXCLUDE,
                 progress: bool = True) -> dict[str, TokenRows]:
    """{pooling: TokenRows} of ``hook`` over ``texts``, from one forward per batch. Texts are
    batched by length (about ``batch_tokens`` padded tokens per forward) and put back in order."""
    from tqdm.auto import tqdm

    ids = tokenize(lm.tokenizer, texts, max_tokens)
    per_text: list[np.ndarray] = [np.zeros(0)] * len(texts)
    bar = tqdm(total=len(texts), desc=f"probing: {hook}", unit="text", disable=not progress, dynamic_ncols=True)
    for batch in length_batches([len(t) for t in ids], batch_tokens):
        contexts = [Context(np.asarray(ids[i], dtype=np.int64), int(i)) for i in batch]
        for rows in capture_rows(lm, [hook], contexts, exclude=exclude, batch_size=len(batch), empty="attended"):
            act_nD = rows.acts[hook].float().cpu().numpy()
            cuts = np.flatnonzero(np.diff(rows.context_n)) + 1  # rows come in (context, position) order
            for part, i in zip(np.split(act_nD, cuts), rows.context_n[np.concatenate([[0], cuts])]):
                per_text[i] = part
        bar.update(len(batch))
    bar.close()
    lengths = np.array([len(r) for r in per_text], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    rows = TokenRows(np.concatenate(per_text).astype(np.float32), offsets)
    out = {}
    for how in poolings:
        out[how] = rows if how == "mean" else TokenRows(pool(rows.rows_TD, offsets, "last"),
                                                        np.arange(len(texts) + 1, dtype=np.int64))
    return out


def slug(text: str) -> str:
    """A file-name-safe form of a model name, hook or dataset name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def cache_key(idx_N: np.ndarray, max_tokens: int, exclude: str, texts: list[str] | None = None) -> str:
    """Hash of the rows chosen, ``max_tokens``, the token rule and (when given) the chosen texts
    themselves, so an edited dataset file is harvested again instead of read stale."""
    h = hashlib.sha1(np.ascontiguousarray(idx_N, dtype=np.int64).tobytes())
    h.update(f"{max_tokens}|{exclude}".encode())
    for t in texts or ():
        h.update(hashlib.sha1(t.encode("utf-8", "surrogatepass")).digest())
    return h.hexdigest()[:16]


def _paths(cache_dir: Path, model: str, hook: str, dataset: str, how: str, key: str) -> dict[str, Path]:
    folder = Path(cache_dir) / slug(model) / slug(hook) / slug(dataset) / how
    return {name: folder / f"{key}.{name}" for name in ("rows.npy", "offsets.npy", "json")}


def read_cached(cache_dir, model, hook, dataset, how, key) -> TokenRows | None:
    """The cached rows, or None when the entry is missing (or was not finished)."""
    p = _paths(Path(cache_dir), model, hook, dataset, how, key)
    if not p["json"].exists():
        return None
    meta = json.loads(p["json"].read_text())
    rows = TokenRows(np.load(p["rows.npy"]), np.load(p["offsets.npy"]))
    if rows.n != meta["n"] or len(rows.rows_TD) != rows.offsets[-1]:
        log.warning("ignoring a damaged activation cache entry %s", p["json"])
        return None
    return rows


def write_cached(cache_dir, model, hook, dataset, how, key, rows: TokenRows, meta: dict) -> None:
    p = _paths(Path(cache_dir), model, hook, dataset, how, key)
    p["json"].parent.mkdir(parents=True, exist_ok=True)
    write_npy(p["rows.npy"], rows.rows_TD)
    write_npy(p["offsets.npy"], rows.offsets)
    write_json(p["json"], meta | {"n": rows.n, "rows": int(len(rows.rows_TD)), "pooling": how})


def pooled_rows(get_lm, hook: str, dataset: str, texts: list[str], idx_N: np.ndarray, *,
                poolings: tuple[str, ...], cache_dir, model_name: str, max_tokens: int,
                batch_tokens: int = 4096, exclude: str = DEFAULT_EXCLUDE,
                progress: bool = True) -> dict[str, TokenRows]:
    """{pooling: TokenRows of texts ``idx_N``}, read from the cache or harvested (one forward
    for every missing pooling) and cached. ``get_lm()`` loads the model only when needed."""
    key = cache_key(idx_N, max_tokens, exclude, [texts[i] for i in idx_N])
    out = {how: read_cached(cache_dir, model_name, hook, dataset, how, key) for how in poolings}
    missing = tuple(how for how, rows in out.items() if rows is None)
    if missing:
        got = harvest_rows(get_lm(), hook, [texts[i] for i in idx_N], poolings=missing, max_tokens=max_tokens,
                           batch_tokens=batch_tokens, exclude=exclude, progress=progress)
        meta = {"model": model_name, "hook": hook, "dataset": dataset, "max_tokens": max_tokens,
                "exclude": exclude, "indices_sha1": key}
        for how in missing:
            write_cached(cache_dir, model_name, hook, dataset, how, key, got[how], meta)
            out[how] = got[how]
    return out  # type: ignore[return-value]


__all__ = ["POOLINGS", "TokenRows", "pool", "tokenize", "harvest_rows", "pooled_rows", "read_cached",
           "write_cached", "cache_key", "slug"]
