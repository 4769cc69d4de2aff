"""The served dashboard's model work: one model with one SAE, behind one lock.

Shape legend: S sequence, K active features per token.

Every method runs model forwards and some splice the SAE into the model (hooks on the shared
model object), so each takes ``LiveModel.lock`` for its whole run: a spliced run and a plain
forward never interleave, whatever thread calls them. The server calls them from one worker
thread of its own (:mod:`saelens_lite.dashboards.api`), so the event loop that answers static
pages never waits for a model.

Inputs beyond :data:`LIMITS` raise :class:`RequestError`, which names the field; the server
answers it with a 4xx JSON error.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Limits:
    """Bounds of every API request; beyond them the server answers 400 naming the field."""

    encode_chars: int = 20_000
    """/api/encode text, in characters (its tokens past ``encode_tokens`` are dropped)."""
    encode_tokens: int = 512
    """/api/encode keeps the first this many tokens (the endpoint's contract since it exists)."""
    prompt_chars: int = 2_000
    """Steer and attribute prompts and the ablate text, in characters (checked before tokenizing)."""
    prompt_tokens: int = 128
    """Steer and attribute prompts, in tokens: one attribution is one forward and backward of
    this many positions."""
    text_tokens: int = 256
    """The ablate text, in tokens (two forwards)."""
    max_new_tokens: int = 64
    """Tokens one steer request may generate (each of the two runs)."""
    max_strength: float = 100.0
    """|strength| of a steer, in units of the feature's max activation (or of the unit direction
    when the site has no statistics)."""
    max_temperature: float = 2.0
    """Sampling temperature of a steer (0: greedy)."""
    max_seed: int = 2**31 - 1
    max_top: int = 100
    """Features an attribution returns."""
    max_pending: int = 16
    """Model requests queued or running at once; more are answered 503 at once."""


LIMITS = Limits()


class RequestError(ValueError):
    """A request the model work refuses; ``field`` names the request field at fault."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(message)
        self.field, self.status = field, status


class LiveModel:
    """A loaded model and one SAE, for the served dashboard's API (module docstring).

    ``max_F``: each feature's max activation from the dashboard's statistics (steering
    strength is in these units), or None (strength in units of the unit-norm decoder
    direction)."""

    def __init__(self, lm, sae, hook: str | None = None, *, max_F=None, top: int = 10):
        from saelens_lite.hooks import resolve_hooks

        self.lm, self.sae = lm, sae.eval()
        self.hook = resolve_hooks(lm.model, [hook or sae.cfg.hook_name])[0]
        self.max_F = max_F
        self.top = top
        self.lock = threading.Lock()

    @property
    def n_features(self) -> int:
        return self.sae.cfg.d_sae

    def info(self) -> dict:
        return {"model": self.lm.name, "hook": self.hook.name, "n_features": self.n_features,
                "strength_unit": "unit_direction" if self.max_F is None else "max_activation"}

    # -- checks shared by the endpoints
    def check_feature(self, feature: int, field: str = "feature") -> int:
        if not 0 <= feature < self.n_features:
            raise RequestError(field, f"{field}={feature} is out of range: this SAE's features are "
                                      f"0..{self.n_features - 1}")
        return feature

    def tokenize(self, text: str, field: str, max_tokens: int, *, truncate: bool = False) -> dict:
        """The tokenizer's batch of one for ``text``; over ``max_tokens`` tokens is an error
        naming ``field`` (``truncate``: cut to ``max_tokens`` instead)."""
        enc = self.lm.tokenizer(text, return_tensors="pt", truncation=truncate,
                                max_length=max_tokens if truncate else None)
        n = enc["input_ids"].shape[1]
        if n > max_tokens:
            raise RequestError(field, f"{field} is {n} tokens; at most {max_tokens} are allowed")
        if n == 0:
            raise RequestError(field, f"{field} has no tokens")
        return dict(enc)

    def token_strings(self, ids) -> list[str]:
        """Each id decoded alone (a byte-level BPE token shows its leading space)."""
        return self.lm.tokenizer.batch_decode([[int(i)] for i in ids], skip_special_tokens=False,
                                              clean_up_tokenization_spaces=False)

    # -- endpoints
    @torch.no_grad()
    def encode(self, text: str) -> dict:
        """``{"tokens": [str], "features": [[[f, act], ...] per token]}``: the features that fire
        on each token (strongest first, at most ``top``), from one forward to the SAE's hook."""
        from saelens_lite.hooks import capture

        if not text:
            return {"tokens": [], "features": []}
        enc = self.tokenize(text, "text", LIMITS.encode_tokens, truncate=True)
        with self.lock:
            acts_SD = capture(self.lm.model, enc, [self.hook], stop_early=True)[self.hook.name][0]
            vals_SK, idx_SK = self.sae.encode_sparse(acts_SD.to(self.sae.W_enc.dtype))
        k = min(self.top, vals_SK.shape[-1])
        vals_SK, order = vals_SK.topk(k, dim=-1)
        idx_SK = idx_SK.gather(-1, order)
        feats = [[[int(f), round(float(v), 4)] for f, v in zip(fi, vi) if v > 0]
                 for fi, vi in zip(idx_SK.tolist(), vals_SK.tolist())]
        return {"tokens": self.token_strings(enc["input_ids"][0]), "features": feats}


__all__ = ["LiveModel", "Limits", "LIMITS", "RequestError"]
