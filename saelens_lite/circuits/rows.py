"""The rows of the attribution graph's adjacency: batched backward passes from each target's input
and their contraction with every source vector (``circuits.attribution`` for the math).

Shape legend: B targets per backward pass, S sequence, D model width, N nodes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelens_lite.circuits.replacement import ReplacementRun
from saelens_lite.circuits.transcoders import TranscoderSet


def normalize_rows(A_NN: Tensor) -> Tensor:
    """|A| with each row divided by its sum (rows of zeros stay zero), in float64: the
    normalised adjacency of influence (Ameisen et al. 2025; ``circuits.prune``)."""
    absA = A_NN.to(torch.float64, copy=True).abs_()  # one N x N copy, never A_NN itself
    return absA / absA.sum(1, keepdim=True).clamp(min=1e-30)


class Sources:
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


def backward(run: ReplacementRun, n_layers: int, t_layer: Tensor, t_pos: Tensor,
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


def targets(run, tcs, features, logit_ids, head) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
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
def fill(graph_adj: Tensor, bias: Tensor, rows_idx: Tensor, run, sources, t_layer, t_pos, t_vec,
          batch_size: int) -> None:
    for start in range(0, len(rows_idx), batch_size):
        sl = slice(start, start + batch_size)
        with torch.enable_grad():
            g_emb, grads = backward(run, sources.n_layers, t_layer[sl], t_pos[sl], t_vec[sl])
        rows, b = sources.rows(g_emb, grads, graph_adj.shape[1])
        graph_adj[rows_idx[sl]] = rows.to(graph_adj.dtype).cpu()
        bias[rows_idx[sl]] += b.double().cpu()



__all__ = ["Sources", "backward", "fill", "normalize_rows", "targets"]
