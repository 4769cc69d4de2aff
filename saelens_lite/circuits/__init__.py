"""Attribution graphs (Ameisen et al. 2025, "Circuit Tracing"): every MLP replaced by a
transcoder, attention patterns and norm denominators frozen, and the exact direct effect of every
feature, error node and token embedding on every feature and logit; pruned by influence on the
logits, scored, and written in the circuit-tracer / Neuronpedia graph JSON.

    from saelens_lite.circuits import load_transcoders, attribute_graph, prune_graph, graph_json

One module per job: ``transcoders`` (load and check one transcoder per layer), ``freeze``
(attention and norms frozen), ``replacement`` (the local replacement model's forward),
``attribution`` (nodes and edges), ``prune`` (influence, pruning, scores), ``export`` (JSON).
"""

from saelens_lite.circuits.attribution import AttributionGraph, attribute_graph, salient_logits
from saelens_lite.circuits.transcoders import (
    TranscoderSet,
    check_transcoders,
    find_transcoder_dirs,
    load_transcoders,
)

__all__ = ["AttributionGraph", "TranscoderSet", "attribute_graph", "check_transcoders",
           "find_transcoder_dirs", "load_transcoders", "salient_logits"]
