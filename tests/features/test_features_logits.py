"""Logit effects and neighbours against a direct computation from the model's weights."""

import numpy as np
import torch

from saelens_lite.features.logits import logit_effects, nearest_features


def test_logit_effects_fold_the_final_rmsnorm_weight(tiny_llama):
    m = tiny_llama.model
    with torch.no_grad():
        m.model.norm.weight.copy_(torch.linspace(0.5, 2.0, 64))
    W = torch.randn(10, 64)
    pv, pi, nv, ni = logit_effects(W, tiny_llama, 5)
    logits = (W * m.model.norm.weight) @ m.lm_head.weight.T
    torch.testing.assert_close(torch.from_numpy(pv), logits.topk(5, dim=1).values.detach())
    assert (torch.from_numpy(pi) == logits.topk(5, dim=1).indices).all()
    torch.testing.assert_close(torch.from_numpy(nv), logits.topk(5, dim=1, largest=False).values.detach())


def test_logit_effects_centre_for_layernorm(tiny_gpt2):
    m = tiny_gpt2.model
    W = torch.randn(6, 64)
    pv, pi, _, _ = logit_effects(W, tiny_gpt2, 3)
    d = (W - W.mean(1, keepdim=True)) * m.transformer.ln_f.weight
    want = (d @ m.lm_head.weight.T).topk(3, dim=1)
    torch.testing.assert_close(torch.from_numpy(pv), want.values.detach())


def test_encoder_models_get_a_note_instead_of_logits(tiny_bert):
    note = logit_effects(torch.randn(4, 64), tiny_bert, 3)
    assert isinstance(note, str) and "language-model head" in note


def test_nearest_features_match_brute_force_cosines():
    W = torch.randn(40, 8)
    cos, idx = nearest_features(W, 5)
    Wn = W / W.norm(dim=1, keepdim=True)
    C = Wn @ Wn.T
    C.fill_diagonal_(-2)
    want = C.topk(5, dim=1)
    assert (torch.from_numpy(idx) == want.indices).all()
    np.testing.assert_allclose(cos, want.values.numpy(), rtol=1e-5)
