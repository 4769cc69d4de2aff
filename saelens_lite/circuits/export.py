"""The pruned graph as JSON in the schema of circuit-tracer's and Neuronpedia's graph viewer
(circuit-tracer ``frontend/graph_models.py`` and ``utils/create_graph_files.py``)::

    {"metadata": {"slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold",
                  + ours: "model", "edge_threshold", "scores", "n_nodes_unpruned", ...},
     "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
                 "sg_pos": ""},
     "nodes": [{"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob",
                "is_target_logit", "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp",
                "influence", "activation"}],
     "links": [{"source", "target", "weight"}]}

Node ids as circuit-tracer writes them: a feature ``{layer}_{feature}_{pos}`` (feature_type
"cross layer transcoder", the type its viewer draws per-layer transcoders with too), an error
``0_{layer}_{pos}`` ("mlp reconstruction error"), a token ``E_{token id}_{pos}`` ("embedding"),
a logit ``{n_layers + 1}_{token id}_{pos}`` ("logit"). An error id that equals a kept
feature's (layer-0 feature f at the position of the error of layer f) gets the suffix ``_err``. A node's ``influence`` is the cumulative
share of the logits' influence held by the nodes at least as influential (``prune``); links
carry the direct effect (source -> target). Tokens with newlines, tabs or returns show them as
⏎, → and ↵.
"""

from __future__ import annotations

from saelens_lite.circuits.attribution import AttributionGraph
from saelens_lite.circuits.prune import GraphScores, PruneResult

FEATURE_TYPE = "cross layer transcoder"


def display_token(text: str) -> str:
    return text.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def _node(node_id: str, feature: int, layer: str, pos: int, kind: str, js: str, **extra) -> dict:
    return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": pos,
            "feature_type": kind, "token_prob": 0.0, "is_target_logit": False, "run_idx": 0,
            "reverse_ctx_idx": 0, "jsNodeId": js, "clerp": "", "influence": None,
            "activation": None} | extra


def node_record(graph: AttributionGraph, i: int, cumulative: float, logit_texts: list[str]) -> dict:
    """The JSON node of node index ``i`` (module docstring)."""
    n_f, S, L = graph.n_features, graph.n_pos, graph.n_layers
    if i < n_f:
        layer, pos, f = graph.features[i].tolist()
        return _node(f"{layer}_{f}_{pos}", f, str(layer), pos, FEATURE_TYPE, f"{layer}_{f}-0",
                     influence=cumulative, activation=float(graph.activations[i]))
    if i < n_f + L * S:
        layer, pos = divmod(i - n_f, S)
        return _node(f"0_{layer}_{pos}", -1, str(layer), pos, "mlp reconstruction error",
                     f"{layer}_{pos}-0", influence=cumulative)
    if i < n_f + (L + 1) * S:
        pos = i - n_f - L * S
        tok = graph.token_ids[pos]
        return _node(f"E_{tok}_{pos}", pos, "E", pos, "embedding", f"E_{tok}-{pos}",
                     influence=cumulative, clerp=display_token(graph.tokens[pos]))
    j = i - n_f - (L + 1) * S
    tok, p = int(graph.logit_ids[j]), float(graph.logit_probs[j])
    return _node(f"{L + 1}_{tok}_{S - 1}", tok, str(L + 1), S - 1, "logit", f"L_{tok}-{S - 1}",
                 token_prob=p, is_target_logit=j == 0,
                 clerp=f'Output "{display_token(logit_texts[j])}" (p={p:.3f})')


def graph_json(graph: AttributionGraph, pruned: PruneResult, scores: GraphScores, *,
               slug: str, logit_texts: list[str], node_threshold: float,
               edge_threshold: float) -> dict:
    """The viewer's JSON of the pruned graph (module docstring). Nodes: the kept ones, less
    features and errors left without a kept link; tokens and logits always."""
    kept = pruned.node_mask.nonzero()[:, 0].tolist()
    records = {i: node_record(graph, i, float(pruned.cumulative[i]), logit_texts) for i in kept}
    feature_ids = {r["node_id"] for r in records.values() if r["feature_type"] == FEATURE_TYPE}
    for r in records.values():  # circuit-tracer's error ids can equal a layer-0 feature's
        if r["feature_type"] != FEATURE_TYPE and r["node_id"] in feature_ids:
            r["node_id"] += "_err"
    tgt, src = pruned.edge_mask.nonzero(as_tuple=True)
    weights = graph.adjacency[tgt, src].double().tolist()
    links = [{"source": records[s]["node_id"], "target": records[t]["node_id"], "weight": w}
             for t, s, w in zip(tgt.tolist(), src.tolist(), weights) if s in records and t in records]
    linked = {x for link in links for x in (link["source"], link["target"])}
    nodes = [r for r in records.values()
             if r["node_id"] in linked or r["feature_type"] in ("embedding", "logit")]
    transcoders = [graph.transcoders[k] for k in sorted(graph.transcoders)]
    metadata = {
        "slug": slug, "scan": f"saelens-lite:{graph.model_name}", "transcoder_list": transcoders,
        "prompt_tokens": [display_token(t) for t in graph.tokens], "prompt": graph.prompt,
        "node_threshold": node_threshold,
        # ours (the viewer ignores keys it does not know)
        "model": graph.model_name, "edge_threshold": edge_threshold,
        "scores": {"replacement": scores.replacement, "completeness": scores.completeness},
        "n_nodes_unpruned": graph.n_nodes, "n_features_unpruned": graph.n_features,
        "n_active_features": graph.n_active,
        "reconstruction_error": graph.reconstruction_error(),
        "generator": "saelens-lite trace",
    }
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": qparams, "nodes": nodes, "links": links}


__all__ = ["FEATURE_TYPE", "display_token", "graph_json", "node_record"]
