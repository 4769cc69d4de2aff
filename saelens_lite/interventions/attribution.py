"""Attribution of a logit (or a logit difference) to SAE features and error nodes, and its check
against real ablations.

Shape legend: S sequence, D model width, F features, V vocabulary.

Attribution patching (Nanda 2023, "Attribution Patching: Activation Patching At Industrial
Scale"; Syed et al. 2023, "Attribution Patching Outperforms Automated Circuit Discovery") with
SAE features and error terms as the nodes (Marks et al. 2024, "Sparse Feature Circuits", eq. 2-3
with zero as the patch): for a metric ``m`` (``logit[p, target]``, or minus ``logit[p, contrast]``)
and the spliced model of :mod:`saelens_lite.interventions.splice`,

    attr(feature f at position s) = c_sf * dm/dc_sf      ~ m(clean) - m(c_sf := 0)
    attr(error at hook h, pos s)  = e_s . dm/de_s         ~ m(clean) - m(e_s := 0)

the first-order estimate of what zero-ablating the node changes. One forward and one backward
give every node's attribution. Gradients pass each splice as the identity (the error term
makes ``decode(c) + e = x``), so they are the clean model's gradients.

:func:`ablation_check` measures the real thing for the top nodes (one forward each with that
single (position, feature) ablated, the error term kept) and reports Spearman's rank
correlation between attributions and measured changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from saelens_lite.interventions.edits import ablate
from saelens_lite.interventions.splice import as_sae_map, spliced
from saelens_lite.lm.tokens import DEFAULT_EXCLUDE


class FeatureAttribution(NamedTuple):
    hook: str
    position: int
    token: str
    """The input token at ``position``."""
    feature: int
    activation: float
    """The code c_sf on the clean run."""
    attribution: float
    """c_sf * dm/dc_sf: the first-order change of the metric when the feature is zero-ablated
    there (positive: the feature pushes the metric up)."""


class ErrorAttribution(NamedTuple):
    hook: str
    position: int
    token: str
    attribution: float
    """e_s . dm/de_s for the SAE's error e = x - decode(encode(x)) at that position."""


@dataclass
class Attribution:
    prompt: str
    tokens: list[str]
    """The prompt's tokens as the model saw them."""
    position: int
    """Where the metric is read (>= 0): the logits there predict the next token."""
    target: int
    contrast: int | None
    metric: float
    """m = logit[position, target] (- logit[position, contrast]) on the spliced, unedited model."""
    features: list[FeatureAttribution]
    """Every active (position, feature), ranked by |attribution|, largest first."""
    errors: list[ErrorAttribution]
    """Every hook's error node at every spliced position, ranked by |attribution|."""
    feature_attr: dict[str, Tensor]
    """hook -> (S, F) attributions (0 where the feature is inactive)."""
    target_token: str | None = None
    """The text of the target token (e.g. " Paris")."""
    contrast_token: str | None = None
    """The text of the contrast token, when there is one."""

    def error_totals(self) -> dict[str, float]:
        """Per hook, the summed attribution of its error nodes over positions."""
        out: dict[str, float] = {}
        for e in self.errors:
            out[e.hook] = out.get(e.hook, 0.0) + e.attribution
        return out

    def to_dict(self, top: int | None = None) -> dict:
        """JSON-ready (a stable format; the CLI's ``--json`` and the server send it)::

            {"prompt": str, "tokens": [str], "position": int,
             "target": {"id": int, "token": str}, "contrast": {"id", "token"} | null,
             "metric": float, "n_features": int,
             "features": [{"hook", "position", "token", "feature", "activation", "attribution"}],
             "errors": [{"hook", "position", "token", "attribution"}],
             "error_totals": {hook: float}}

        ``metric`` is m = logit[position, target] (- logit[position, contrast]); ``features``
        are ranked by |attribution| and cut to the ``top`` first (None: all ``n_features``);
        ``errors`` hold every error node (ranked the same way), ``error_totals`` their sum per
        hook. Token texts are single tokens decoded alone (a leading space shows)."""
        feats = self.features if top is None else self.features[:top]
        return {"prompt": self.prompt, "tokens": list(self.tokens), "position": self.position,
                "target": {"id": self.target, "token": self.target_token},
                "contrast": None if self.contrast is None else
                {"id": self.contrast, "token": self.contrast_token},
                "metric": self.metric, "n_features": len(self.features),
                "features": [a._asdict() for a in feats], "errors": [e._asdict() for e in self.errors],
                "error_totals": self.error_totals()}


def token_id(tokenizer, token: int | str) -> int:
    """An id, or a string that the tokenizer encodes as exactly one token (e.g. " Paris")."""
    if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
        if not 0 <= int(token) < len(tokenizer):
            raise ValueError(f"token id {token} is outside the vocabulary [0, {len(tokenizer)})")
        return int(token)
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(f"target {token!r} is {len(ids)} tokens {pieces}, not one: give a single "
                         "token (mind the leading space) or its id")
    return ids[0]


