"""The attribution graph: exact direct effects against a hand-derived oracle on a tiny model
whose attention writes nothing, the reconstruction identity (sum of direct effects + biases =
the target's input) with attention on, and the replacement model's forward equal to the model's."""

import pytest
import torch

from saelens_lite.circuits import attribute_graph, check_transcoders
from saelens_lite.circuits.replacement import replacement_forward
from saelens_lite.lm.hooks import capture
from saelens_lite.lm.tokens import excluded_token_ids, keep_mask

PROMPT = "abc ab"


def clean_acts(lm, layers=4):
    ids = lm.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    names = [f"blocks.{i}.hook_{h}" for i in range(layers)
             for h in ("resid_pre", "attn_out", "mlp_in", "mlp_out")] + [f"blocks.{layers - 1}.hook_resid_post"]
    acts = capture(lm.model, {"input_ids": ids}, names, stop_early=False)
    return ids[0], {k: v[0] for k, v in acts.items()}


def rms_inv(x_SD, eps):
    return torch.rsqrt(x_SD.pow(2).mean(-1) + eps)


def no_attention_forward(lm, ids):
    """The model in float64 by hand when attention writes nothing: per layer
    mlp_in = w * x / rms(x), x += MLP(mlp_in); returns the residual entering each layer, each
    MLP input and output, and the final residual (an oracle independent of the hooks)."""
    m = lm.model.model
    x = m.embed_tokens(ids)
    a = {}
    for i, layer in enumerate(m.layers):
        ln = layer.post_attention_layernorm
        a[f"blocks.{i}.hook_resid_pre"] = x
        a[f"blocks.{i}.hook_attn_out"] = torch.zeros_like(x)
        a[f"blocks.{i}.hook_mlp_in"] = ln.weight * x * rms_inv(x, ln.variance_epsilon)[:, None]
        a[f"blocks.{i}.hook_mlp_out"] = layer.mlp(a[f"blocks.{i}.hook_mlp_in"])
        x = x + a[f"blocks.{i}.hook_mlp_out"]
    a[f"blocks.{len(m.layers) - 1}.hook_resid_post"] = x
    return a


