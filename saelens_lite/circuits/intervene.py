"""Edges checked by intervention: zero-ablate a source feature in the model with the transcoders
spliced in (error terms held at their clean values) and measure the change of a target (a
feature's pre-activation or a demeaned logit), to compare with the edge's weight (Ameisen et al.
2025, "Circuit Tracing", sec. "Validating attribution graphs": perturbation experiments).

Shape legend: S sequence, D model width, F features, V vocabulary.

Regimes (``freeze``; the parts are ``HOLD_PARTS``):

* ``freeze=True``: attention patterns (the clean run's ``q_proj`` / ``k_proj`` outputs), norm
  denominators, every other feature's activation and the error terms are held at their clean
  values. This is the local replacement model itself, which is linear, so the measured change
  equals the edge's direct effect exactly: an oracle for the backward passes computed by
  forward passes alone.
* ``freeze=False`` (= ``("errors",)``): the spliced model: attention, norms and downstream
  features respond, the error terms stay at their clean values, so every downstream MLP
  responds as its transcoder does.
* ``freeze=()``: the model itself: every MLP runs (its error term ``MLP(x) - transcoder(x)``
  follows the input), and ablating the source subtracts ``a_f W_dec[f]`` from its MLP's output;
  circuit-tracer's ``feature_intervention`` without ``constrained_layers`` and with
  ``freeze_attention=False``.
* Any other collection of parts: those held alone, to tell which response makes the total
  effect differ from the direct one (docs/circuits.md, "Measured").

The change is ``value(clean) - value(source ablated)``: the source's contribution, the sign an
edge weight has. Model-running functions used, from ``saelens_lite.lm.hooks``: ``replace_mlp``
and ``replace`` (raw module paths via ``HookPoint``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from saelens_lite.circuits.attribution import AttributionGraph
from saelens_lite.circuits.freeze import (
    frozen_attention_and_norms,
    frozen_norm,
    norm_modules,
    norm_scale,
    qk_paths,
)
from saelens_lite.circuits.replacement import replacement_forward, run_device
from saelens_lite.circuits.transcoders import TranscoderSet
from saelens_lite.lm.hooks import HookPoint, replace, replace_mlp
from saelens_lite.lm.tokens import DEFAULT_EXCLUDE, excluded_token_ids, keep_mask

HOLD_PARTS = ("attention", "norms", "features", "errors")
"""What a frozen forward can hold at its clean value: the attention patterns (q_proj / k_proj
outputs), the norm denominators, the other features' activations, the error terms."""


def hold_parts(freeze) -> frozenset[str]:
    """``freeze`` -> the parts held: True all of ``HOLD_PARTS``, False the errors only, or a
    collection of their names; an error naming a bad value and the choices."""
    if isinstance(freeze, bool):
        return frozenset(HOLD_PARTS if freeze else ("errors",))
    parts = frozenset(freeze) if isinstance(freeze, (list, tuple, set, frozenset)) else None
    if parts is None or not parts <= set(HOLD_PARTS):
        raise ValueError(f"freeze={freeze!r} is invalid; allowed: True, False or a collection of "
                         f"{list(HOLD_PARTS)}")
    return parts


@dataclass
class CleanState:
    """What a frozen forward holds fixed, from the clean run."""

    ids_S: Tensor
    keep_S: Tensor
    acts_SF: dict[int, Tensor]
    errors_LSD: list[Tensor]
    qk: dict[str, Tensor]
    """q_proj / k_proj path -> its clean output (1, S, ...)."""
    r0: dict[str, Tensor]
    """norm path -> its clean denominator (1, S, 1)."""