def token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each id decoded alone, special tokens kept (a byte-level BPE token shows its leading
    space), as the dashboard shows tokens."""
    return tokenizer.batch_decode([[int(i)] for i in ids], skip_special_tokens=False,
                                  clean_up_tokenization_spaces=False)


def _prompt_ids(lm, prompt: str) -> Tensor:
    device = next(lm.model.parameters()).device
    ids = lm.tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    if ids.shape[1] == 0:
        raise ValueError("prompt is empty")
    return ids


def _position(position: int, S: int) -> int:
    if not -S <= position < S:
        raise ValueError(f"position={position} is outside the prompt's {S} tokens: use -{S}..{S - 1}")
    return position % S


def _metric(logits_1SV: Tensor, pos: int, target: int, contrast: int | None) -> Tensor:
    row = logits_1SV[0, pos].float()
    return row[target] - (row[contrast] if contrast is not None else 0.0)


def attribute(lm, prompt: str, saes, target: int | str, *, contrast: int | str | None = None,
              position: int = -1, exclude: str = DEFAULT_EXCLUDE) -> Attribution:
    """Attribution patching of ``m = logit[position, target] (- logit[position, contrast])`` to
    every active (position, feature) of every SAE in ``saes`` and to each hook's error node
    (module docstring: ``attr = activation * gradient``; Nanda 2023, Syed et al. 2023, Marks et
    al. 2024). Special-token positions keep their clean activation and get no nodes."""
    ids = _prompt_ids(lm, prompt)
    S = ids.shape[1]
    pos = _position(position, S)
    t = token_id(lm.tokenizer, target)
    c = None if contrast is None else token_id(lm.tokenizer, contrast)
    sae_map = as_sae_map(saes)
    with spliced(lm, sae_map, exclude=exclude, record=True) as state, torch.enable_grad():
        m = _metric(lm.model(input_ids=ids).logits, pos, t, c)
        nodes = [state.nodes[h] for h in sae_map]
        leaves = [x for n in nodes for x in (n.code_BSF, n.error_BSD)]
        grads = torch.autograd.grad(m, leaves, allow_unused=True)
    tokens = token_texts(lm.tokenizer, ids[0].tolist())
    features, errors, by_hook = [], [], {}
    for i, (hook, n) in enumerate(zip(sae_map, nodes)):
        g_code = grads[2 * i] if grads[2 * i] is not None else torch.zeros_like(n.code_BSF)
        g_err = grads[2 * i + 1] if grads[2 * i + 1] is not None else torch.zeros_like(n.error_BSD)
        code_SF, keep_S = n.code_BSF.detach()[0], n.keep_BS[0]
        attr_SF = (code_SF * g_code[0]).double() * keep_S[:, None]
        by_hook[hook] = attr_SF
        for s, f in (code_SF * keep_S[:, None]).nonzero().tolist():
            features.append(FeatureAttribution(hook, s, tokens[s], f, float(code_SF[s, f]),
                                               float(attr_SF[s, f])))
        err_S = (n.error_BSD.detach()[0].double() * g_err[0].double()).sum(-1)
        errors += [ErrorAttribution(hook, s, tokens[s], float(err_S[s]))
                   for s in keep_S.nonzero()[:, 0].tolist()]
    features.sort(key=lambda a: -abs(a.attribution))
    errors.sort(key=lambda a: -abs(a.attribution))
    t_text, *c_text = token_texts(lm.tokenizer, [t] + ([] if c is None else [c]))
    return Attribution(prompt, tokens, pos, t, c, float(m.detach()), features, errors, by_hook,
                       t_text, c_text[0] if c_text else None)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's r of the ranks, ties given their average rank."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts
    return (first + (counts - 1) / 2.0)[inverse]


class AblationCheck(NamedTuple):
    nodes: list[FeatureAttribution]
    """The top-N (position, feature) nodes by |attribution|."""
    measured: list[float]
    """m(unedited) - m(that feature zero-ablated at that position), one forward each."""
    spearman: float
    """Rank correlation of ``[n.attribution for n in nodes]`` with ``measured`` (NaN when either
    is constant)."""

    def to_dict(self) -> dict:
        """JSON-ready (a stable format)::

            {"spearman": float | null,
             "nodes": [{"hook", "position", "token", "feature", "activation", "attribution",
                        "measured"}]}

        ``measured`` is m(unedited) - m(that node zero-ablated); ``spearman`` is null when it
        is undefined (NaN: a constant list)."""
        rho = None if math.isnan(self.spearman) else self.spearman
        return {"spearman": rho,
                "nodes": [{**n._asdict(), "measured": m} for n, m in zip(self.nodes, self.measured)]}


@torch.no_grad()
def ablation_check(lm, prompt: str, saes, target: int | str, *, contrast: int | str | None = None,
                   position: int = -1, top_n: int = 20, exclude: str = DEFAULT_EXCLUDE,
                   attribution: Attribution | None = None) -> AblationCheck:
    """Attribution against the real thing: for the ``top_n`` nodes of :func:`attribute`, the
    measured metric change when each is zero-ablated alone (error term kept), and Spearman's
    rank correlation between the two (Syed et al. 2023 validate attribution patching the same
    way against activation patching)."""
    if not isinstance(top_n, int) or top_n < 2:
        raise ValueError(f"top_n={top_n!r} is invalid; allowed: an integer >= 2")
    att = attribution or attribute(lm, prompt, saes, target, contrast=contrast,
                                   position=position, exclude=exclude)
    ids = _prompt_ids(lm, prompt)
    sae_map = as_sae_map(saes)

    def run(edits) -> float:
        with spliced(lm, sae_map, edits, exclude=exclude):
            return float(_metric(lm.model(input_ids=ids).logits, att.position, att.target,
                                 att.contrast))

    base = run(())
    nodes = att.features[:top_n]
    measured = [base - run([ablate(n.feature, hook=n.hook, positions=[n.position])])
                for n in nodes]
    return AblationCheck(nodes, measured, spearman([n.attribution for n in nodes], measured))


__all__ = ["attribute", "ablation_check", "Attribution", "AblationCheck", "FeatureAttribution",
           "ErrorAttribution", "token_id", "token_texts", "spearman"]
