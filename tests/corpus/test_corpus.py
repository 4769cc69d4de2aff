"""corpus.py: documents from builtin/local/HF specs, and packing into BOS-prefixed contexts."""

import json
import re
from collections import Counter

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from saelens_lite import corpus
from saelens_lite.corpus.text import BUILTIN_CORPORA, CorpusError, iter_documents, pack_contexts

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Sparse autoencoders decompose activations into features.",
    "",  # empty documents add no tokens and no extra separator
    "Ünïcödé and emoji 🙂 survive byte-level BPE.",
    "short",
]


def _byte_bpe(**special) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few sentences; covers any text, built in milliseconds."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>", "[CLS]", "[SEP]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(DOCS * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


@pytest.fixture(scope="module")
def tokenizer():
    return _byte_bpe(bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _expected_stream(docs, tok, sep):
    stream = []
    for doc in docs:
        ids = tok.encode(doc, add_special_tokens=False)
        if ids:
            stream += ([sep] if stream and sep is not None else []) + ids
    return stream


def _many_docs(n=700):
    # > 256 docs forces several tokenizer batches inside pack_contexts
    return [f"Document number {i} says {'hello ' * (i % 7)}world." for i in range(n)]


# ------------------------------------------------------------------------ pack_contexts


@pytest.mark.parametrize("context_size", [2, 7, 16, 64])
def test_contexts_are_full_length_start_with_bos_and_hold_the_stream_once_in_order(
    tokenizer, context_size
):
    docs = _many_docs()
    ctxs = list(pack_contexts(docs, tokenizer, context_size))
    assert all(c.dtype == np.int64 and c.ndim == 1 for c in ctxs)
    assert all(len(c) == context_size for c in ctxs[:-1])
    assert 2 <= len(ctxs[-1]) <= context_size
    assert all(c[0] == tokenizer.bos_token_id for c in ctxs)
    stream = np.concatenate([c[1:] for c in ctxs]).tolist()
    assert stream == _expected_stream(docs, tokenizer, tokenizer.eos_token_id)


def test_without_prepend_bos_contexts_are_pure_stream(tokenizer):
    ctxs = list(pack_contexts(DOCS, tokenizer, 8, prepend_bos=False))
    assert all(len(c) == 8 for c in ctxs[:-1])
    stream = np.concatenate(ctxs).tolist()
    assert stream == _expected_stream(DOCS, tokenizer, tokenizer.eos_token_id)
    assert tokenizer.bos_token_id not in stream


def test_packing_is_deterministic(tokenizer):
    a = list(pack_contexts(_many_docs(), tokenizer, 32))
    b = list(pack_contexts(iter(_many_docs()), tokenizer, 32))
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_bert_style_tokenizer_uses_cls_prefix_and_sep_separator():
    tok = _byte_bpe(cls_token="[CLS]", sep_token="[SEP]", pad_token="<pad>")
    ctxs = list(pack_contexts(DOCS, tok, 10))
    assert all(c[0] == tok.cls_token_id for c in ctxs)
    stream = np.concatenate([c[1:] for c in ctxs]).tolist()
    assert stream == _expected_stream(DOCS, tok, tok.sep_token_id)


def test_tokenizer_without_specials_packs_plain_concatenation():
    tok = _byte_bpe()
    ctxs = list(pack_contexts(DOCS, tok, 10))
    assert all(len(c) == 10 for c in ctxs[:-1])
    assert np.concatenate(ctxs).tolist() == _expected_stream(DOCS, tok, None)


def test_context_too_small_for_bos_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="context_size=1"):
        list(pack_contexts(DOCS, tokenizer, 1))


def test_no_documents_gives_no_contexts(tokenizer):
    assert list(pack_contexts([], tokenizer, 8)) == []


# ------------------------------------------------------------------------ local files