@torch.no_grad()
def clean_state(lm, tcs: TranscoderSet, prompt: str, exclude: str = DEFAULT_EXCLUDE) -> CleanState:
    ids_S = lm.tokenizer(prompt, return_tensors="pt")["input_ids"][0].to(run_device(lm.model))
    keep_S = keep_mask(ids_S, excluded_token_ids(lm.tokenizer, exclude))
    run = replacement_forward(lm, tcs, ids_S, keep_S)
    state = CleanState(ids_S, keep_S, {k: v.detach() for k, v in run.acts_SF.items()},
                       [e.detach() for e in run.errors_LSD], {}, {})
    model = lm.model
    with contextlib.ExitStack() as stack:
        stack.enter_context(frozen_attention_and_norms(model))  # the graph's norms (float64 ones)
        for path in qk_paths(model):
            stack.enter_context(replace(model, HookPoint(path, path, "post", None),
                                       lambda t, p=path: state.qk.__setitem__(p, t.detach())))
        for path, (module, kind) in norm_modules(model).items():
            def record(x, p=path, m=module, k=kind):
                state.r0[p] = norm_scale(m, k, x)
            stack.enter_context(replace(model, HookPoint(f"{path}:in", path, "pre", None), record))
        model(input_ids=ids_S[None])
    return state


def _mlp_fn(tcs: TranscoderSet, state: CleanState, layer: int, control: dict, parts: frozenset[str]):
    tc = tcs.by_layer.get(layer)
    hold_features, hold_errors = "features" in parts, "errors" in parts

    def fn(mlp_in_BSD: Tensor, mlp_out_BSD: Tensor) -> Tensor:
        x_SD = control["seen"][layer] = mlp_in_BSD[0]
        if tc is None:
            return state.errors_LSD[layer][None] if hold_errors else mlp_out_BSD
        # the features as they respond now: needed unless both they and the errors are held
        now_SF = None if hold_features and hold_errors else tc.encode(x_SD) * state.keep_S[:, None]
        acts_SF = (state.acts_SF[layer] if hold_features else now_SF).clone()
        ablate = control["ablate"]
        if ablate is not None and ablate[0] == layer:
            acts_SF[ablate[1], ablate[2]] = 0
        error_SD = (state.errors_LSD[layer] if hold_errors
                    else mlp_out_BSD[0] - tc.add_skip(x_SD, tc.decode(now_SF)))
        out_SD = tc.add_skip(x_SD, tc.decode(acts_SF)) + error_SD
        return out_SD[None].to(mlp_out_BSD.dtype)

    return fn


def _hold_clean(stack: contextlib.ExitStack, model, state: CleanState, parts: frozenset[str]) -> None:
    """Attention patterns (the clean q_proj / k_proj outputs) and / or norm denominators held."""
    for path in qk_paths(model) if "attention" in parts else ():
        stack.enter_context(replace(model, HookPoint(path, path, "post", None),
                                   lambda t, p=path: state.qk[p]))
    for path, (module, kind) in norm_modules(model).items() if "norms" in parts else ():
        held: list[Tensor] = []
        stack.enter_context(replace(model, HookPoint(f"{path}:in", path, "pre", None), held.append))
        stack.enter_context(replace(model, HookPoint(path, path, "post", None),
                                   lambda y, m=module, k=kind, p=path, h=held:
                                   frozen_norm(m, k, h.pop(), state.r0[p])))


@contextlib.contextmanager
def spliced_model(lm, tcs: TranscoderSet, state: CleanState, *,
                  freeze=True) -> Iterator[Callable]:
    """Within the block, ``values(targets, ablate=None)`` runs one forward of the spliced model
    (module docstring for ``freeze``: a bool or some of ``HOLD_PARTS``) with ``ablate`` =
    (layer, pos, feature) zeroed and returns the targets' values: (layer, pos, feature) its
    pre-activation, ("logit", id) the demeaned logit at the last position. The hooks are installed once for every forward."""
    model, control, parts = lm.model, {"ablate": None, "seen": {}}, hold_parts(freeze)

    @torch.no_grad()
    def values(targets, ablate=None) -> Tensor:
        control["ablate"], control["seen"] = ablate, {}
        logits_V = model(input_ids=state.ids_S[None]).logits[0, -1].double()
        out = []
        for t in targets:
            if t[0] == "logit":
                out.append(logits_V[t[1]] - logits_V.mean())
            else:
                layer, pos, f = t
                out.append(tcs.by_layer[layer].pre_acts(control["seen"][layer][pos])[f].double())
        return torch.stack(out)

    with contextlib.ExitStack() as stack:
        for layer in range(tcs.n_layers):
            stack.enter_context(replace_mlp(model, layer, _mlp_fn(tcs, state, layer, control, parts)))
        _hold_clean(stack, model, state, parts)
        yield values


