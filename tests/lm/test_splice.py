"""lm.splice with hand-built (duck-typed) coders: the identity coder with its error term keeps
the logits; without it the splice equals a hand-written hooks.replace at the kept tokens; a
transcoder site replaces the MLP output (skip term included); several sites at once; a code
edit moves the activation by exactly decode(c') - decode(c); recorded nodes are leaves; the
ablations; hooks are gone afterwards, also after an error."""

import copy
import types

import pytest
import torch

from saelens_lite.lm.hooks import capture, replace, replace_mlp
from saelens_lite.lm.splice import Site, ablated, sites_of, splice

pytestmark = pytest.mark.usefixtures("one_thread")

D = 64
H1, H2 = "blocks.1.hook_resid_post", "blocks.2.hook_mlp_out"


class Linear:
    """decode(encode(x)) = scale x through a random rotation: code = x Q, decode = scale c Q^T."""

    def __init__(self, scale: float = 1.0, seed: int = 0, hook: str = H1, target: str = ""):
        g = torch.Generator().manual_seed(seed)
        self.Q = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0].float()
        self.scale = scale
        self.cfg = types.SimpleNamespace(d_in=D, hook_name=hook, target_hook=target)

    def encode(self, x_ND):
        return x_ND @ self.Q

    def decode(self, c_NF):
        return self.scale * c_NF @ self.Q.T


class MLPCoder:
    """A transcoder whose decode(encode(x)) is ``scale`` times a copy of block 1's MLP, plus a
    skip term x W_skip."""

    def __init__(self, lm, scale: float, W_skip=None):
        self.mlp, self.scale, self.W_skip = copy.deepcopy(lm.model.model.layers[1].mlp), scale, W_skip
        self.cfg = types.SimpleNamespace(d_in=D, target_hook="blocks.1.hook_mlp_out")

    def encode(self, x_ND):
        return x_ND

    def decode(self, c_NF):
        return self.scale * self.mlp(c_NF)

    def add_skip(self, x_ND, dec_ND):
        return dec_ND if self.W_skip is None else dec_ND + x_ND @ self.W_skip


def batch(lm):
    return dict(lm.tokenizer(["the cat sat on the mat", "hi there"], return_tensors="pt", padding=True))


def logits(lm, inputs):
    with torch.no_grad():
        return lm.model(**inputs).logits


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_a_lossy_coder_with_its_error_term_keeps_the_logits(fixture, request):
    lm = request.getfixturevalue(fixture)
    inputs = batch(lm)
    clean = logits(lm, inputs)
    with splice(lm.model, {H1: Linear(scale=0.3), H2: Linear(scale=1.7, seed=1)}, keep_error=True):
        same = logits(lm, inputs)
    with splice(lm.model, {H1: Linear(scale=0.3)}, keep_error=False):
        lossy = logits(lm, inputs)
    torch.testing.assert_close(same, clean, rtol=1e-4, atol=1e-4)
    assert (lossy - clean).abs().max() > 1e-2
    assert n_hooks(lm.model) == 0


def test_without_the_error_term_it_is_a_hand_written_replace_at_kept_tokens(tiny_llama):
    lm = tiny_llama
    inputs = batch(lm)
    excluded = {lm.tokenizer.bos_token_id, lm.tokenizer.pad_token_id}
    keep = inputs["attention_mask"].bool() & ~torch.isin(inputs["input_ids"], torch.tensor(sorted(excluded)))
    with torch.no_grad(), replace(lm.model, H1, lambda a: torch.where(keep[..., None], 0.5 * a, a)):
        want = lm.model(**inputs).logits
    with splice(lm.model, [Site(Linear(scale=0.5), H1)], excluded=excluded, keep_error=False):
        got = logits(lm, inputs)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_transcoder_site_replaces_the_mlp_output_skip_included(tiny_llama):
    lm = tiny_llama
    inputs = dict(lm.tokenizer(["no padding here"], return_tensors="pt"))  # every position spliced
    W = 0.05 * torch.randn(D, D, generator=torch.Generator().manual_seed(3))
    coder = MLPCoder(lm, 0.5, W)
    ref = copy.deepcopy(lm.model.model.layers[1].mlp)
    with torch.no_grad(), replace_mlp(lm.model, 1, lambda x, _clean: 0.5 * ref(x) + x @ W):
        want = lm.model(**inputs).logits
    (site,) = sites_of({"blocks.1.hook_mlp_in": coder})
    assert site.target == "blocks.1.hook_mlp_out"
    with splice(lm.model, [site], keep_error=False):
        got = logits(lm, inputs)
    with splice(lm.model, [site], keep_error=True):
        same = logits(lm, inputs)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (got - logits(lm, inputs)).abs().max() > 1e-3
    torch.testing.assert_close(same, logits(lm, inputs), rtol=1e-4, atol=1e-4)


