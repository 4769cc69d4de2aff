"""The attribution graph of a prompt: nodes, and the exact direct effect of every source on every
target of the local replacement model (Ameisen et al. 2025, "Circuit Tracing", sec. "Attribution
graphs"; circuit-tracer's ``attribute``).

Shape legend: B batch (targets per backward pass), S sequence, D model width, N nodes.

Nodes, in this order (circuit-tracer's): the active features (layer, position, feature) sorted by
layer then position then index; one error node per (layer, position), layer-major; one token
embedding per position; the logits (``AttributionGraph``). ``adjacency[t, s]`` is the direct
effect of source s on target t; only features and logits are targets (their rows), errors and
tokens only sources.

With the model linear in the leaves of ``circuits.replacement`` (frozen attention and norms, MLPs
cut), a target's input ``u_t`` is affine in the sources:

    u_t = sum_s A[t, s] + bias_t,    A[t, s] = <du_t / dL[layer_s, pos_s], v_s>

where ``v_s`` is ``a_s W_dec[f_s]`` for a feature, the error vector ``e`` for an error node, the
embedding for a token, and ``bias_t`` collects the transcoders' ``b_dec`` (the same gradient
dotted with ``b_dec``) and the target's own constant. A feature target's input is its
pre-activation ``(mlp_in - b_pre) . W_enc[:, f] + b_enc[f]`` (constant ``b_enc[f] - b_pre .
W_enc[:, f]``); a logit target's is the demeaned logit ``h . (W_U[t] - mean_v W_U[v])`` (h the
final norm's output; the softmax ignores the mean). The identity ``adjacency.sum(1) + bias =
inputs`` holds to float precision for models without attention or norm biases (llama, mistral);
``AttributionGraph.reconstruction_error`` reports it (relative to the summed terms). Each backward pass carries B targets, one
at once, a batched vector-Jacobian product over the single forward (``is_grads_batched``; the
batching over rows of the adjacency of circuit-tracer, which runs B copies of the prompt instead).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor

from saelens_lite.circuits.replacement import ReplacementRun, replacement_forward, run_device
from saelens_lite.circuits.rows import Sources, fill, normalize_rows, targets
from saelens_lite.circuits.transcoders import TranscoderSet
from saelens_lite.interventions.attribution import token_id, token_texts
from saelens_lite.lm.tokens import DEFAULT_EXCLUDE, excluded_token_ids, keep_mask

log = logging.getLogger(__name__)


@dataclass
class AttributionGraph:
    """Nodes and direct effects of one prompt (module docstring for the order)."""

    prompt: str
    token_ids: list[int]
    tokens: list[str]
    """Each input token decoded alone."""
    n_layers: int
    features: Tensor
    """(n_features, 3) int64: layer, position, feature index of each active feature."""
    activations: Tensor
    """(n_features,) the features' activations."""
    logit_ids: Tensor
    """(n_logits,) the token ids of the logit nodes."""
    logit_probs: Tensor
    """(n_logits,) their probabilities at the last position."""
    adjacency: Tensor
    """(N, N) direct effect of column (source) on row (target)."""
    inputs: Tensor
    """(N,) each target's input (pre-activation, demeaned logit); 0 for errors and tokens."""
    bias: Tensor
    """(N,) the part of each input no node carries: b_dec's direct effects + its constant."""
    model_name: str = ""
    transcoders: dict[int, str] = field(default_factory=dict)
    """Layer -> where its transcoder came from."""
    n_active: int = -1
    """Active features on the prompt (more than ``n_features`` with ``max_feature_nodes``)."""

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_pos(self) -> int:
        return len(self.token_ids)

    @property
    def n_logits(self) -> int:
        return int(self.logit_ids.shape[0])

    @property
    def n_nodes(self) -> int:
        return int(self.adjacency.shape[0])

    def error_index(self, layer: int, pos: int) -> int:
        return self.n_features + layer * self.n_pos + pos

    def token_index(self, pos: int) -> int:
        return self.n_features + self.n_layers * self.n_pos + pos

    def logit_index(self, i: int) -> int:
        return self.n_features + (self.n_layers + 1) * self.n_pos + i

    def feature_index(self, layer: int, pos: int, feature: int) -> int:
        hit = ((self.features == torch.tensor([layer, pos, feature])).all(1)).nonzero()
        if not len(hit):
            raise KeyError(f"feature {feature} is not active at layer {layer}, position {pos}")
        return int(hit[0, 0])

    def target_rows(self) -> Tensor:
        """Indices of the rows with inputs: the features, then the logits."""
        n_f = self.n_features
        return torch.cat([torch.arange(n_f), torch.arange(self.logit_index(0), self.n_nodes)])

    def reconstruction_error(self) -> float:
        """max_t |sum_s A[t, s] + bias_t - input_t| / (sum_s |A[t, s]| + |bias_t|) over the target
        rows: 0 up to float rounding (relative to the terms summed, which may cancel)."""
        rows = self.target_rows()
        A = self.adjacency[rows].double()
        resid = A.sum(1) + self.bias[rows] - self.inputs[rows]
        scale = (A.abs().sum(1) + self.bias[rows].abs()).clamp(min=1e-30)
        return float((resid.abs() / scale).max()) if len(rows) else 0.0


