"""Influence on the logits, pruning, and the graph's replacement and completeness scores
(Ameisen et al. 2025, "Circuit Tracing", sec. "Graph pruning" and appendix "Graph scoring";
the definitions follow circuit-tracer's ``graph.py``).

Shape legend: N nodes.

Normalised adjacency: ``Â[t, s] = |A[t, s]| / sum_s' |A[t, s']|`` (rows without inputs stay 0).
With ``w`` the logit weights (each logit node's probability, 0 elsewhere), a node's influence on
the logits sums over every path, of every length:

    influence = w Â + w Â^2 + w Â^3 + ... = w ((I - Â)^-1 - I)

a finite sum, since the graph is acyclic (Â is nilpotent: at most n_layers + 2 steps).

Pruning (``prune``): keep the nodes whose influence, in decreasing order, covers
``node_threshold`` of the total (tokens and logits are always kept); on the adjacency restricted
to them score each edge by ``Â'[t, s] * (influence'_t + w_t)`` and keep the edges covering
``edge_threshold`` of the total score; then repeatedly drop features and errors without a kept
outgoing edge and features without a kept incoming edge.

Scores: ``replacement = I_tokens / (I_tokens + I_errors)``, the share of the influence reaching
the tokens that does not end in error nodes; ``completeness = sum_t (1 - sum_{s error} Â[t, s])
(influence_t + w_t) / sum_t (influence_t + w_t)``, the share of each node's input from non-error
sources, weighted by the node's influence.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saelens_lite.circuits.attribution import AttributionGraph
from saelens_lite.circuits.rows import normalize_rows


def influence(Ahat_NN: Tensor, w_N: Tensor, max_steps: int = 10_000) -> Tensor:
    """``w Â + w Â^2 + ...`` (module docstring): each node's influence on the weighted targets."""
    step = w_N.double() @ Ahat_NN
    total = step.clone()
    for _ in range(max_steps):
        if not step.any():
            return total
        step = step @ Ahat_NN
        total += step
    raise ValueError("influence: the adjacency matrix has a cycle (no attribution graph)")


def threshold_for(scores: Tensor, fraction: float) -> float:
    """The smallest score among the largest scores that together cover ``fraction`` of the sum
    (every score when ``fraction`` is 1); ``scores`` are non-negative. Only the positive ones
    are sorted (zeros add nothing to the sum; an edge-score matrix is mostly zeros after node
    pruning), and 0 is returned where the sorted scores of every entry would reach a zero."""
    flat = scores.flatten()
    s = flat[flat > 0].double().sort(descending=True).values
    if not len(s):
        return 0.0
    cum = s.cumsum(0) / s.sum()
    i = int(torch.searchsorted(cum, torch.tensor(fraction, dtype=cum.dtype)))
    if i < len(s):
        return float(s[i])
    return 0.0 if len(s) < len(flat) else float(s[-1])


def logit_weights(graph: AttributionGraph) -> Tensor:
    w = torch.zeros(graph.n_nodes, dtype=torch.float64)
    w[graph.n_nodes - graph.n_logits:] = graph.logit_probs.double()
    return w


def node_influence(graph: AttributionGraph) -> Tensor:
    """(N,) every node's influence on the logits (weighted by their probabilities)."""
    return influence(normalize_rows(graph.adjacency), logit_weights(graph))


class PruneResult(NamedTuple):
    node_mask: Tensor
    """(N,) bool: the nodes kept."""
    edge_mask: Tensor
    """(N, N) bool: the edges kept (target, source)."""
    influence: Tensor
    """(N,) each node's influence on the logits (unpruned graph)."""
    cumulative: Tensor
    """(N,) the share of the total influence held by the nodes at least as influential as this
    one (circuit-tracer's node "influence" field: small for the most influential)."""


def _check_fraction(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} is invalid; allowed: a number in [0, 1]")


def prune(graph: AttributionGraph, node_threshold: float = 0.8,
          edge_threshold: float = 0.98) -> PruneResult:
    """Keep the nodes covering ``node_threshold`` and the edges covering ``edge_threshold`` of the
    influence on the logits (module docstring)."""
    _check_fraction("node_threshold", node_threshold)
    _check_fraction("edge_threshold", edge_threshold)
    n_f, n_fixed = graph.n_features, graph.n_pos + graph.n_logits  # tokens + logits: always kept
    w = logit_weights(graph)
    infl = node_influence(graph)
    nodes = infl >= threshold_for(infl, node_threshold)
    nodes[graph.n_nodes - n_fixed:] = True
    A = graph.adjacency.clone()
    A[~nodes] = 0
    A[:, ~nodes] = 0
    Ahat = normalize_rows(A)
    edge_scores = Ahat * (influence(Ahat, w) + w)[:, None]
    edges = edge_scores >= threshold_for(edge_scores, edge_threshold)
    edges &= A != 0
    mid = graph.n_nodes - n_fixed  # features and errors: need an outgoing edge
    while True:
        before = nodes.clone()
        nodes[:mid] &= edges[:, :mid].any(0)
        nodes[:n_f] &= edges[:n_f].any(1)
        edges[~nodes] = False
        edges[:, ~nodes] = False
        if torch.equal(nodes, before):
            break
    order = infl.argsort(descending=True)
    cumulative = torch.zeros_like(infl)
    total = infl.sum()
    cumulative[order] = infl[order].cumsum(0) / (total if total > 0 else 1.0)
    return PruneResult(nodes, edges, infl, cumulative)


class GraphScores(NamedTuple):
    replacement: float
    """Influence reaching tokens / (that + influence ending in error nodes)."""
    completeness: float
    """Influence-weighted share of node inputs that come from non-error nodes."""


def graph_scores(graph: AttributionGraph) -> GraphScores:
    """The replacement and completeness scores of the unpruned graph (module docstring)."""
    n_f, S, L = graph.n_features, graph.n_pos, graph.n_layers
    errors = slice(n_f, n_f + L * S)
    tokens = slice(n_f + L * S, n_f + (L + 1) * S)
    w = logit_weights(graph)
    Ahat = normalize_rows(graph.adjacency)
    infl = influence(Ahat, w)
    i_tok, i_err = float(infl[tokens].sum()), float(infl[errors].sum())
    replacement = i_tok / (i_tok + i_err) if i_tok + i_err > 0 else 0.0
    non_error = 1.0 - Ahat[:, errors].sum(1)
    out = infl + w
    completeness = float((non_error * out).sum() / out.sum())
    return GraphScores(replacement, completeness)


__all__ = ["GraphScores", "PruneResult", "graph_scores", "influence", "node_influence",
           "normalize_rows", "prune", "threshold_for"]
