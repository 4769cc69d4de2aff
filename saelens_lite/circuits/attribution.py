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
from saelens_lite.circuits.transcoders import TranscoderSet
from saelens_lite.interventions import token_id, token_texts
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


class _Sources:
    """The source vectors v_s of every column, grouped by the leaf they sit on."""

    def __init__(self, run: ReplacementRun, tcs: TranscoderSet, features: Tensor, acts: Tensor):
        self.n_features, self.n_layers = len(features), tcs.n_layers
        self.per_layer = {}  # layer -> (column slice, positions, a * W_dec rows, b_dec)
        for layer, tc in tcs.by_layer.items():
            sel = (features[:, 0] == layer).nonzero()[:, 0]
            if len(sel):
                cols = slice(int(sel[0]), int(sel[-1]) + 1)
                dec = tc.W_dec[features[sel, 2].to(tc.W_dec.device)] * acts[sel, None]
                self.per_layer[layer] = (cols, features[sel, 1], dec, tc.b_dec)
            else:
                self.per_layer[layer] = (slice(0, 0), features[sel, 1], None, tc.b_dec)
        self.errors = run.errors_LSD
        self.emb_SD = run.emb_SD

    def rows(self, grads_emb_BSD: Tensor, grads: list[Tensor], n_nodes: int) -> tuple[Tensor, Tensor]:
        """(rows (B, n_nodes), b_dec part (B,)) from the gradients at each leaf."""
        B, S, _ = grads_emb_BSD.shape
        rows = grads_emb_BSD.new_zeros(B, n_nodes)
        bias = grads_emb_BSD.new_zeros(B)
        for layer, g_BSD in enumerate(grads):
            if layer in self.per_layer:
                cols, pos, dec_ND, b_dec = self.per_layer[layer]
                if dec_ND is not None:  # <g[b, pos_n], dec_n>: one GEMM, then each column's position
                    proj_BSN = g_BSD @ dec_ND.T
                    rows[:, cols] = proj_BSN[:, pos, torch.arange(len(pos))]
                bias += g_BSD.sum(1) @ b_dec
            start = self.n_features + layer * S
            rows[:, start:start + S] = (g_BSD * self.errors[layer]).sum(-1)
        tok = self.n_features + self.n_layers * S
        rows[:, tok:tok + S] = (grads_emb_BSD * self.emb_SD).sum(-1)
        return rows, bias