def salient_logits(logits_V: Tensor, *, max_n_logits: int = 10, desired_logit_prob: float = 0.95,
                   target: int | None = None) -> tuple[Tensor, Tensor]:
    """(ids, probs): the fewest top tokens (at most ``max_n_logits``) whose probabilities sum to
    ``desired_logit_prob`` (circuit-tracer's ``compute_salient_logits``), or just ``target``."""
    probs = torch.softmax(logits_V.double(), -1)
    if target is not None:
        return torch.tensor([target]), probs[[target]]
    top_p, top_id = probs.topk(min(max_n_logits, probs.shape[0]))
    cut = int(torch.searchsorted(top_p.cumsum(0), torch.tensor(desired_logit_prob, dtype=top_p.dtype))) + 1
    return top_id[:cut], top_p[:cut]


def _active_features(run: ReplacementRun) -> tuple[Tensor, Tensor]:
    feats, acts = [], []
    for layer in sorted(run.acts_SF):
        a_SF = run.acts_SF[layer]
        pos_feat = a_SF.nonzero()
        feats.append(torch.cat([torch.full_like(pos_feat[:, :1], layer), pos_feat], 1))
        acts.append(a_SF[pos_feat[:, 0], pos_feat[:, 1]])
    if not feats:
        return torch.zeros(0, 3, dtype=torch.long), torch.zeros(0)
    return torch.cat(feats).cpu(), torch.cat(acts)


def partial_influence(R_rN: Tensor, row_node: Tensor, n_logits: int, logit_probs: Tensor) -> Tensor:
    """(N,) influence on the logits through the rows computed so far (``R_rN``, its first
    ``n_logits`` rows the logits', row i the inputs of node ``row_node[i]``): ``prune.influence``
    with the rows not yet computed taken as zero (circuit-tracer's ``compute_partial_influences``)."""
    Ahat = normalize_rows(R_rN)
    prod = torch.zeros(len(R_rN), dtype=torch.float64)
    prod[:n_logits] = logit_probs.double()
    total = torch.zeros(R_rN.shape[1], dtype=torch.float64)
    while True:  # a DAG: at most n_layers + 2 steps
        col = prod @ Ahat
        if not col.any():
            return total
        total += col
        prod = col[row_node]


def _rows_by_influence(run, sources, tgt, n_f, n_full, logit_probs, max_nodes, batch_size, dtype):
    """Rows for the logits, then for ``max_nodes`` features in order of their influence
    estimated from the rows so far (all features at once when max_nodes >= n_f): (rows, row
    bias, row -> node index)."""
    t_layer, t_pos, t_vec = tgt
    n_l = len(logit_probs)
    R = torch.zeros(max_nodes + n_l, n_full, dtype=dtype)
    bias_R = torch.zeros(max_nodes + n_l, dtype=torch.float64)
    row_node = torch.cat([torch.arange(n_full - n_l, n_full), torch.zeros(max_nodes, dtype=torch.long)])
    logit_t = torch.arange(n_f, n_f + n_l)  # the logits' target indices
    fill(R, bias_R, torch.arange(n_l), run, sources, t_layer[logit_t], t_pos[logit_t], t_vec[logit_t],
         batch_size)
    visited, r = torch.zeros(n_f, dtype=torch.bool), n_l
    while r - n_l < max_nodes:
        if max_nodes >= n_f:
            pending = torch.arange(n_f)
        else:
            infl = partial_influence(R[:r], row_node[:r], n_l, logit_probs)[:n_f]
            order = infl.argsort(descending=True)
            pending = order[~visited[order]][:min(4 * batch_size, max_nodes - (r - n_l))]
        fill(R, bias_R, torch.arange(r, r + len(pending)), run, sources, t_layer[pending],
             t_pos[pending], t_vec[pending], batch_size)
        row_node[r:r + len(pending)], visited[pending] = pending, True
        r += len(pending)
    return R, bias_R, row_node


