"""The served dashboard's model work: one model with one SAE, behind one lock.

Shape legend: S sequence, K active features per token.

Every method runs model forwards and some splice the SAE into the model (hooks on the shared
model object), so each takes ``LiveModel.lock`` for its whole run: a spliced run and a plain
forward never interleave, whatever thread calls them. The server calls them from one worker
thread of its own (:mod:`saelens_lite.dashboards.api`), so the event loop that answers static
pages never waits for a model.

Inputs beyond :data:`LIMITS` raise :class:`RequestError`, which names the field; the server
answers it with a 4xx JSON error.

The endpoints are thin wrappers of :mod:`saelens_lite.interventions`, sending their results'
``to_dict()``: steer = :func:`generate` with ``add_direction(feature, strength)`` (strength in
units of the feature's max activation from the site's statistics), ablate =
:func:`token_loss_effects` with ``ablate(feature)``, attribute = :func:`attribute`.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

import torch

from saelens_lite.interventions import (
    ablate,
    add_direction,
    attribute,
    generate,
    token_loss_effects,
)
from saelens_lite.interventions.attribution import token_id, token_texts

log = logging.getLogger(__name__)


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
    token_chars: int = 64
    """An attribution's target or contrast token, in characters."""
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
        from saelens_lite.lm.hooks import resolve_hooks

        self.lm, self.sae = lm, sae.eval()
        self.hook = resolve_hooks(lm.model, [hook or sae.cfg.hook_name])[0]
        if max_F is not None and len(max_F) != sae.cfg.d_sae:
            raise ValueError(f"max_F has {len(max_F)} features; the SAE has d_sae={sae.cfg.d_sae}")
        self.max_F = max_F
        self.top = top
        self.lock = threading.Lock()
        self.saes = {self.hook.name: self.sae}

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
        return token_texts(self.lm.tokenizer, ids.tolist())

    # -- endpoints
    @torch.no_grad()
    def encode(self, text: str) -> dict:
        """``{"tokens": [str], "features": [[[f, act], ...] per token]}``: the features that fire
        on each token (strongest first, at most ``top``), from one forward to the SAE's hook."""
        from saelens_lite.lm.hooks import capture

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

    def steer(self, prompt: str, feature: int, strength: float, max_new_tokens: int,
              seed: int, temperature: float) -> dict:
        """Baseline and steered continuations of ``prompt``: the steered run adds
        ``strength * max_f * W_dec[f]`` to the hook's activation at every position
        (:func:`~saelens_lite.interventions.add_direction`; ``max_f`` the feature's max
        activation, or ``1 / ||W_dec[f]||`` without site statistics). ``generation`` is
        :meth:`GenerationResult.to_dict`; ``baseline`` and ``steered`` its two texts."""
        self.check_feature(feature)
        self.tokenize(prompt, "prompt", LIMITS.prompt_tokens)
        max_f = None if self.max_F is None else float(self.max_F[feature])
        if max_f is not None and not max_f > 0:
            raise RequestError("feature", f"feature={feature} never fired on the dashboard's cache "
                                          "(max activation 0): strength, in units of it, means nothing")
        with self.lock:
            gen = generate(self.lm, prompt, self.saes, [add_direction(feature, strength)],
                           max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                           stats=None if self.max_F is None else {self.hook.name: self.max_F})
        out = gen.to_dict()
        cont = out["continuations"][0]
        return {"prompt": prompt, "feature": feature, "strength": strength,
                "unit": out["edits"][0]["unit"], "max_activation": max_f,
                "baseline": cont["baseline"], "steered": cont["edited"], "generation": out}

    def ablate(self, text: str, feature: int) -> dict:
        """Per token of ``text``, the next-token loss change when ``feature`` is zero-ablated at
        every position (:meth:`TokenLossEffects.to_dict`, ``activations`` holding the feature's
        activation on each token)."""
        self.check_feature(feature)
        enc = self.tokenize(text, "text", LIMITS.text_tokens)
        if enc["input_ids"].shape[1] < 2:
            raise RequestError("text", "text is 1 token: the next-token loss needs at least 2")
        with self.lock:
            effects = token_loss_effects(self.lm, text, self.saes, [ablate(feature)])
        return {"feature": feature, **effects.to_dict()}

    def attribute(self, prompt: str, target: str | None, contrast: str | None, top: int) -> dict:
        """Attribution of the next-token logit of ``target`` (minus that of ``contrast``) at the
        prompt's last token to every active feature (:meth:`Attribution.to_dict`, cut to the
        ``top`` (position, feature) nodes) and ``by_feature``: the same summed over positions,
        ranked by magnitude. ``target`` None: the model's own most likely next token."""
        enc = self.tokenize(prompt, "prompt", LIMITS.prompt_tokens)
        tok = self.lm.tokenizer
        ids = {}
        for field, text in (("target", target), ("contrast", contrast)):
            try:
                ids[field] = None if text is None else token_id(tok, text)
            except ValueError:
                n = len(tok.encode(text, add_special_tokens=False))
                raise RequestError(field, f"{field}={text!r} is {n} tokens: give one token (mind a "
                                          "leading space, as in ' Paris')") from None
        if ids["contrast"] is not None and ids["contrast"] == ids["target"]:
            raise RequestError("contrast", "contrast is the target token: their logit difference is 0")
        with self.lock:
            if ids["target"] is None:
                with torch.no_grad():
                    ids_1S = enc["input_ids"].to(next(self.lm.model.parameters()).device)
                    logits = self.lm.model(input_ids=ids_1S).logits[0, -1]
                ids["target"] = int(logits.argmax())
            att = attribute(self.lm, prompt, self.saes, ids["target"], contrast=ids["contrast"])
        out = att.to_dict(top=top)
        out["by_feature"] = by_feature(att.features, top)
        out["target_is_prediction"] = target is None
        return out


def by_feature(nodes, top: int) -> list[dict]:
    """(position, feature) attributions summed per feature, ranked by |sum|: ``[{"feature",
    "attribution", "n_positions", "top_position", "top_token"}]`` (the position where its
    attribution is largest in magnitude)."""
    acc: dict[int, dict] = {}
    for n in nodes:  # ranked by |attribution|: a feature's first node is its top position
        a = acc.setdefault(n.feature, {"feature": n.feature, "attribution": 0.0, "n_positions": 0,
                                       "top_position": n.position, "top_token": n.token})
        a["attribution"] += n.attribution
        a["n_positions"] += 1
    ranked = sorted(acc.values(), key=lambda a: -abs(a["attribution"]))
    return [a for a in ranked[:top] if math.isfinite(a["attribution"])]


__all__ = ["LiveModel", "Limits", "LIMITS", "RequestError", "by_feature"]
