"""Chat models that explain and judge: a local transformers model or an OpenAI-compatible server.

Both give ``complete(messages) -> str`` (greedy), ``complete_many(list of messages) -> list[str]``
(the same answers, batched: left-padded generation for a local model, concurrent requests for a
server) and ``p_yes(list of messages) -> list[float]``,
the judge's probability of answering "yes" rather than "no":
``P(yes) = sum_{t in YES} p(t) / (sum_{t in YES} p(t) + sum_{t in NO} p(t))`` over the first
answer token, YES / NO being the single-token spellings of yes / no ("yes", " Yes", ...).

A local judge computes that from the last prompt position's logits only (``logits_to_keep``,
where the model's forward takes it: the LM head over every position is ~20% of SmolLM2's work),
and scores prompts that share a token-id prefix (the detection / fuzzing scorers' ~20 prompts per
explanation share everything up to the text window) by *prefix caching*: with causal attention
the keys and values of positions ``< P`` depend on tokens ``< P`` only, so for prompts
``x_i = p + s_i`` (``p`` the common prefix of their token ids, ``|p| = P``)

    logits(x_i)[-1] = f(s_i | KV(p)),   positions P .. P + |s_i| - 1,

one batch-1 forward gives ``KV(p)``, and the suffixes run batched against a copy of it repeated
to the batch (right-padded: a pad after the last real token is never attended by a real token,
so each row is read at its own last real token). The same identity is behind vLLM's automatic
prefix caching, SGLang's RadixAttention (Zheng et al. 2023, arXiv:2312.07104) and the
"prefill a cache" recipe of transformers' KV-cache guide (a prompt's cache, copied per use). The
prefix is found on token ids, never text, so a tokenizer boundary cannot change an answer; the
answers equal the plain padded forward's up to float rounding (tests/explain/test_explain_judge.py).
Which consecutive prompts share one cached prefix: :func:`prefix_groups`.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch

from saelens_lite.explain.prompts import Messages

log = logging.getLogger(__name__)

YES_WORDS = ("yes", "Yes", " yes", " Yes", "YES")
NO_WORDS = ("no", "No", " no", " No", "NO")


class EndpointError(ConnectionError):
    """An OpenAI-compatible endpoint could not be reached or answered badly (an OSError, so the
    CLI reports it in one line)."""


class HFChat:
    """A chat model that ``saelens_lite.lm.load.load_model`` loads (alias, folder or HF id), or
    ``lm``, an already loaded one; ``yes_words`` / ``no_words``: the answers P(yes) reads."""

    def __init__(self, name: str, *, max_new_tokens: int = 48, batch_size: int = 8, lm=None,
                 yes_words: tuple[str, ...] = YES_WORDS, no_words: tuple[str, ...] = NO_WORDS):
        from saelens_lite.lm.load import load_model

        self.name, self.max_new_tokens, self.batch_size = name, max_new_tokens, batch_size
        self.lm = load_model(name) if lm is None else lm
        tok = self.lm.tokenizer
        self.yes_ids = _single_token_ids(tok, yes_words)
        self.no_ids = _single_token_ids(tok, no_words)
        if not self.yes_ids or not self.no_ids:
            raise ValueError(f"hf:{name}: its tokenizer has no single token for yes/no, so it "
                             "cannot judge; choose another model")
        self._forward_params = set(inspect.signature(self.lm.model.forward).parameters)
        self._no_prefix_cache = False  # set once the model returned a cache p_yes cannot reuse

    def _ids(self, messages: Messages, prefix: str = "") -> list[int]:
        tok = self.lm.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:  # a base model: a plain transcript ending where the answer goes
            text = "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant:"
        return tok(text + prefix, add_special_tokens=False).input_ids

    @torch.no_grad()
    def complete(self, messages: Messages, *, prefix: str = "") -> str:
        """Greedy answer; ``prefix`` is written as the start of the answer (and returned with
        it), which keeps a small model to the asked format."""
        tok = self.lm.tokenizer
        ids = torch.tensor([self._ids(messages, prefix)])
        out = self.lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=self.max_new_tokens, pad_token_id=tok.pad_token_id)
        return prefix + tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    @property
    def _pad_id(self) -> int:
        tok = self.lm.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def _left_padded(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left padding, so every sequence's next token is the last position; the model counts
        positions from each sequence's own start (from the mask), so a sequence's answer does not
        depend on its batch-mates (up to float rounding)."""
        L = max(map(len, seqs))
        ids_BL = torch.tensor([[self._pad_id] * (L - len(s)) + s for s in seqs])
        mask_BL = torch.tensor([[0] * (L - len(s)) + [1] * len(s) for s in seqs])
        return ids_BL, mask_BL

    def _by_length(self, seqs: list[list[int]]):
        """Batches of ``batch_size`` indices, similar lengths together (less padding)."""
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        return [order[a:a + self.batch_size] for a in range(0, len(order), self.batch_size)]

    @torch.no_grad()
    def complete_many(self, batch: list[Messages], *, prefix: str = "") -> list[str]:
        """``[complete(m, prefix=prefix) for m in batch]``, generated ``batch_size`` at a time."""
        tok = self.lm.tokenizer
        seqs = [self._ids(m, prefix) for m in batch]
        out: list[str] = [""] * len(seqs)
        for idx in self._by_length(seqs):
            ids_BL, mask_BL = self._left_padded([seqs[i] for i in idx])
            gen = self.lm.model.generate(ids_BL, attention_mask=mask_BL, do_sample=False,
                                         max_new_tokens=self.max_new_tokens, pad_token_id=self._pad_id)
            for row, i in enumerate(idx):
                out[i] = prefix + tok.decode(gen[row, ids_BL.shape[1]:], skip_special_tokens=True)
        return out

    @torch.no_grad()
    def p_yes(self, batch: list[Messages], *, fast: bool = True) -> list[float]:
        """P(yes) per chat. ``fast=False`` is the plain computation (length-sorted left-padded
        batches, logits at every position), kept as the reference the fast path is tested
        against: the same answers up to float rounding."""
        seqs = [self._ids(m) for m in batch]
        out: list[float] = [0.0] * len(seqs)
        rest: list[int] = []
        groups = prefix_groups(seqs) if fast and self._cache_kw else [(0, len(seqs), 0)]
        for a, b, P in groups:
            if not (P and self._p_yes_prefixed(seqs, list(range(a, b)), P, out)):
                rest += range(a, b)
        for idx in self._by_length([seqs[i] for i in rest]):
            idx = [rest[j] for j in idx]
            ids_BL, mask_BL = self._left_padded([seqs[i] for i in idx])
            pos_BL = (mask_BL.cumsum(1) - 1).clamp_min(0)
            keep = {"logits_to_keep": 1} if fast and self._keeps_logits else {}
            logits_BV = self.lm.model(input_ids=ids_BL, attention_mask=mask_BL,
                                      position_ids=pos_BL, **keep).logits[:, -1]
            self._put(out, idx, logits_BV)
        return out

    def _put(self, out: list[float], idx: list[int], logits_BV: torch.Tensor) -> None:
        logp_BV = logits_BV.float().log_softmax(-1)
        ly = logp_BV[:, self.yes_ids].logsumexp(-1)
        ln = logp_BV[:, self.no_ids].logsumexp(-1)
        for i, p in zip(idx, torch.sigmoid(ly - ln).tolist()):
            out[i] = p

    @property
    def _keeps_logits(self) -> bool:
        return "logits_to_keep" in self._forward_params

    @property
    def _cache_kw(self) -> str | None:
        """The forward's cache argument (``cache`` in transformers 5, ``past_key_values``
        before), or None: no prefix caching. Also None once a model returned a cache that is not
        a plain DynamicCache (sliding windows, recurrent state): that model takes the plain path."""
        if self._no_prefix_cache:
            return None
        return next((k for k in ("cache", "past_key_values") if k in self._forward_params), None)

    def _p_yes_prefixed(self, seqs: list[list[int]], idx: list[int], P: int,
                        out: list[float]) -> bool:
        """Chats ``idx``, which share their first ``P`` token ids (each has more), scored against
        one cached prefix; False (nothing scored) when the model's cache cannot be reused."""
        model, kw = self.lm.model, self._cache_kw
        keep = {"logits_to_keep": 1} if self._keeps_logits else {}
        res = model(input_ids=torch.tensor([seqs[idx[0]][:P]]), use_cache=True, **{kw: None}, **keep)
        kv = _plain_kv(res["cache"] if "cache" in res else res.get("past_key_values"))
        if kv is None:
            self._no_prefix_cache = True
            return False
        from transformers import DynamicCache

        for batch in self._by_length([seqs[i] for i in idx]):
            rows = [idx[j] for j in batch]
            B, sufs = len(rows), [seqs[i][P:] for i in rows]
            L = max(map(len, sufs))
            ids_BL = torch.tensor([s + [self._pad_id] * (L - len(s)) for s in sufs])  # right padding
            mask_BL = torch.tensor([[1] * (P + len(s)) + [0] * (L - len(s)) for s in sufs])
            pos_BL = (P + torch.arange(L)).expand(B, L)
            # A fresh cache per batch: DynamicLayer.update concatenates into new tensors, so the
            # prefix's own keys / values are never written.
            cache = DynamicCache([(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in kv])
            last_B = torch.tensor([len(s) - 1 for s in sufs])
            cols = last_B.unique()  # sorted; the LM head runs on these positions only
            keep = {"logits_to_keep": cols} if self._keeps_logits else {}
            logits = model(input_ids=ids_BL, attention_mask=mask_BL, position_ids=pos_BL,
                           use_cache=True, **{kw: cache}, **keep).logits
            col_B = torch.searchsorted(cols, last_B) if keep else last_B
            self._put(out, rows, logits[torch.arange(B), col_B])
        return True


def prefix_groups(seqs: list[list[int]], overhead: int = 64,
                  lookback: int = 256) -> list[tuple[int, int, int]]:
    """Split ``seqs`` (in their order) into runs ``(a, b, P)``: ``seqs[a:b]`` share their first
    ``P`` token ids, ``P`` the run's longest common prefix cut so that every member keeps at least
    one token of its own (``P = 0``: no shared prefix, the plain path). The runs maximise the
    tokens saved, ``sum over runs with P > 0 of (b - a - 1) * P - overhead``, by dynamic
    programming over the split points (runs of up to ``lookback``); ``overhead`` (in tokens)
    stands for the extra batch-1 forward and the cache copies, so a small run or a short common
    prefix (a system prompt shared by everything) is not worth a cache. With the scorers' prompts
    (one explanation on ~20 windows) the runs are the explanations."""
    n = len(seqs)
    lcp = [0] + [len(os.path.commonprefix([seqs[j - 1], seqs[j]])) for j in range(1, n)]  # seqs[j-1], seqs[j]
    best = [0] * (n + 1)
    split: list[tuple[int, int]] = [(0, 0)] * (n + 1)  # (start of the last run, its P)
    for b in range(1, n + 1):
        best[b], split[b] = best[b - 1], (b - 1, 0)
        P = len(seqs[b - 1]) - 1
        for a in range(b - 2, max(-1, b - 1 - lookback), -1):  # the run seqs[a:b], 2 or more
            P = min(P, lcp[a + 1], len(seqs[a]) - 1)
            if P <= 0:
                break
            gain = best[a] + (b - a - 1) * P - overhead
            if gain > best[b]:
                best[b], split[b] = gain, (a, P)
    runs, b = [], n
    while b > 0:
        a, P = split[b]
        runs.append((a, b, P))
        b = a
    return runs[::-1]


def _plain_kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Each layer's (keys, values) of a DynamicCache of plain full-attention layers, else None."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError:
        return None
    if type(cache) is not DynamicCache or not all(type(la) is DynamicLayer for la in cache.layers):
        return None
    return [(la.keys, la.values) for la in cache.layers]


def _single_token_ids(tok, words) -> list[int]:
    ids = {tuple(tok(w, add_special_tokens=False).input_ids) for w in words}
    return sorted({i[0] for i in ids if len(i) == 1})


class OpenAIChat:
    """An OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama, ...). ``url`` is the
    API root, e.g. ``http://localhost:8000/v1``; requests go to ``url/chat/completions``. A failed
    request (connection error, timeout, HTTP 429 or 5xx) is retried ``retries`` times with
    exponential back-off; the key, if any, comes from ``$OPENAI_API_KEY``. ``complete_many`` and
    ``p_yes`` keep up to ``concurrency`` requests in flight."""

    def __init__(self, url: str, model: str, *, timeout: float = 60.0, retries: int = 3,
                 max_tokens: int = 64, concurrency: int = 4):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"openai:{url}: the URL must start with http:// or https://")
        self.url = url.rstrip("/").removesuffix("/chat/completions")
        self.model, self.timeout, self.retries, self.max_tokens = model, timeout, retries, max_tokens
        self.concurrency = concurrency
        self.name = f"{self.url} ({model})"

    def _request(self, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
        data = None if body is None else json.dumps(body).encode()
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
            req = urllib.request.Request(self.url + path, data=data, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode())
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} {e.reason}"
                if e.code != 429 and e.code < 500:
                    break  # a client error does not go away on retry
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = str(getattr(e, "reason", e))
            except json.JSONDecodeError as e:
                last = f"the answer is not JSON ({e})"
            log.debug("request to %s failed (%s), attempt %d", self.url + path, last, attempt + 1)
        raise EndpointError(f"openai endpoint {self.url + path} failed after {attempt + 1} "
                            f"attempt(s): {last}")

    def check(self) -> None:
        """Fail early (before anything is written) when the endpoint does not answer a chat."""
        self.complete([{"role": "user", "content": "Say ok."}], max_tokens=1)

    def complete(self, messages: Messages, *, prefix: str = "", max_tokens: int | None = None) -> str:
        """Greedy answer. ``prefix`` is ignored: the chat API has no standard way to start the
        answer, and the models behind such servers follow the format asked for."""
        body = {"model": self.model, "messages": messages, "temperature": 0,
                "max_tokens": max_tokens or self.max_tokens}
        reply = self._request("/chat/completions", body)
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"openai endpoint {self.url}: unexpected answer {str(reply)[:200]}") from None

    def _map(self, fn, items: list) -> list:
        """``[fn(x) for x in items]`` with up to ``concurrency`` requests in flight (a server
        such as vLLM batches concurrent requests itself)."""
        if self.concurrency <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    def complete_many(self, batch: list[Messages], *, prefix: str = "") -> list[str]:
        return self._map(lambda m: self.complete(m, prefix=prefix), batch)

    def p_yes(self, batch: list[Messages]) -> list[float]:
        return self._map(self._p_yes, batch)

    def _p_yes(self, messages: Messages) -> float:
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": 1,
                "logprobs": True, "top_logprobs": 20}
        reply = self._request("/chat/completions", body)
        choice = (reply.get("choices") or [{}])[0]
        top = (((choice.get("logprobs") or {}).get("content") or [{}])[0].get("top_logprobs")) or []
        p = {"yes": 0.0, "no": 0.0}
        for t in top:
            word = str(t.get("token", "")).strip().lower()
            if word in p:
                p[word] += math.exp(float(t["logprob"]))
        if p["yes"] + p["no"] > 0:
            return p["yes"] / (p["yes"] + p["no"])
        # No log-probabilities (some servers omit them): the greedy answer, as 1 or 0.
        text = ((choice.get("message") or {}).get("content") or "").strip().lower()
        return 1.0 if text.startswith("yes") else 0.0


__all__ = ["HFChat", "OpenAIChat", "EndpointError"]