def _check_state(lm, state: CleanState, prompt: str, exclude: str) -> None:
    """A given clean state must be the one of ``prompt`` with this ``exclude``."""
    ids_S = lm.tokenizer(prompt, return_tensors="pt")["input_ids"][0].to(state.ids_S.device)
    keep_S = keep_mask(ids_S, excluded_token_ids(lm.tokenizer, exclude))
    if not (torch.equal(ids_S, state.ids_S) and torch.equal(keep_S, state.keep_S)):
        raise ValueError(f"state is not the clean state of prompt={prompt!r} with exclude={exclude!r}; "
                         f"allowed: clean_state(lm, tcs, {prompt!r}, {exclude!r}) or None")


def _target_key(graph: AttributionGraph, row: int):
    if row < graph.n_features:
        return tuple(graph.features[row].tolist())
    return ("logit", int(graph.logit_ids[row - graph.logit_index(0)]))


def strongest_edges(graph: AttributionGraph, top: int) -> list[tuple[int, int]]:
    """(target row, source feature) of the ``top`` strongest feature -> first-logit edges and the
    ``top`` strongest feature -> feature edges, by |weight|."""
    n_f = graph.n_features
    out = []
    for rows in (torch.tensor([graph.logit_index(0)]), torch.arange(n_f)):
        block = graph.adjacency[rows][:, :n_f].abs()
        k = min(top, int((block > 0).sum()))
        flat = block.flatten().topk(k).indices
        out += [(int(rows[i // n_f]), int(i % n_f)) for i in flat]
    return out


@dataclass
class InterventionCheck:
    edges: list[dict]
    """{source, target, weight, measured} per edge (node ids as in the graph JSON)."""
    pearson: float
    """Correlation of weight and measured change over the edges (NaN when undefined)."""
    freeze: bool | list[str]
    """True (all of ``HOLD_PARTS`` held), False (the errors only) or the parts held."""

    def to_dict(self) -> dict:
        r = None if np.isnan(self.pearson) else self.pearson
        return {"freeze": self.freeze, "pearson": r, "edges": self.edges}


def intervention_check(lm, tcs: TranscoderSet, graph: AttributionGraph, *, top: int = 10,
                       freeze=False, exclude: str = DEFAULT_EXCLUDE,
                       state: CleanState | None = None) -> InterventionCheck:
    """Ablate the source of each of the strongest edges alone and measure its target's change
    (one forward per source feature; module docstring). ``state``: ``clean_state(lm, tcs,
    graph.prompt, exclude)`` when already computed (it does not depend on ``freeze``, so several
    regimes share one), else computed here."""
    parts = hold_parts(freeze)
    if state is None:
        state = clean_state(lm, tcs, graph.prompt, exclude)
    else:
        _check_state(lm, state, graph.prompt, exclude)
    edges = strongest_edges(graph, top)
    by_source: dict[int, list[int]] = {}
    for t, s in edges:
        by_source.setdefault(s, []).append(t)
    keys = {t: _target_key(graph, t) for t, _ in edges}
    rows_all = sorted(keys)
    records = []
    with spliced_model(lm, tcs, state, freeze=freeze) as values:
        base = dict(zip(rows_all, values([keys[t] for t in rows_all]).tolist()))
        for s, rows in by_source.items():
            source = tuple(graph.features[s].tolist())
            cut = values([keys[t] for t in rows], ablate=source)
            for t, c in zip(rows, cut.tolist()):
                records.append({"source": source, "target": keys[t],
                                "weight": float(graph.adjacency[t, s]), "measured": base[t] - c})
    w = np.array([r["weight"] for r in records])
    m = np.array([r["measured"] for r in records])
    pearson = float(np.corrcoef(w, m)[0, 1]) if len(w) > 1 and w.std() > 0 and m.std() > 0 else float("nan")
    held = freeze if isinstance(freeze, bool) else sorted(parts)
    return InterventionCheck(records, pearson, held)


__all__ = ["HOLD_PARTS", "CleanState", "InterventionCheck", "clean_state", "hold_parts",
           "intervention_check", "spliced_model", "strongest_edges"]
