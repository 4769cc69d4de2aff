"""Text corpora -> packed token contexts.

Two steps, both lazy and deterministic (the same spec gives the same contexts in the same order):

1. ``iter_documents(spec)`` yields documents (strings) from a built-in offline corpus
   (``builtin:pydocs``), a local file or folder (``.txt``, ``.jsonl``, ``.parquet``), or a
   Hugging Face dataset id (streamed, needs network).
2. ``pack_contexts(docs, tokenizer, S)`` tokenizes the documents, joins them into one token
   stream with a separator between documents and cuts the stream into contexts of ``S`` tokens,
   each starting with BOS (SAELens ``prepend_bos``; sparsify ``chunk_and_tokenize``).

The offline corpus ``builtin:pydocs`` is built in :mod:`saelens_lite.corpus.pydocs` and
registered here (``BUILTIN_CORPORA``).

Shape legend: S sequence (context) length.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from saelens_lite.corpus.pydocs import build_pydocs

BUILTIN_PREFIX = "builtin:"


class CorpusError(ValueError):
    """A corpus spec that cannot be read: bad path, missing column, unreachable dataset."""


# --------------------------------------------------------------------------------------------
# Built-in offline corpora (builtin:pydocs lives in pydocs.py)
# --------------------------------------------------------------------------------------------

class BuiltinCorpus(NamedTuple):
    builder: Callable[[], Iterable[str]]
    description: str


BUILTIN_CORPORA: dict[str, BuiltinCorpus] = {
    "builtin:pydocs": BuiltinCorpus(
        build_pydocs,
        "offline English prose shipped with Python: help() topics + stdlib docstrings "
        "(~2M chars, ~500k SmolLM2 tokens)",
    ),
}


# --------------------------------------------------------------------------------------------
# Local files
# --------------------------------------------------------------------------------------------

TXT_CHUNK_CHARS = 1 << 18
"""Large .txt files become documents of about this many characters, split at blank lines
(bounded memory); read per file."""


def _read_txt(path: Path, text_column: str) -> Iterator[str]:
    """One document per file; a file over 256k chars is split at the first blank line after
    every 256k chars, so memory stays bounded and a separator lands only every ~60k tokens."""
    buf: list[str] = []
    size = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if size >= TXT_CHUNK_CHARS and not line.strip():
                yield "".join(buf)
                buf, size = [], 0
                continue
            buf.append(line)
            size += len(line)
    yield "".join(buf)


def _missing_column(path: object, text_column: str, columns: Iterable[str]) -> CorpusError:
    return CorpusError(
        f"{path}: no text column {text_column!r}; available columns: {sorted(columns)} "
        "(choose one with text_column / --text-column)"
    )


def _read_jsonl(path: Path, text_column: str) -> Iterator[str]:
    """One JSON object per line; the document is ``obj[text_column]``. Blank lines skipped."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{lineno}: not valid JSON ({e})") from None
            if not isinstance(row, dict) or text_column not in row:
                keys = row.keys() if isinstance(row, dict) else []
                raise _missing_column(f"{path}:{lineno}", text_column, keys)
            yield _as_text(row[text_column], f"{path}:{lineno}")


