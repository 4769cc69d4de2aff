"""Edges against interventions: in the frozen spliced model (clean attention patterns, norm
denominators and other features held) ablating a source changes each target by exactly the
edge's weight, measured by forward passes only; in the real spliced model the change is the
total effect, reported beside the weight."""

import contextlib
import math

import pytest
import torch

from saelens_lite.circuits import attribute_graph, check_transcoders
from saelens_lite.circuits.intervene import (
    HOLD_PARTS,
    clean_state,
    intervention_check,
    strongest_edges,
)
from saelens_lite.lm.hooks import replace_mlp

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


def test_a_given_clean_state_gives_the_same_check_with_its_forwards_saved(tiny_llama, transcoders):
    """Passing clean_state(...) gives the same check as computing it inside, in every regime, and
    runs exactly the forwards of clean_state fewer (counted by a forward hook on the model); a
    state of another prompt is refused."""
    lm = tiny_llama
    tcs = check_transcoders(transcoders(), lm)
    graph = attribute_graph(lm, tcs, PROMPT)
    calls: list[int] = []
    handle = lm.model.register_forward_hook(lambda *_: calls.append(1))

    def forwards(fn, *args, **kw):
        n = len(calls)
        return fn(*args, **kw), len(calls) - n

    try:
        state, n_clean = forwards(clean_state, lm, tcs, PROMPT)
        assert n_clean >= 1
        for freeze in ((), False, True):
            inside, n_inside = forwards(intervention_check, lm, tcs, graph, top=4, freeze=freeze)
            given, n_given = forwards(intervention_check, lm, tcs, graph, top=4, freeze=freeze, state=state)
            assert given.to_dict() == inside.to_dict()
            assert n_inside - n_given == n_clean
    finally:
        handle.remove()
    with pytest.raises(ValueError, match=r"state is not the clean state of prompt='abc' with "
                                         r"exclude='special'; allowed: clean_state"):
        intervention_check(lm, tcs, attribute_graph(lm, tcs, "abc"), state=state)


def _measured(check):
    return torch.tensor([e["measured"] for e in check.edges], dtype=torch.float64)


def test_holding_features_and_norms_is_enough_when_attention_writes_nothing(tiny64, transcoders):
    """o_proj = 0: no path runs through attention, so holding the other features, the norm
    denominators and the errors alone reproduces the weights; with attention on, the patterns respond and
    the same partial hold no longer does, while naming every part equals freeze=True."""
    lm = tiny64
    tcs = check_transcoders(transcoders(dtype="float64"), lm)
    graph = attribute_graph(lm, tcs, PROMPT)
    full = intervention_check(lm, tcs, graph, top=6, freeze=True)
    part = intervention_check(lm, tcs, graph, top=6, freeze=("features", "norms", "errors"))
    every = intervention_check(lm, tcs, graph, top=6, freeze=list(HOLD_PARTS))
    assert part.to_dict()["freeze"] == ["errors", "features", "norms"]
    torch.testing.assert_close(_measured(every), _measured(full), rtol=0, atol=0)
    assert (_measured(part) - _measured(full)).abs().max() > 1e-6
    for layer in lm.model.model.layers:
        layer.self_attn.o_proj.weight.data.zero_()
    graph = attribute_graph(lm, tcs, PROMPT)
    part = intervention_check(lm, tcs, graph, top=6, freeze=("features", "norms", "errors"))
    w = torch.tensor([e["weight"] for e in part.edges], dtype=torch.float64)
    assert w.abs().min() > 0
    torch.testing.assert_close(_measured(part), w, rtol=1e-8, atol=1e-10)


@torch.no_grad()
def test_nothing_held_is_the_model_with_the_feature_subtracted(tiny64, transcoders):
    """freeze=(): every MLP runs; the oracle subtracts a_f W_dec[f] from the source's MLP output
    in the plain model (hooks.replace_mlp only) and reads the targets from that forward."""
    lm = tiny64
    tcs = check_transcoders(transcoders(dtype="float64", skip=True), lm)
    graph = attribute_graph(lm, tcs, PROMPT)
    check = intervention_check(lm, tcs, graph, top=6, freeze=())
    ids = lm.tokenizer(PROMPT, return_tensors="pt")["input_ids"]

    def targets(source=None):
        seen = {}

        def fn(layer):
            def out(mlp_in_BSD, mlp_out_BSD):
                seen[layer] = mlp_in_BSD[0]
                if source is None or source[0] != layer:
                    return mlp_out_BSD
                l_, p, f = source
                acts = tcs.by_layer[l_].encode(mlp_in_BSD[0, p])
                mlp_out_BSD = mlp_out_BSD.clone()
                mlp_out_BSD[0, p] -= acts[f] * tcs.by_layer[l_].W_dec[f]
                return mlp_out_BSD
            return out

        with contextlib.ExitStack() as stack:
            for layer in range(4):
                stack.enter_context(replace_mlp(lm.model, layer, fn(layer)))
            logits = lm.model(input_ids=ids).logits[0, -1]
        return lambda t: (float(logits[t[1]] - logits.mean()) if t[0] == "logit"
                          else float(tcs.by_layer[t[0]].pre_acts(seen[t[0]][t[1]])[t[2]]))

    clean = targets()
    oracle = torch.tensor([clean(e["target"]) - targets(e["source"])(e["target"]) for e in check.edges],
                          dtype=torch.float64)
    assert oracle.abs().max() > 1e-3
    torch.testing.assert_close(_measured(check), oracle, rtol=1e-8, atol=1e-10)


def test_freeze_names_the_bad_part(tiny64, transcoders):
    lm = tiny64
    tcs = check_transcoders(transcoders(dtype="float64"), lm)
    graph = attribute_graph(lm, tcs, PROMPT)
    with pytest.raises(ValueError, match=r"freeze=\('mlp',\) is invalid; allowed: True, False or"):
        intervention_check(lm, tcs, graph, freeze=("mlp",))


def test_strongest_edges_are_ranked_by_weight(tiny64, transcoders):
    lm = tiny64
    graph = attribute_graph(lm, check_transcoders(transcoders(dtype="float64"), lm), PROMPT)
    edges = strongest_edges(graph, 3)
    logit_row = graph.logit_index(0)
    into_logit = [abs(float(graph.adjacency[t, s])) for t, s in edges[:3]]
    assert all(t == logit_row for t, _ in edges[:3]) and into_logit == sorted(into_logit, reverse=True)
    best = graph.adjacency[logit_row, :graph.n_features].abs().max()
    assert into_logit[0] == float(best)