@torch.no_grad()
def test_direct_effects_equal_the_hand_derived_ones_when_attention_writes_nothing(tiny64, transcoders):
    """o_proj = 0: the residual at position p is emb[p] + the MLP outputs at p, so every edge is a
    product of a source vector, a frozen norm (1/rms times its weight) and the target's encoder
    row (or demeaned unembedding), and edges across positions are 0."""
    lm = tiny64
    for layer in lm.model.model.layers:
        layer.self_attn.o_proj.weight.data.zero_()
    tcs = check_transcoders(transcoders(dtype="float64"), lm)
    graph = attribute_graph(lm, tcs, PROMPT)
    ids = lm.tokenizer(PROMPT, return_tensors="pt")["input_ids"][0]
    a = no_attention_forward(lm, ids)
    S, L, eps = len(ids), 4, lm.model.config.rms_norm_eps
    keep = keep_mask(ids, excluded_token_ids(lm.tokenizer))
    # nodes: the active features, recomputed from the oracle's MLP inputs
    feats, acts, dec = [], [], []
    for i in range(L):
        tc = tcs.by_layer[i]
        a_SF = tc.encode(a[f"blocks.{i}.hook_mlp_in"]) * keep[:, None]
        for p, f in a_SF.nonzero().tolist():
            feats.append((i, p, f))
            acts.append(a_SF[p, f])
            dec.append(a_SF[p, f] * tc.W_dec[f])
        err = a[f"blocks.{i}.hook_mlp_out"] - tc.decode(a_SF)
        a[f"err{i}"] = err
    assert graph.features.tolist() == [list(x) for x in feats]
    torch.testing.assert_close(graph.activations, torch.stack(acts), rtol=1e-10, atol=1e-10)
    n_f = len(feats)
    # sources: (layer written into, position, vector); layer -1 = the embedding
    sources = [(fl, fp, v) for (fl, fp, _), v in zip(feats, dec)]
    sources += [(i, p, a[f"err{i}"][p]) for i in range(L) for p in range(S)]
    sources += [(-1, p, a["blocks.0.hook_resid_pre"][p]) for p in range(S)]
    # targets: (layer read, position, read vector, norm weight, 1/rms)
    targets = []
    for i, p, f in feats:
        ln = lm.model.model.layers[i].post_attention_layernorm
        mid = a[f"blocks.{i}.hook_resid_pre"] + a[f"blocks.{i}.hook_attn_out"]
        targets.append((i, p, tcs.by_layer[i].W_enc[:, f], ln.weight, rms_inv(mid, eps)[p]))
    W_U = lm.model.lm_head.weight
    r_final = rms_inv(a[f"blocks.{L - 1}.hook_resid_post"], eps)[S - 1]
    for t in graph.logit_ids.tolist():
        targets.append((L, S - 1, W_U[t] - W_U.mean(0), lm.model.model.norm.weight, r_final))
    expected = torch.zeros(len(targets), graph.n_nodes, dtype=torch.float64)
    for row, (lt, pt, read, w, r) in enumerate(targets):
        for col, (ls, ps, v) in enumerate(sources):
            if ls < lt and ps == pt:
                expected[row, col] = r * (w * v) @ read
    rows = graph.target_rows()
    assert len(rows) == len(targets) and n_f > 0
    torch.testing.assert_close(graph.adjacency[rows], expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("skip", [False, True])
def test_direct_effects_and_biases_sum_to_each_targets_input(tiny64, transcoders, skip):
    """Attention on, random biases, skip connections: for every feature and logit, the direct
    effects of all nodes plus b_dec's and the target's own constant give its input (the
    pre-activation recomputed from a clean capture; the demeaned logit) to float64 precision."""
    lm = tiny64
    tcs = check_transcoders(transcoders(dtype="float64", skip=skip), lm)
    graph = attribute_graph(lm, tcs, PROMPT, batch_size=7)
    ids, a = clean_acts(lm)
    rows = graph.target_rows()
    n_f = graph.n_features
    pre = torch.stack([tcs.by_layer[i].pre_acts(a[f"blocks.{i}.hook_mlp_in"][p])[f]
                       for i, p, f in graph.features.tolist()])
    # HF's RMSNorm rounds to float32; the frozen one computes in float64 (circuits.freeze)
    torch.testing.assert_close(graph.inputs[:n_f], pre, rtol=1e-5, atol=1e-5)
    logits = lm.model(input_ids=ids[None]).logits[0, -1]
    torch.testing.assert_close(graph.inputs[rows[n_f:]], (logits - logits.mean())[graph.logit_ids],
                               rtol=1e-5, atol=1e-5)
    total = graph.adjacency[rows].sum(1) + graph.bias[rows]
    scale = graph.adjacency[rows].abs().sum(1) + graph.bias[rows].abs()  # the skips make it large
    assert ((total - graph.inputs[rows]).abs() <= 1e-13 * scale).all()
    assert graph.reconstruction_error() < 1e-13
    assert graph.adjacency[rows].abs().sum() > 1.0  # not a graph of zeros
    # no edge from a later layer or a later position (feature rows)
    for row, (lt, pt, _) in enumerate(graph.features.tolist()):
        for col, (ls, ps, _) in enumerate(graph.features.tolist()):
            if ls >= lt or ps > pt:
                assert graph.adjacency[row, col] == 0


def test_the_replacement_forward_reproduces_the_model(tiny64, transcoders):
    lm = tiny64
    tcs = check_transcoders(transcoders(dtype="float64", skip=True), lm)
    ids = lm.tokenizer(PROMPT, return_tensors="pt")["input_ids"][0]
    run = replacement_forward(lm, tcs, ids, torch.ones(len(ids), dtype=torch.bool))
    clean = lm.model(input_ids=ids[None]).logits[0, -1]
    torch.testing.assert_close(run.logits_V, clean, rtol=1e-5, atol=1e-5)  # float32 norms in HF
    assert all(leaf.requires_grad and leaf.is_leaf for leaf in run.leaves.values())
    assert not any(p.requires_grad is False for p in lm.model.parameters())  # restored


def test_target_gives_one_logit_node_and_batch_size_changes_nothing(tiny64, transcoders):
    lm = tiny64
    tcs = check_transcoders(transcoders(dtype="float64"), lm)
    g1 = attribute_graph(lm, tcs, PROMPT, target="b", batch_size=1)
    g2 = attribute_graph(lm, tcs, PROMPT, target="b", batch_size=64)
    assert g1.logit_ids.tolist() == lm.tokenizer.encode("b", add_special_tokens=False)
    torch.testing.assert_close(g1.adjacency, g2.adjacency, rtol=1e-12, atol=1e-12)


def test_layers_without_a_transcoder_are_error_nodes(tiny64, transcoders):
    lm = tiny64
    tcs = check_transcoders(transcoders(layers=[1, 3], dtype="float64"), lm, require_all=False)
    graph = attribute_graph(lm, tcs, PROMPT)
    assert set(graph.features[:, 0].tolist()) <= {1, 3}
    assert graph.reconstruction_error() < 1e-13
    assert graph.adjacency[:, graph.error_index(0, 2)].abs().sum() > 0


def test_max_feature_nodes_keeps_the_most_influential_and_the_identity(tiny64, transcoders):
    """With 10 of the active features kept (visited 8 at a time): the first 8 are those with the
    largest influence through the logit rows alone; every kept entry equals the full graph's;
    the features left out move into the bias, so the identity still holds."""
    from saelens_lite.circuits.rows import normalize_rows

    lm = tiny64
    tcs = check_transcoders(transcoders(dtype="float64"), lm)
    full = attribute_graph(lm, tcs, PROMPT)
    sub = attribute_graph(lm, tcs, PROMPT, max_feature_nodes=10, batch_size=2)
    assert sub.n_features == 10 < full.n_features == sub.n_active == full.n_active
    assert sub.reconstruction_error() < 1e-13
    idx = [full.feature_index(*f) for f in sub.features.tolist()]
    logit_rows = torch.arange(full.logit_index(0), full.n_nodes)
    direct = full.logit_probs @ normalize_rows(full.adjacency[logit_rows])[:, :full.n_features]
    assert set(direct.argsort(descending=True)[:8].tolist()) <= set(idx)
    rest = torch.arange(full.n_features, full.n_nodes)
    cols_full = torch.cat([torch.tensor(idx), rest])
    rows_full = torch.cat([torch.tensor(idx), logit_rows])
    rows_sub = sub.target_rows()
    torch.testing.assert_close(sub.adjacency[rows_sub], full.adjacency[rows_full][:, cols_full],
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sub.inputs[rows_sub], full.inputs[rows_full])
