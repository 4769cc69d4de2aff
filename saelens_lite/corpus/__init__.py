"""Text corpora -> packed token contexts: readers for local files and Hugging Face datasets, the
built-in offline ``builtin:pydocs`` (``pydocs``), and BOS-prefixed packing (``text``)."""

from saelens_lite.corpus import pydocs
from saelens_lite.corpus.pydocs import build_pydocs
from saelens_lite.corpus.text import (
    BUILTIN_CORPORA,
    BUILTIN_PREFIX,
    BuiltinCorpus,
    CorpusError,
    iter_documents,
    pack_contexts,
)

__all__ = ["BUILTIN_CORPORA", "BUILTIN_PREFIX", "BuiltinCorpus", "CorpusError", "build_pydocs",
           "iter_documents", "pack_contexts", "pydocs"]
