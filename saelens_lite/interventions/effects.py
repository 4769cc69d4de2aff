"""Per-token loss change of a text when features are edited (the dashboard's "ablate this
feature" view).

Shape legend: S sequence, V vocabulary, F features.

For a text of tokens ``x_0 .. x_{S-1}`` with the SAEs spliced in (error term kept,
:mod:`saelens_lite.interventions.splice`), token ``s >= 1`` gets

    loss_clean(s)  = -log softmax(logits(x_<s))[x_s]     the SAEs spliced in, unedited
    loss_edited(s) = -log softmax(logits'(x_<s))[x_s]    the same with the edits applied
    delta(s)       = loss_edited(s) - loss_clean(s)      > 0: the edit makes x_s harder to predict

the loss of predicting token ``s`` from the tokens before it (the next-token loss at ``s - 1``);
token 0 has none. Unedited, the splice is the clean model up to float rounding (the error term),
so ``delta`` is the edits' effect alone and exactly 0 without one. Beside each token stand the
edited features' activations ``c_f(s) = encode(x)_f`` there on the unedited run (0 at excluded
tokens, where no SAE is spliced): an activation at ``s`` can change the losses of tokens
``s + 1`` onwards (Neuronpedia's feature ablation view; Marks et al. 2024 ablate the same way).

Totals follow ``evals.downstream``: means over the *scored* tokens, those ``s >= 1`` whose preceding
token is not excluded (``saelens_lite.lm.tokens``; the loss predicted from BOS is dropped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from saelens_lite.interventions.attribution import token_texts
from saelens_lite.interventions.edits import BoundEdit, FeatureEdit
from saelens_lite.interventions.splice import as_sae_map, spliced
from saelens_lite.lm.tokens import DEFAULT_EXCLUDE


class TokenLossEffect(NamedTuple):
    """One token of the text."""

    position: int
    token: str
    """The token decoded alone (a leading space shows)."""
    token_id: int
    loss_clean: float | None
    """-log p(x_s | x_<s) with the SAEs spliced in unedited (None for the first token)."""
    loss_edited: float | None
    """The same with the edits applied."""
    delta: float | None
    """loss_edited - loss_clean."""
    scored: bool
    """Whether the token counts in the totals (s >= 1 and the token before is not excluded)."""
    activations: list[float]
    """c_f at this token on the unedited run, one per ``TokenLossEffects.features``."""


@dataclass
class TokenLossEffects:
    text: str
    features: list[tuple[str, int]]
    """The edited (hook, feature) pairs, in order of first appearance among the edits."""
    edits: list[BoundEdit]
    """The edits as bound to the SAEs (each says the unit of its value)."""
    tokens: list[TokenLossEffect]
    """One per token of the text, in order."""
    n_scored: int
    loss_clean: float
    """Mean loss_clean over the scored tokens (NaN when none)."""
    loss_edited: float
    """Mean loss_edited over the scored tokens."""
    delta_sum: float
    """Sum of delta over the scored tokens."""

    @property
    def delta(self) -> float:
        """Mean delta over the scored tokens (= loss_edited - loss_clean)."""
        return self.delta_sum / self.n_scored if self.n_scored else math.nan

    def to_dict(self) -> dict:
        """JSON-ready (a stable format; the CLI's ``--json`` and the server send it)::

            {"text": str, "features": [{"hook", "feature"}],
             "edits": [{"kind", "hook", "feature", "value", "positions", "unit", "code_value"}],
             "tokens": [{"position", "token", "token_id", "loss_clean", "loss_edited", "delta",
                         "scored", "activations"}],
             "totals": {"n_scored", "loss_clean", "loss_edited", "delta", "delta_sum"}}

        Losses are in nats; the first token's losses are null, as are the mean totals when no
        token is scored. ``tokens[s]["activations"][i]`` is ``features[i]``'s activation there."""
        def num(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {"text": self.text,
                "features": [{"hook": h, "feature": f} for h, f in self.features],
                "edits": [b.describe() for b in self.edits],
                "tokens": [t._asdict() for t in self.tokens],
                "totals": {"n_scored": self.n_scored, "loss_clean": num(self.loss_clean),
                           "loss_edited": num(self.loss_edited), "delta": num(self.delta),
                           "delta_sum": self.delta_sum}}


def _next_token_loss_S(logits_1SV: Tensor, ids_S: Tensor) -> Tensor:
    """(S,) float64: -log p(x_s | x_<s) for s >= 1, NaN at s = 0."""
    logp = logits_1SV[0, :-1].double().log_softmax(-1)
    loss = -logp.gather(-1, ids_S[1:, None])[:, 0]
    return torch.cat([loss.new_full((1,), math.nan), loss])


@torch.no_grad()
def token_loss_effects(lm, text: str, saes, edits: Sequence[FeatureEdit], *, stats=None,
                       exclude: str = DEFAULT_EXCLUDE) -> TokenLossEffects:
    """Per token of ``text``: the next-token loss with ``saes`` spliced in, unedited and with
    ``edits`` applied, their difference and the edited features' activations (module
    docstring). ``stats``: max activations for ``add`` edits, as in
    :func:`~saelens_lite.interventions.splice.spliced`."""
    sae_map = as_sae_map(saes)
    device = next(lm.model.parameters()).device
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"].to(device)
    S = ids.shape[1]
    if S < 2:
        raise ValueError(f"text has {S} token(s): the next-token loss needs at least 2")
    with spliced(lm, sae_map, edits, stats=stats, exclude=exclude) as state:  # checks edits first
        edited = _next_token_loss_S(lm.model(input_ids=ids).logits, ids[0])
        bound = state.edits
    with spliced(lm, sae_map, exclude=exclude, record=True) as state:
        clean = _next_token_loss_S(lm.model(input_ids=ids).logits, ids[0])
        nodes = state.nodes
    keep_S = next(iter(nodes.values())).keep_BS[0]
    features = list(dict.fromkeys((b.hook, b.edit.feature) for b in bound))
    acts_SX = torch.stack([nodes[h].code_BSF[0, :, f] * keep_S for h, f in features], -1) \
        if features else torch.zeros(S, 0)
    scored_S = torch.cat([torch.zeros(1, dtype=torch.bool, device=device), keep_S[:-1]])
    delta = edited - clean
    id_list = ids[0].tolist()
    rows = []
    for s, (tok, i) in enumerate(zip(token_texts(lm.tokenizer, id_list), id_list)):
        losses = (None, None, None) if s == 0 else (float(clean[s]), float(edited[s]), float(delta[s]))
        rows.append(TokenLossEffect(s, tok, i, *losses, bool(scored_S[s]), acts_SX[s].tolist()))
    n = int(scored_S.sum())
    mean = (lambda v: float(v[scored_S].mean())) if n else (lambda v: math.nan)
    return TokenLossEffects(text, features, bound, rows, n, mean(clean), mean(edited),
                            float(delta[scored_S].sum()))


__all__ = ["token_loss_effects", "TokenLossEffects", "TokenLossEffect"]
