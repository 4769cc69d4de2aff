"""lm.losses against independent oracles: torch.distributions' Categorical KL and the log of a
softmax written out in float64, position by position."""

import math

import torch
from torch.distributions import Categorical, kl_divergence

from saelens_lite.lm.losses import kl_from_reference, log_probs, next_token_ce


def logits_and_ids(B=2, S=5, V=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, S, V, generator=g) * 3, torch.randint(0, V, (B, S), generator=g)


def test_next_token_ce_is_minus_the_log_probability_of_the_next_token():
    z, ids = logits_and_ids()
    got = next_token_ce(z, ids, torch.float64)
    assert got.shape == (2, 4) and got.dtype == torch.float64
    for b in range(2):
        for t in range(4):
            row = z[b, t].double()
            want = -(row[ids[b, t + 1]] - math.log(float(row.exp().sum())))
            assert abs(float(got[b, t]) - want) < 1e-12


def test_kl_equals_the_categorical_kl_and_is_zero_against_itself():
    z_ref, _ = logits_and_ids(seed=1)
    z, _ = logits_and_ids(seed=2)
    ref = log_probs(z_ref, torch.float64)
    got = kl_from_reference(ref, z)
    want = kl_divergence(Categorical(logits=z_ref.double()), Categorical(logits=z.double()))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert float(kl_from_reference(ref, z_ref).abs().max()) < 1e-12


def test_both_are_differentiable_in_the_logits():
    z_ref, ids = logits_and_ids(seed=3)
    z = z_ref.clone().requires_grad_(True)
    (kl_from_reference(log_probs(z_ref), z).sum() + next_token_ce(z, ids).sum()).backward()
    assert z.grad is not None and bool(z.grad.abs().sum() > 0)
