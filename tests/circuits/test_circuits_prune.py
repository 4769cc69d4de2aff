"""Influence, pruning and the graph scores on a hand-made adjacency whose answers are worked out
by hand (see each test), and the JSON export's schema on a real graph."""

import json

import pytest
import torch

from saelens_lite.circuits import check_transcoders
from saelens_lite.circuits.attribution import AttributionGraph
from saelens_lite.circuits.prune import (
    graph_scores,
    node_influence,
    normalize_rows,
    prune,
    threshold_for,
)
from saelens_lite.circuits.trace import TraceConfig, trace


def hand_graph() -> AttributionGraph:
    """One layer, one token, two features f0 f1 (layer 0, position 0), error e, token x, logit y
    (p = 1). Nodes [f0, f1, e, x, y]; edges x->f0 2, x->f1 1, f0->y 3, f1->y 0.1, e->y -0.9.
    Normalised rows: y <- (f0 .75, f1 .025, e .225); f0 <- x 1; f1 <- x 1.
    Influence: f0 .75, f1 .025, e .225, x .75 + .025 = .775, y 0."""
    A = torch.zeros(5, 5, dtype=torch.float64)
    A[0, 3], A[1, 3] = 2.0, 1.0
    A[4, 0], A[4, 1], A[4, 2] = 3.0, 0.1, -0.9
    return AttributionGraph("x", [7], ["x"], 1, torch.tensor([[0, 0, 0], [0, 0, 1]]),
                            torch.tensor([1.0, 0.5]), torch.tensor([9]),
                            torch.tensor([1.0], dtype=torch.float64), A, torch.zeros(5), torch.zeros(5))


def test_influence_sums_every_path_of_the_normalised_graph():
    torch.testing.assert_close(node_influence(hand_graph()),
                               torch.tensor([0.75, 0.025, 0.225, 0.775, 0.0], dtype=torch.float64))


def test_pruning_keeps_the_nodes_and_edges_covering_the_thresholds():
    """Sorted influences .775 .75 .225 .025 0 (total 1.775): cumulative .437 .859 ..., so 0.8
    keeps x (always), f0 and y (always) and drops e and f1; on what is left, x->f0 and f0->y
    carry all the edge score."""
    res = prune(hand_graph(), node_threshold=0.8, edge_threshold=0.98)
    assert res.node_mask.tolist() == [True, False, False, True, True]
    kept = {(int(t), int(s)) for t, s in res.edge_mask.nonzero()}
    assert kept == {(0, 3), (4, 0)}
    assert res.cumulative[0] == pytest.approx((0.775 + 0.75) / 1.775)
    assert res.cumulative[3] == pytest.approx(0.775 / 1.775)
    everything = prune(hand_graph(), node_threshold=1.0, edge_threshold=1.0)
    assert everything.node_mask.all()
    assert {(int(t), int(s)) for t, s in everything.edge_mask.nonzero()} == {
        (0, 3), (1, 3), (4, 0), (4, 1), (4, 2)}


def test_a_feature_left_without_outgoing_edges_is_pruned():
    """f1's only edge (to y) is the weakest: at edge threshold .9 it goes, and f1 with it."""
    g = hand_graph()
    res = prune(g, node_threshold=1.0, edge_threshold=0.9)
    assert not res.node_mask[1] and not res.edge_mask[:, 1].any() and not res.edge_mask[1].any()
    assert res.node_mask[0] and res.node_mask[3] and res.node_mask[4]


def test_replacement_and_completeness_scores():
    """replacement = I_x / (I_x + I_e) = .775 / 1; completeness = sum (1 - error share of the
    row) (influence + w) / sum (influence + w) = (.75 + .025 + .225 + .775 + .775) / 2.775."""
    s = graph_scores(hand_graph())
    assert s.replacement == pytest.approx(0.775)
    assert s.completeness == pytest.approx(2.55 / 2.775)


def test_threshold_for_covers_the_fraction():
    scores = torch.tensor([1.0, 4.0, 3.0, 2.0])
    assert threshold_for(scores, 0.4) == 4.0  # 4 covers .4
    assert threshold_for(scores, 0.5) == 3.0  # 4 + 3 = .7 >= .5
    assert threshold_for(scores, 1.0) == 1.0


