"""Generation with feature edits: baseline and edited continuations of the same prompts, side by side.

Shape legend: B prompts, S sequence, V vocabulary.

One decoding loop serves both runs: prompts are left-padded, position ids count each row's real
tokens (as HF ``generate`` does), and the KV cache (HF ``past_key_values``) makes every step
after the first a forward of the B new tokens only, so the spliced hooks see and edit just those
positions (:mod:`saelens_lite.interventions.splice` counts positions per unpadded row).
Greedy when ``temperature == 0``, else sampling from ``softmax(logits / temperature)``
(optionally restricted to the ``top_k`` most likely tokens) with a ``torch.Generator`` seeded
with ``seed``: the baseline and the edited run draw the same random stream, so without an edit
they agree token for token.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from saelens_lite.interventions.edits import BoundEdit, FeatureEdit
from saelens_lite.interventions.splice import spliced
from saelens_lite.lm.tokens import DEFAULT_EXCLUDE


class Continuation(NamedTuple):
    """One prompt's two continuations (the generated tokens only)."""

    prompt: str
    baseline: str | None
    """Text of the clean model's continuation (None with baseline=False)."""
    edited: str
    """Text of the continuation with the SAEs spliced in and the edits applied."""
    baseline_ids: list[int] | None
    edited_ids: list[int]


@dataclass
class GenerationResult:
    continuations: list[Continuation]
    """One per prompt, in order."""
    edits: list[BoundEdit]
    """The edits as bound to the SAEs: each says the unit of its value (``BoundEdit.unit``)."""
    max_new_tokens: int
    temperature: float
    seed: int | None

    def to_dict(self) -> dict:
        """JSON-ready (a stable format; the CLI's ``--json`` and the server send it)::

            {"max_new_tokens": int, "temperature": float, "seed": int | null,
             "edits": [{"kind", "hook", "feature", "value", "positions", "unit", "code_value"}],
             "continuations": [{"prompt", "baseline", "edited", "baseline_ids", "edited_ids"}]}

        ``edits[i]`` is :meth:`BoundEdit.describe`: ``value`` as given, in ``unit``
        (``max_activation`` or ``unit_direction`` for add, ``code`` otherwise), and
        ``code_value`` what was written to the code. ``baseline`` / ``baseline_ids`` are null
        without a baseline run; texts are the generated tokens only, without the prompt.
        """
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "seed": self.seed, "edits": [b.describe() for b in self.edits],
                "continuations": [c._asdict() for c in self.continuations]}


def _check_args(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} is invalid; allowed: an integer >= 1")
    if not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
        raise ValueError(f"temperature={temperature!r} is invalid; allowed: 0 (greedy) or a finite "
                         "number > 0")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} is invalid; allowed: None or an integer >= 1")


def _next_token(logits_BV: Tensor, temperature: float, top_k: int | None,
                gen: torch.Generator | None) -> Tensor:
    if temperature == 0:
        return logits_BV.argmax(-1)
    logits_BV = logits_BV.float() / temperature
    if top_k is not None and top_k < logits_BV.shape[-1]:
        kth = logits_BV.topk(top_k, dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth, -math.inf)
    return torch.multinomial(logits_BV.softmax(-1), 1, generator=gen)[:, 0]


def _cache_kw(model) -> str:
    """transformers >= 5.2x names the KV cache ``cache`` (``past_key_values`` is deprecated)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.no_grad()
def decode_loop(model, ids_BS: Tensor, mask_BS: Tensor, *, max_new_tokens: int,
                temperature: float = 0.0, top_k: int | None = None, seed: int | None = 0,
                eos_id: int | None = None, pad_id: int = 0) -> Tensor:
    """(B, N) new token ids, N <= max_new_tokens; a row that emitted ``eos_id`` is padded with
    ``pad_id`` afterwards; the loop stops once every row has."""
    device = ids_BS.device
    gen = None
    if temperature > 0:
        gen = torch.Generator(device=device)
        gen.manual_seed(0 if seed is None else seed)
    pos_BS = (mask_BS.cumsum(-1) - 1).clamp_min(0)
    cache_kw, past, step_ids, new = _cache_kw(model), None, ids_BS, []
    done_B = torch.zeros(ids_BS.shape[0], dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask_BS, position_ids=pos_BS,
                    use_cache=True, **{cache_kw: past})
        past = _cache_of(out)
        tok_B = _next_token(out.logits[:, -1], temperature, top_k, gen)
        tok_B = torch.where(done_B, torch.full_like(tok_B, pad_id), tok_B)
        new.append(tok_B)
        if eos_id is not None:
            done_B |= tok_B == eos_id
        if bool(done_B.all()):
            break
        step_ids = tok_B[:, None]
        mask_BS = torch.cat([mask_BS, torch.ones_like(mask_BS[:, :1])], dim=1)
        pos_BS = pos_BS[:, -1:] + 1
    return torch.stack(new, dim=1)


def _trim(row: list[int], eos_id: int | None) -> list[int]:
    return row[: row.index(eos_id) + 1] if eos_id is not None and eos_id in row else row


def generate(lm, prompts: str | Sequence[str], saes=None, edits: Sequence[FeatureEdit] = (), *,
             max_new_tokens: int = 30, temperature: float = 0.0, top_k: int | None = None,
             seed: int | None = 0, stats=None, keep_error: bool = True,
             exclude: str = DEFAULT_EXCLUDE, baseline: bool = True) -> GenerationResult:
    """Continue ``prompts`` with the clean model (the baseline) and with ``saes`` spliced in and
    ``edits`` applied (:func:`~saelens_lite.interventions.splice.spliced`: with the error term
    ``x - decode(encode(x))`` kept, an unedited SAE leaves the text unchanged).

    Steering by feature edits follows Templeton et al. 2024 (clamping) and Turner et al. 2023
    (activation addition); ``alpha`` of ``add_direction`` is in units of the feature's max
    activation when ``stats`` are given, else of the unit-norm decoder direction
    (``GenerationResult.edits[i].unit``). ``temperature=0`` is greedy; otherwise seeded
    sampling (module docstring). ``baseline=False`` skips the clean run.
    """
    _check_args(max_new_tokens, temperature, top_k)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    if edits and saes is None:
        raise ValueError("edits need SAEs to act on: pass saes=")
    tok = lm.tokenizer
    device = next(lm.model.parameters()).device
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(prompts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = side
    ids_BS, mask_BS = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
              eos_id=tok.eos_token_id, pad_id=tok.pad_token_id or 0)
    base = decode_loop(lm.model, ids_BS, mask_BS, **kw).tolist() if baseline else None
    ctx = spliced(lm, saes, edits, stats=stats, keep_error=keep_error, exclude=exclude) \
        if saes is not None else nullcontext(None)
    with ctx as state:
        edited = decode_loop(lm.model, ids_BS, mask_BS, **kw).tolist()
    conts = []
    for i, p in enumerate(prompts):
        e_ids = _trim(edited[i], tok.eos_token_id)
        b_ids = None if base is None else _trim(base[i], tok.eos_token_id)
        conts.append(Continuation(p, None if b_ids is None else tok.decode(b_ids),
                                  tok.decode(e_ids), b_ids, e_ids))
    return GenerationResult(conts, [] if state is None else state.edits, max_new_tokens,
                            float(temperature), seed)


__all__ = ["generate", "decode_loop", "Continuation", "GenerationResult"]