def test_txt_jsonl_parquet_and_folder_are_read_in_sorted_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("alpha document\n", encoding="utf-8")
    with open(tmp_path / "b" / "c.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"body": "json one", "id": 1}) + "\n\n")
        f.write(json.dumps({"body": "json two", "id": 2}) + "\n")
    table = pa.table({"body": ["pq one", "", "pq two", None], "n": [1, 2, 3, 4]})
    pq.write_table(table, tmp_path / "b" / "d.parquet", row_group_size=2)
    (tmp_path / "notes.csv").write_text("ignored,by,folders\n")

    assert list(iter_documents(str(tmp_path / "a.txt"))) == ["alpha document\n"]
    jsonl = str(tmp_path / "b" / "c.jsonl")
    assert list(iter_documents(jsonl, text_column="body")) == ["json one", "json two"]
    parquet = str(tmp_path / "b" / "d.parquet")
    assert list(iter_documents(parquet, text_column="body")) == ["pq one", "pq two"]
    folder = list(iter_documents(str(tmp_path), text_column="body"))
    assert folder == ["alpha document\n", "json one", "json two", "pq one", "pq two"]


def test_large_txt_is_split_at_blank_lines_without_losing_text(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus.text, "TXT_CHUNK_CHARS", 200)
    paragraphs = [f"Paragraph {i} " + "word " * 12 + "\n" for i in range(10)]
    (tmp_path / "big.txt").write_text("\n".join(paragraphs), encoding="utf-8")
    docs = list(iter_documents(str(tmp_path / "big.txt")))
    assert 1 < len(docs) < len(paragraphs)
    assert "".join(docs).replace("\n\n", "\n") == "".join(paragraphs)


def test_missing_path_is_named(tmp_path):
    bad = str(tmp_path / "nope.jsonl")
    with pytest.raises(CorpusError, match=re.escape(bad)):
        list(iter_documents(bad))


def test_missing_column_names_column_and_choices(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "x.jsonl").write_text(json.dumps({"content": "hi"}) + "\n")
    with pytest.raises(CorpusError, match=r"'text'.*\['content'\]"):
        list(iter_documents(str(tmp_path / "x.jsonl")))
    pq.write_table(pa.table({"content": ["hi"]}), tmp_path / "x.parquet")
    with pytest.raises(CorpusError, match=r"x\.parquet.*'body'.*\['content'\]"):
        list(iter_documents(str(tmp_path / "x.parquet"), text_column="body"))


def test_unsupported_extension_and_empty_folder_are_rejected(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(CorpusError, match=r"'\.csv'.*\.jsonl"):
        list(iter_documents(str(tmp_path / "data.csv")))
    with pytest.raises(CorpusError, match="holds no"):
        list(iter_documents(str(tmp_path)))


def test_unknown_builtin_lists_valid_names():
    with pytest.raises(CorpusError, match="builtin:pydocs"):
        list(iter_documents("builtin:nope"))


# ------------------------------------------------------------------------ Hugging Face


def test_hf_spec_streams_with_config(monkeypatch):
    import datasets

    calls = []

    def fake_load(path, name=None, split=None, streaming=False):
        calls.append((path, name, split, streaming))
        return [{"text": "a"}, {"text": ""}, {"text": "b"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert list(iter_documents("owner/ds:cfg", split="validation")) == ["a", "b"]
    assert calls == [("owner/ds", "cfg", "validation", True)]


def test_unreachable_hf_dataset_suggests_offline_corpora(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CorpusError, match=r"could not reach.*'owner/ds'.*builtin:pydocs"):
        list(iter_documents("owner/ds"))


# ------------------------------------------------------------------------ builtin:pydocs


@pytest.fixture(scope="module")
def pydocs(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SAELENS_LITE_CACHE", str(tmp_path_factory.mktemp("cache")))
    corpus.build_pydocs.cache_clear()
    docs = list(iter_documents("builtin:pydocs"))
    yield docs
    mp.undo()


def test_builtin_registry_describes_pydocs():
    name, entry = next(iter(BUILTIN_CORPORA.items()))
    assert name == "builtin:pydocs" and entry.description and callable(entry.builder)


@pytest.mark.slow  # the pydocs fixture builds the corpus afresh in a child interpreter
def test_pydocs_is_large_enough(pydocs):
    assert sum(map(len, pydocs)) >= 1_300_000
    assert len(pydocs) > 1000 and len(set(pydocs)) == len(pydocs)


@pytest.mark.slow  # the pydocs fixture builds the corpus afresh in a child interpreter
def test_pydocs_is_mostly_english_prose(pydocs):
    text = "".join(pydocs)
    assert sum(c.isalpha() or c.isspace() for c in text) / len(text) > 0.8
    words = Counter(re.findall(r"[a-z]+", text.lower()))
    common = ("the", "of", "and", "to", "is", "a", "in", "if", "be", "this")
    assert sum(words[w] for w in common) / sum(words.values()) > 0.15


@pytest.mark.slow  # the pydocs fixture builds the corpus afresh in a child interpreter
def test_pydocs_is_deterministic_across_processes_and_cached(pydocs):
    fresh = corpus.pydocs.build_pydocs_uncached()  # a new child interpreter walks the stdlib again
    assert fresh == pydocs
    assert corpus.pydocs.pydocs_cache_path().exists()
    corpus.build_pydocs.cache_clear()  # next call reads the file cache
    assert list(iter_documents("builtin:pydocs")) == pydocs


@pytest.mark.slow
def test_pydocs_has_300k_smollm2_tokens(pydocs):
    from saelens_lite.lm.load import load_model

    tok = load_model("smollm2-135m").tokenizer
    n_tokens = sum(len(c) - 1 for c in pack_contexts(pydocs, tok, 1024))
    assert n_tokens >= 300_000