def test_threshold_for_equals_the_sort_over_every_entry_zeros_included():
    """Only positive scores are sorted; the threshold is the one of the plain definition (sort
    every entry, zeros too, and take the first whose cumulative share reaches the fraction)."""
    def every_entry(scores, fraction):
        s = scores.flatten().double().sort(descending=True).values
        if s.sum() <= 0:
            return 0.0
        cum = s.cumsum(0) / s.sum()
        return float(s[min(int(torch.searchsorted(cum, torch.tensor(fraction, dtype=cum.dtype))), len(s) - 1)])

    g = torch.Generator().manual_seed(0)
    for density in (0.0, 0.05, 0.5, 1.0):
        scores = torch.rand(40, 30, generator=g) * (torch.rand(40, 30, generator=g) < density)
        for fraction in (0.0, 0.3, 0.8, 0.98, 1.0):
            assert threshold_for(scores, fraction) == every_entry(scores, fraction), (density, fraction)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.8"])
def test_thresholds_outside_zero_one_are_refused(bad):
    with pytest.raises(ValueError, match="node_threshold"):
        prune(hand_graph(), node_threshold=bad)
    with pytest.raises(ValueError, match=r"TraceConfig.edge_threshold=.*allowed: a number in \[0, 1\]"):
        TraceConfig(edge_threshold=bad)


def test_the_json_has_the_viewers_schema(tiny_llama, transcoders):
    lm = tiny_llama
    tcs = check_transcoders(transcoders(), lm)
    res = trace(lm, tcs, "abc ab", TraceConfig(node_threshold=0.9))
    doc = json.loads(json.dumps(res.to_json(lm.tokenizer, slug="abc"), allow_nan=False))
    assert set(doc) == {"metadata", "qParams", "nodes", "links"}
    meta = doc["metadata"]
    assert {"slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold"} <= set(meta)
    assert meta["slug"] == "abc" and meta["prompt"] == "abc ab" and len(meta["prompt_tokens"]) == 7
    assert 0 < meta["scores"]["replacement"] <= 1 and 0 < meta["scores"]["completeness"] <= 1
    assert set(doc["qParams"]) == {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
    node_keys = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob",
                 "is_target_logit", "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp",
                 "influence", "activation"}
    ids = [n["node_id"] for n in doc["nodes"]]
    assert len(ids) == len(set(ids))
    assert all(set(n) == node_keys for n in doc["nodes"])
    kinds = {n["feature_type"] for n in doc["nodes"]}
    assert {"cross layer transcoder", "embedding", "logit"} <= kinds
    assert sum(n["feature_type"] == "embedding" for n in doc["nodes"]) == 7
    logits = [n for n in doc["nodes"] if n["feature_type"] == "logit"]
    assert len(logits) == res.graph.n_logits and logits[0]["is_target_logit"]
    assert all(n["layer"] == "5" and n["ctx_idx"] == 6 for n in logits)
    feats = [n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert all(n["activation"] > 0 and 0 < n["influence"] <= 1 for n in feats)
    assert doc["links"] and all(set(x) == {"source", "target", "weight"} for x in doc["links"])
    assert all(x["source"] in ids and x["target"] in ids for x in doc["links"])
    # a link's weight is the graph's direct effect
    g, idx = res.graph, {}
    for i in range(g.n_features):
        layer, pos, f = g.features[i].tolist()
        idx[f"{layer}_{f}_{pos}"] = i
    link = next(x for x in doc["links"] if x["source"] in idx and x["target"] in idx)
    assert link["weight"] == pytest.approx(float(g.adjacency[idx[link["target"]], idx[link["source"]]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalize_rows_leaves_its_input_unchanged(dtype):
    A = torch.tensor([[0.0, -1.0, 3.0], [0.0, 0.0, 0.0], [2.0, -2.0, 0.0]], dtype=dtype)
    before = A.clone()
    Ahat = normalize_rows(A)
    torch.testing.assert_close(A, before, rtol=0, atol=0)
    torch.testing.assert_close(Ahat, torch.tensor([[0, .25, .75], [0, 0, 0], [.5, .5, 0]], dtype=torch.float64))