def test_a_code_edit_moves_the_activation_by_decode_of_the_change(tiny_gpt2):
    lm = tiny_gpt2
    ids = lm.tokenizer(["abcdefgh"], return_tensors="pt")["input_ids"]
    coder = Linear(scale=1.0)
    x = capture(lm.model, {"input_ids": ids}, [H1])[H1]

    def edit(code_BSF, pos_BS):
        out = code_BSF.clone()
        out[..., 5] = torch.where(pos_BS >= 2, 3.0, out[..., 5])
        return out

    with splice(lm.model, {H1: coder}, edits={H1: edit}):
        got = capture(lm.model, {"input_ids": ids}, [H1])[H1] - x
    c = coder.encode(x[0])
    want = torch.zeros_like(x[0])
    want[2:] = (3.0 - c[2:, 5:6]) * coder.Q[:, 5]  # (c' - c) decoded: one column of Q
    torch.testing.assert_close(got[0], want, rtol=1e-4, atol=1e-5)


def test_recorded_nodes_are_leaves_that_get_gradients(tiny_llama):
    lm = tiny_llama
    inputs = batch(lm)
    excluded = {lm.tokenizer.bos_token_id}
    with splice(lm.model, {H1: Linear(0.3)}, excluded=excluded, record=True) as state, torch.enable_grad():
        out = lm.model(**inputs).logits
        out[:, -1].sum().backward()
    code, err, keep = state.nodes[H1]
    assert code.shape == (2, inputs["input_ids"].shape[1], D) and code.is_leaf and code.grad is not None
    assert err.is_leaf and err.grad is not None and not keep[:, 0].any()  # BOS not spliced
    torch.testing.assert_close(out.detach(), logits(lm, inputs), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="record=True needs keep_error=True"):
        with splice(lm.model, {H1: Linear()}, keep_error=False, record=True):
            pass


def test_ablations_and_hooks_removed_after_an_error(tiny_llama):
    lm = tiny_llama
    inputs = batch(lm)
    mean_D = torch.randn(D)
    excluded = {lm.tokenizer.bos_token_id}
    with torch.no_grad(), replace(lm.model, H2, torch.zeros_like):
        zero_want = lm.model(**inputs).logits
    with ablated(lm.model, H2):
        torch.testing.assert_close(logits(lm, inputs), zero_want)
    with ablated(lm.model, H2, mean_D, excluded=excluded):
        got = capture(lm.model, inputs, [H2])[H2]
    clean = capture(lm.model, inputs, [H2])[H2]
    kept = inputs["attention_mask"].bool()
    kept[:, 0] = False  # BOS and padding keep their clean activation
    torch.testing.assert_close(got[~kept], clean[~kept])
    torch.testing.assert_close(got[kept], mean_D.expand_as(got[kept]))
    with pytest.raises(ValueError, match="reads width d_in=64 but the hook gives 128"):
        with splice(lm.model, {"model.layers.1.mlp.act_fn": Linear()}):
            logits(lm, inputs)
    assert n_hooks(lm.model) == 0
