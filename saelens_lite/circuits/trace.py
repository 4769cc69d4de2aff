"""``trace``: prompt -> attribution graph -> pruned graph, scores and the viewer's JSON, with its
options in one config (``saelens-lite trace`` builds its flags from ``TraceConfig``).

    lm = load_model("smollm2-135m")
    tcs = load_transcoders("runs/tc", lm)
    result = trace(lm, tcs, "The capital of France is", TraceConfig(target=" Paris"))
    result.scores.replacement, result.to_json(lm.tokenizer, slug="paris")
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from saelens_lite.circuits.attribution import AttributionGraph, attribute_graph
from saelens_lite.circuits.export import graph_json
from saelens_lite.circuits.prune import GraphScores, PruneResult, graph_scores, prune
from saelens_lite.interventions.attribution import token_texts
from saelens_lite.lm.tokens import DEFAULT_EXCLUDE, check_exclude


@dataclass
class TraceConfig:
    """How a prompt is traced and its graph pruned."""

    target: str | None = None
    """The one logit node to attribute: text that is exactly one token (mind the leading space,
    e.g. ' Paris'); default: the top logits covering desired_logit_prob."""
    node_threshold: float = 0.8
    """Pruning keeps the nodes covering this fraction of the influence on the logits."""
    edge_threshold: float = 0.98
    """Pruning keeps the edges covering this fraction of the influence on the logits."""
    desired_logit_prob: float = 0.95
    """Without --target: logit nodes for the fewest top tokens whose probabilities sum to this."""
    max_n_logits: int = 10
    """Without --target: at most this many logit nodes."""
    batch_size: int = 32
    """Targets (rows of the adjacency matrix) per backward pass: memory against speed."""
    exclude: str = DEFAULT_EXCLUDE
    """Positions without feature nodes, their MLP output an error node (special = bos, eos,
    pad, sep: the token rule of harvest and eval)."""
    max_feature_nodes: int | None = None
    """Keep at most this many feature nodes, visited in order of their influence on the logits
    as estimated from the rows computed so far (the adjacency is dense: nodes x nodes); the
    direct effects of the others go into each row's bias. Default: every active feature."""
    allow_missing_layers: bool = False
    """Layers without a transcoder keep their MLP output as one error node per position instead
    of being an error."""

    def __post_init__(self) -> None:
        for name in ("node_threshold", "edge_threshold", "desired_logit_prob"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"TraceConfig.{name}={v!r} is invalid; allowed: a number in [0, 1]")
        for name in ("max_n_logits", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TraceConfig.{name}={v!r} is invalid; allowed: an integer >= 1")
        v = self.max_feature_nodes
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"TraceConfig.max_feature_nodes={v!r} is invalid; allowed: None (all) or "
                             "an integer >= 1")
        check_exclude(self.exclude)


@dataclass
class TraceResult:
    graph: AttributionGraph
    """The full graph (every active feature; adjacency and inputs)."""
    pruned: PruneResult
    scores: GraphScores
    """Of the full graph."""
    config: TraceConfig
    seconds: float
    """Wall time of attribution, pruning and scoring."""

    def to_json(self, tokenizer, *, slug: str) -> dict:
        """The viewer's JSON (``circuits.export``), with the timing in its metadata."""
        texts = token_texts(tokenizer, self.graph.logit_ids.tolist())
        out = graph_json(self.graph, self.pruned, self.scores, slug=slug, logit_texts=texts,
                         node_threshold=self.config.node_threshold,
                         edge_threshold=self.config.edge_threshold)
        out["metadata"]["seconds"] = self.seconds
        return out


def trace(lm, tcs, prompt: str, config: TraceConfig | None = None) -> TraceResult:
    """Attribute, prune and score ``prompt`` (``attribute_graph``, ``prune``, ``graph_scores``)."""
    config = config or TraceConfig()
    start = time.perf_counter()
    graph = attribute_graph(lm, tcs, prompt, target=config.target, max_n_logits=config.max_n_logits,
                            desired_logit_prob=config.desired_logit_prob,
                            batch_size=config.batch_size, exclude=config.exclude,
                            max_feature_nodes=config.max_feature_nodes)
    pruned = prune(graph, config.node_threshold, config.edge_threshold)
    scores = graph_scores(graph)
    return TraceResult(graph, pruned, scores, config, time.perf_counter() - start)


__all__ = ["TraceConfig", "TraceResult", "trace"]