def attribute_graph(lm, tcs: TranscoderSet, prompt: str, *, target: int | str | None = None,
                    max_n_logits: int = 10, desired_logit_prob: float = 0.95,
                    batch_size: int = 32, exclude: str = DEFAULT_EXCLUDE,
                    max_feature_nodes: int | None = None) -> AttributionGraph:
    """The attribution graph of ``prompt`` under the replacement model of ``tcs`` (module
    docstring). Logit nodes: the top tokens covering ``desired_logit_prob`` (at most
    ``max_n_logits``), or ``target`` alone (one token: text or id). ``exclude``d positions (the
    token rule of ``lm.tokens``) get no feature nodes: their MLP output is their error node.
    ``max_feature_nodes``: keep only that many features, visited in order of their influence on
    the logits as estimated from the rows computed so far (circuit-tracer's); the direct effects
    of the features left out go into ``bias``, so the identity still holds."""
    ids_S = lm.tokenizer(prompt, return_tensors="pt")["input_ids"][0]
    if len(ids_S) == 0:
        raise ValueError("prompt is empty: nothing to trace")
    t_id = None if target is None else token_id(lm.tokenizer, target)
    keep_S = keep_mask(ids_S, excluded_token_ids(lm.tokenizer, exclude)).to(run_device(lm.model))
    run = replacement_forward(lm, tcs, ids_S, keep_S)
    features, acts = _active_features(run)
    logit_ids, logit_probs = salient_logits(run.logits_V, max_n_logits=max_n_logits,
                                            desired_logit_prob=desired_logit_prob, target=t_id)
    n_f, S, L, n_l = len(features), len(ids_S), tcs.n_layers, len(logit_ids)
    n_full = n_f + (L + 1) * S + n_l
    m = n_f if max_feature_nodes is None else min(max_feature_nodes, n_f)
    t_layer, t_pos, t_vec, values, consts = targets(run, tcs, features, logit_ids,
                                                    lm.model.get_output_embeddings())
    log.info("tracing %d tokens: %d of %d active features, %d logits, %d targets per backward pass",
             S, m, n_f, n_l, batch_size)
    R, bias_R, row_node = _rows_by_influence(
        run, Sources(run, tcs, features, acts), (t_layer, t_pos, t_vec), n_f, n_full, logit_probs,
        m, batch_size, next(lm.model.parameters()).dtype)
    # the graph over the kept features: rows in node order, dropped features' columns -> bias
    kept = torch.zeros(n_f, dtype=torch.bool)
    kept[row_node[n_l:]] = True
    chosen = kept.nonzero()[:, 0]
    cols = torch.cat([chosen, torch.arange(n_f, n_full)])
    row_of = torch.empty(n_full, dtype=torch.long)
    row_of[row_node] = torch.arange(len(row_node))
    n_nodes = m + (L + 1) * S + n_l
    rows = torch.cat([torch.arange(m), torch.arange(n_nodes - n_l, n_nodes)])
    src = row_of[torch.cat([chosen, torch.arange(n_full - n_l, n_full)])]
    adj = torch.zeros(n_nodes, n_nodes, dtype=R.dtype)
    adj[rows] = R[src][:, cols]
    inputs, bias = torch.zeros(n_nodes, dtype=torch.float64), torch.zeros(n_nodes, dtype=torch.float64)
    t_idx = torch.cat([chosen, torch.arange(n_f, n_f + n_l)])
    dropped = (~kept).nonzero()[:, 0]
    inputs[rows] = values[t_idx]
    bias[rows] = consts[t_idx] + bias_R[src] + R[src][:, dropped].double().sum(1)
    return AttributionGraph(prompt, ids_S.tolist(), token_texts(lm.tokenizer, ids_S.tolist()), L,
                            features[chosen], acts.detach().cpu()[chosen], logit_ids.cpu(),
                            logit_probs.cpu(), adj, inputs, bias, lm.name, dict(tcs.sources), n_f)


__all__ = ["AttributionGraph", "attribute_graph", "salient_logits"]