def _read_parquet(path: Path, text_column: str) -> Iterator[str]:
    """Column ``text_column``, read in record batches (bounded memory)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if text_column not in pf.schema_arrow.names:
        raise _missing_column(path, text_column, pf.schema_arrow.names)
    for batch in pf.iter_batches(batch_size=1024, columns=[text_column]):
        for text in batch.column(0).to_pylist():
            yield _as_text(text, path)


def _as_text(value: object, where: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CorpusError(f"{where}: text column holds {type(value).__name__}, expected str")
    return value


_READERS: dict[str, Callable[[Path, str], Iterator[str]]] = {
    ".txt": _read_txt,
    ".jsonl": _read_jsonl,
    ".parquet": _read_parquet,
}


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix.lower() not in _READERS:
            raise CorpusError(
                f"{path}: unsupported file type {path.suffix!r}; supported: {sorted(_READERS)}"
            )
        return [path]
    files = sorted(
        (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _READERS),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise CorpusError(f"{path}: folder holds no {'/'.join(sorted(_READERS))} files")
    return files


_PATHLIKE_SUFFIXES = (*_READERS, ".json", ".csv", ".tsv", ".md", ".gz", ".zst")


def _looks_like_path(spec: str) -> bool:
    """A spec that is clearly meant as a path gets 'no such file', not a dataset-hub lookup."""
    suffix = Path(spec).suffix.lower()
    return spec.startswith(("/", "./", "../", "~")) or suffix in _PATHLIKE_SUFFIXES


# --------------------------------------------------------------------------------------------
# Hugging Face datasets (online)
# --------------------------------------------------------------------------------------------


def _iter_hf(spec: str, text_column: str, split: str) -> Iterator[str]:
    """``"id"`` or ``"id:config"`` (e.g. ``"wikitext:wikitext-103-raw-v1"``), streamed."""
    import datasets

    dataset_id, _, config = spec.partition(":")
    unreachable = (
        f"could not reach Hugging Face dataset {dataset_id!r} (config {config or None!r}, "
        f"split {split!r}). Offline? Use builtin:pydocs or a local .txt/.jsonl/.parquet file or "
        "folder instead."
    )
    try:
        ds = datasets.load_dataset(dataset_id, name=config or None, split=split, streaming=True)
        rows = iter(ds)
    except Exception as e:  # noqa: BLE001 - network, auth, missing-dataset errors all differ
        raise CorpusError(f"{unreachable} Cause: {type(e).__name__}: {e}") from e
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - streaming fetches shards lazily
            raise CorpusError(f"{unreachable} Cause: {type(e).__name__}: {e}") from e
        if text_column not in row:
            raise _missing_column(spec, text_column, row.keys())
        yield _as_text(row[text_column], spec)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def iter_documents(spec: str, *, text_column: str = "text", split: str = "train") -> Iterator[str]:
    """Yield the documents of a corpus, in a deterministic order; empty documents are skipped.

    spec:
      - ``builtin:<name>``: an offline corpus from `BUILTIN_CORPORA` (``builtin:pydocs``).
      - a local path: ``.txt`` (one document per file, very large files split at paragraph
        breaks, see `_read_txt`), ``.jsonl`` (``text_column`` key of each line's object),
        ``.parquet`` (``text_column`` column); a folder reads every such file below it, in
        sorted relative-path order. ``text_column`` is ignored for ``.txt``.
      - anything else: a Hugging Face dataset ``id`` or ``id:config``, streamed with
        ``datasets.load_dataset(id, name=config, split=split, streaming=True)`` (needs network).

    Raises CorpusError (a ValueError) naming the bad spec, path or column and the valid choices.
    """
    if spec.startswith(BUILTIN_PREFIX):
        if spec not in BUILTIN_CORPORA:
            raise CorpusError(f"unknown builtin corpus {spec!r}; valid: {sorted(BUILTIN_CORPORA)}")
        docs: Iterable[str] = BUILTIN_CORPORA[spec].builder()
    else:
        path = Path(spec).expanduser()
        if path.exists():
            files = _local_files(path)
            docs = (d for f in files for d in _READERS[f.suffix.lower()](f, text_column))
        elif _looks_like_path(spec):
            raise CorpusError(
                f"{spec}: no such file or folder (expected a .txt/.jsonl/.parquet file, a folder "
                f"of them, {' / '.join(BUILTIN_CORPORA)}, or a Hugging Face dataset id)"
            )
        else:
            docs = _iter_hf(spec, text_column, split)
    for doc in docs:
        if doc and not doc.isspace():
            yield doc


def special_id(tokenizer, *names: str) -> int | None:
    """The first of ``{name}_token_id`` the tokenizer has, e.g. ``("bos", "cls")``: the id put
    before each context (BOS, else BERT's CLS), or None."""
    for name in names:
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            return int(token_id)
    return None


def _batches(docs: Iterable[str], max_chars: int = 1 << 20, max_docs: int = 256):
    batch: list[str] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= max_chars or len(batch) >= max_docs:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def pack_contexts(
    docs: Iterable[str], tokenizer, context_size: int, *, prepend_bos: bool = True
) -> Iterator[np.ndarray]:
    """Pack documents into token contexts of exactly ``context_size`` tokens (int64, (S,)).

    The documents are tokenized without special tokens (in batches, through the fast tokenizer)
    and concatenated into one stream with a separator between documents: ``eos_token_id``, else
    ``sep_token_id``, else nothing. This is sparsify's ``chunk_and_tokenize`` (texts joined by
    EOS, then chunked) and SAELens' ``concat_and_batch_sequences`` (``sequence_separator_token``).
    Documents are never padded and may span contexts, so no token is wasted and every position
    sees real text.

    With ``prepend_bos`` each context is ``[BOS] + the next S-1 stream tokens`` (SAELens
    ``prepend_bos`` / ``begin_batch_token_id``): models expect a BOS at position 0, and its
    attention-sink activations are skipped downstream rather than missing. BOS is
    ``bos_token_id``, else ``cls_token_id`` (BERT-style), else no prefix (then S stream tokens).

    The last context is yielded shorter when the stream runs out (callers pad it). The stream
    is consumed lazily in batches of ~1M characters, and the output does not depend on the
    batching.
    """
    bos = special_id(tokenizer, "bos", "cls") if prepend_bos else None
    sep = special_id(tokenizer, "eos", "sep")
    prefix = np.array([] if bos is None else [bos], dtype=np.int64)
    body = context_size - len(prefix)
    if context_size < 1 or body < 1:
        raise ValueError(
            f"context_size={context_size} leaves no room for text"
            f"{' after BOS' if len(prefix) else ''}; use context_size >= {len(prefix) + 1}"
        )
    sep_arr = np.array([] if sep is None else [sep], dtype=np.int64)
    rest = np.zeros(0, dtype=np.int64)  # stream tokens not yet emitted
    first = True
    for batch in _batches(docs):
        ids = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        pieces = [rest]
        for doc_ids in ids:
            if not doc_ids:
                continue
            if not first:
                pieces.append(sep_arr)
            pieces.append(np.asarray(doc_ids, dtype=np.int64))
            first = False
        stream = np.concatenate(pieces)
        n_full = len(stream) // body
        for i in range(n_full):
            yield np.concatenate([prefix, stream[i * body : (i + 1) * body]])
        rest = stream[n_full * body :]
    if len(rest):
        yield np.concatenate([prefix, rest])