def _backward(run: ReplacementRun, n_layers: int, t_layer: Tensor, t_pos: Tensor,
              t_vec: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Gradients (b, S, D) at the embedding and at each MLP leaf of ``<u, target vector b>`` for
    each of the b targets at once (a batched vector-Jacobian product over the one forward):
    target b reads layer ``t_layer[b]`` (n_layers: the unembedding input) at ``t_pos[b]``."""
    b = len(t_layer)
    outputs, grad_outputs = [], []
    for layer in t_layer.unique().tolist():
        out = run.unembed_in_BSD if layer == n_layers else run.mlp_in[layer]
        sel = (t_layer == layer).nonzero()[:, 0]
        g = out.new_zeros(b, *out.shape)
        g[sel.to(g.device), 0, t_pos[sel].to(g.device) % out.shape[1]] = t_vec[sel].to(g.dtype)
        outputs.append(out)
        grad_outputs.append(g)
    leaves = [run.emb_BSD] + [run.leaves[i] for i in range(n_layers)]
    grads = torch.autograd.grad(outputs, leaves, grad_outputs, retain_graph=True, allow_unused=True,
                                is_grads_batched=True)
    grads = [x.new_zeros(b, *x.shape[1:]) if g is None else g[:, 0] for g, x in zip(grads, leaves)]
    return grads[0], grads[1:]


def _targets(run, tcs, features, logit_ids, head) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per target row (features, then logits): layer read, position (-1: the last one the
    unembedding reads), input vector, input value, constant."""
    vecs, values, consts = [], [], []
    pre = {layer: tc.pre_acts(run.mlp_in[layer][0].detach()) for layer, tc in tcs.by_layer.items()}
    for layer, pos, f in features.tolist():
        tc = tcs.by_layer[layer]
        w = tc.W_enc[:, f]
        vecs.append(w)
        values.append(pre[layer][pos, f])
        consts.append(tc.b_enc[f] - tc.b_pre @ w)
    W_U = head.weight.detach()
    logit_vecs = W_U[logit_ids.to(W_U.device)] - W_U.mean(0)
    h = run.unembed_in_BSD[0, -1].detach()
    b_U = getattr(head, "bias", None)
    for i, t in enumerate(logit_ids.tolist()):
        vecs.append(logit_vecs[i])
        const = h.new_zeros(()) if b_U is None else b_U[t] - b_U.mean()
        values.append(h @ logit_vecs[i] + const)
        consts.append(const)
    t_layer = torch.cat([features[:, 0], torch.full((len(logit_ids),), tcs.n_layers)])
    t_pos = torch.cat([features[:, 1], torch.full((len(logit_ids),), -1)])
    values_N, consts_N = (torch.stack(xs).detach().double().cpu() for xs in (values, consts))
    return t_layer, t_pos, torch.stack(vecs).detach(), values_N, consts_N


@torch.no_grad()
def _fill(graph_adj: Tensor, bias: Tensor, rows_idx: Tensor, run, sources, t_layer, t_pos, t_vec,
          batch_size: int) -> None:
    for start in range(0, len(rows_idx), batch_size):
        sl = slice(start, start + batch_size)
        with torch.enable_grad():
            g_emb, grads = _backward(run, sources.n_layers, t_layer[sl], t_pos[sl], t_vec[sl])
        rows, b = sources.rows(g_emb, grads, graph_adj.shape[1])
        graph_adj[rows_idx[sl]] = rows.to(graph_adj.dtype).cpu()
        bias[rows_idx[sl]] += b.double().cpu()


def attribute_graph(lm, tcs: TranscoderSet, prompt: str, *, target: int | str | None = None,
                    max_n_logits: int = 10, desired_logit_prob: float = 0.95,
                    batch_size: int = 32, exclude: str = DEFAULT_EXCLUDE) -> AttributionGraph:
    """The attribution graph of ``prompt`` under the replacement model of ``tcs`` (module
    docstring). Logit nodes: the top tokens covering ``desired_logit_prob`` (at most
    ``max_n_logits``), or ``target`` alone (one token: text or id). ``exclude``d positions (the
    token rule of ``lm.tokens``) get no feature nodes: their MLP output is their error node."""
    ids_S = lm.tokenizer(prompt, return_tensors="pt")["input_ids"][0]
    if len(ids_S) == 0:
        raise ValueError("prompt is empty: nothing to trace")
    t_id = None if target is None else token_id(lm.tokenizer, target)
    keep_S = keep_mask(ids_S, excluded_token_ids(lm.tokenizer, exclude)).to(run_device(lm.model))
    run = replacement_forward(lm, tcs, ids_S, keep_S)
    features, acts = _active_features(run)
    logit_ids, logit_probs = salient_logits(run.logits_V, max_n_logits=max_n_logits,
                                            desired_logit_prob=desired_logit_prob, target=t_id)
    n_f, S, L = len(features), len(ids_S), tcs.n_layers
    n_nodes = n_f + (L + 1) * S + len(logit_ids)
    dtype = next(lm.model.parameters()).dtype
    adj = torch.zeros(n_nodes, n_nodes, dtype=dtype)
    inputs, bias = torch.zeros(n_nodes, dtype=torch.float64), torch.zeros(n_nodes, dtype=torch.float64)
    head = lm.model.get_output_embeddings()
    t_layer, t_pos, t_vec, values, consts = _targets(run, tcs, features, logit_ids, head)
    rows_idx = torch.cat([torch.arange(n_f), torch.arange(n_nodes - len(logit_ids), n_nodes)])
    inputs[rows_idx], bias[rows_idx] = values, consts
    log.info("tracing %d tokens: %d active features, %d logits, %d backward passes of %d rows",
             S, n_f, len(logit_ids), -(-len(rows_idx) // batch_size), batch_size)
    _fill(adj, bias, rows_idx, run, _Sources(run, tcs, features, acts), t_layer, t_pos, t_vec,
          batch_size)
    return AttributionGraph(prompt, ids_S.tolist(), token_texts(lm.tokenizer, ids_S.tolist()), L,
                            features, acts.detach().cpu(), logit_ids.cpu(), logit_probs.cpu(), adj,
                            inputs, bias, lm.name, dict(tcs.sources))


__all__ = ["AttributionGraph", "attribute_graph", "salient_logits"]
