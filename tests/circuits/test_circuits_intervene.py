"""Edges against interventions: in the frozen spliced model (clean attention patterns, norm
denominators and other features held) ablating a source changes each target by exactly the
edge's weight, measured by forward passes only; in the real spliced model the change is the
total effect, reported beside the weight."""

import math

import torch

from saelens_lite.circuits import attribute_graph, check_transcoders
from saelens_lite.circuits.intervene import intervention_check, strongest_edges

PROMPT = "abc ab"


def test_ablations_in_the_frozen_model_measure_the_edge_weights(tiny64, transcoders):
    lm = tiny64
    tcs = check_transcoders(transcoders(dtype="float64", skip=True), lm)
    graph = attribute_graph(lm, tcs, PROMPT)
    check = intervention_check(lm, tcs, graph, top=6, freeze=True)
    assert len(check.edges) == 12
    w = torch.tensor([e["weight"] for e in check.edges], dtype=torch.float64)
    m = torch.tensor([e["measured"] for e in check.edges], dtype=torch.float64)
    assert w.abs().min() > 0
    torch.testing.assert_close(m, w, rtol=1e-8, atol=1e-10)
    assert check.pearson > 0.999999


def test_the_real_model_check_reports_total_effects(tiny_llama, transcoders):
    lm = tiny_llama
    tcs = check_transcoders(transcoders(), lm)
    graph = attribute_graph(lm, tcs, PROMPT)
    check = intervention_check(lm, tcs, graph, top=4, freeze=False)
    d = check.to_dict()
    assert not d["freeze"] and len(d["edges"]) == 8
    assert all(math.isfinite(e["measured"]) for e in d["edges"])
    assert d["pearson"] is None or -1 <= d["pearson"] <= 1


def test_strongest_edges_are_ranked_by_weight(tiny64, transcoders):
    lm = tiny64
    graph = attribute_graph(lm, check_transcoders(transcoders(dtype="float64"), lm), PROMPT)
    edges = strongest_edges(graph, 3)
    logit_row = graph.logit_index(0)
    into_logit = [abs(float(graph.adjacency[t, s])) for t, s in edges[:3]]
    assert all(t == logit_row for t, _ in edges[:3]) and into_logit == sorted(into_logit, reverse=True)
    best = graph.adjacency[logit_row, :graph.n_features].abs().max()
    assert into_logit[0] == float(best)
