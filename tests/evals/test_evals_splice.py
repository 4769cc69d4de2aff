"""Spliced-model metrics: an exact reconstruction recovers all the loss (CE recovered 1, KL 0),
a zero reconstruction none of it, the splice is gone afterwards, and the encoder analogue."""

import numpy as np
import pytest
import torch
from helpers import make_sae

from saelens_lite.evals import EvalConfig, evaluate
from saelens_lite.evals.downstream import (
    ce_gap_by_context,
    ce_gap_se,
    downstream_by_context,
    downstream_metrics,
)
from saelens_lite.evals.heldout import eval_contexts
from saelens_lite.lm.tokens import excluded_token_ids

HOOK = "blocks.1.hook_resid_post"


class _Cfg:
    def __init__(self, d):
        self.d_in = self.d_sae = d
        self.hook_name = HOOK
        self.architecture = "identity"


class Identity:
    """An "SAE" whose reconstruction is exact: encode = decode = identity."""

    def __init__(self, d):
        self.cfg = _Cfg(d)

    def encode(self, x):
        return x

    def decode(self, a):
        return a


class Zero(Identity):
    def decode(self, a):
        return torch.zeros_like(a)


def _contexts(lm, n=6, S=24):
    return eval_contexts(lm.tokenizer, "builtin:pydocs", S, n)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_identity_recovers_everything_and_zero_nothing(fixture, request):
    lm = request.getfixturevalue(fixture)
    ctx = _contexts(lm)
    ids = torch.as_tensor(np.stack(ctx))
    with torch.no_grad():
        before = lm.model(input_ids=ids).logits
    exact = downstream_metrics(Identity(64), lm, HOOK, ctx, batch_size=4, progress=False)
    assert exact["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert exact["kl_div"] == pytest.approx(0.0, abs=1e-8)
    assert exact["ce_loss_zero"] != pytest.approx(exact["ce_loss_clean"], abs=1e-4)
    # SAEBench zero-ablates every position but splices only non-special ones; with nothing
    # excluded a zero reconstruction *is* the zero-ablation.
    zero = downstream_metrics(Zero(64), lm, HOOK, ctx, batch_size=4, exclude="none", progress=False)
    assert zero["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-9)
    assert zero["kl_div"] == pytest.approx(zero["kl_div_zero"], rel=1e-9)
    with torch.no_grad():  # every splice was removed
        assert torch.equal(lm.model(input_ids=ids).logits, before)


def test_ce_and_kl_match_a_direct_computation(tiny_llama):
    """ce_loss_sae / kl_div against a hand-written splice + loss (BOS kept clean, loss from BOS dropped)."""
    from saelens_lite.lm.hooks import replace

    lm = tiny_llama
    ctx = _contexts(lm, n=3)
    ids = torch.as_tensor(np.stack(ctx))
    scale = 0.7

    class Scaled(Identity):
        def decode(self, a):
            return scale * a

    got = downstream_metrics(Scaled(64), lm, HOOK, ctx, batch_size=2, exclude="bos", progress=False)
    keep = ids != lm.tokenizer.bos_token_id
    with torch.no_grad():
        clean = lm.model(input_ids=ids).logits.double()
        with replace(lm.model, HOOK, lambda a: torch.where(keep[..., None], scale * a, a)):
            new = lm.model(input_ids=ids).logits.double()
    lp_c, lp_n = clean.log_softmax(-1), new.log_softmax(-1)
    nll = -lp_n[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    want_ce = nll[keep[:, :-1]].mean().item()
    want_kl = (lp_c.exp() * (lp_c - lp_n)).sum(-1)[keep].mean().item()
    assert got["ce_loss_sae"] == pytest.approx(want_ce, rel=1e-6)
    assert got["kl_div"] == pytest.approx(want_kl, rel=1e-5)


def test_per_context_sums_give_the_means_and_the_gap_standard_error(tiny_llama):
    """One pass's per-context sums add up to its token-weighted means, each context's gap equals
    that context evaluated alone, and the SE is numpy's sample sd of those gaps / sqrt(C)."""
    lm = tiny_llama
    ctx = _contexts(lm, n=5)
    sae = make_sae("topk", d_in=64, d_sae=96, k=6, bias_std=0.3).eval()
    mean_D = np.linspace(-1, 1, 64)
    got, per = downstream_by_context(sae, lm, HOOK, ctx, batch_size=2, mean_D=mean_D, progress=False)
    assert all(v.shape == (5,) for v in per.values()) and sorted(per) == sorted(
        [f"{m}_{r}" for m in ("ce", "kl") for r in ("sae", "zero", "mean")] + ["ce_clean", "n_ce", "n_kl"])
    n_ce, n_kl = per["n_ce"].sum(), per["n_kl"].sum()
    assert got["downstream_tokens"] == n_ce
    for ref, key in (("clean", "ce_loss_clean"), ("sae", "ce_loss_sae"), ("zero", "ce_loss_zero"),
                     ("mean", "ce_loss_mean")):
        assert per[f"ce_{ref}"].sum() / n_ce == pytest.approx(got[key], rel=1e-12)
    for ref, key in (("sae", "kl_div"), ("zero", "kl_div_zero"), ("mean", "kl_div_mean")):
        assert per[f"kl_{ref}"].sum() / n_kl == pytest.approx(got[key], rel=1e-12)
    alone = []
    for c in ctx:  # the two-pass way: each context on its own
        d = downstream_metrics(sae, lm, HOOK, [c], progress=False)
        alone.append(d["ce_loss_sae"] - d["ce_loss_clean"])
    gaps = ce_gap_by_context(per)
    np.testing.assert_allclose(gaps, alone, rtol=1e-5, atol=1e-6)
    assert np.ptp(alone) > 1e-3  # the contexts differ: the SE is not trivially 0
    assert ce_gap_se(per) == pytest.approx(np.std(alone, ddof=1) / np.sqrt(len(alone)), rel=1e-4)
    assert ce_gap_se({k: v[:1] for k, v in per.items()}) == 0.0  # one context: no spread measured


def test_encoder_model_uses_pooled_embedding(tiny_bert):
    ctx = _contexts(tiny_bert, n=4)
    exact, per = downstream_by_context(Identity(64), tiny_bert, HOOK, ctx, progress=False)
    assert exact["pooled_cos_sae"] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(per["n_ctx"], np.ones(4))
    assert per["cos_zero"].mean() == pytest.approx(exact["pooled_cos_zero"], rel=1e-12)
    assert exact["pooled_cos_recovered"] == pytest.approx(1.0, abs=1e-5)
    zero = downstream_metrics(Zero(64), tiny_bert, HOOK, ctx, exclude="none", progress=False)
    assert zero["pooled_cos_recovered"] == pytest.approx(0.0, abs=1e-5)


def test_eval_contexts_skip_the_cached_ones(tiny_llama):
    first = eval_contexts(tiny_llama.tokenizer, "builtin:pydocs", 24, 3)
    held_out = eval_contexts(tiny_llama.tokenizer, "builtin:pydocs", 24, 1, skip=2)
    assert len(first) == 3 and all(len(c) == 24 for c in first)
    np.testing.assert_array_equal(held_out[0], first[2])


def test_ignore_sets(tiny_gpt2, tiny_llama):
    tok = tiny_llama.tokenizer
    assert excluded_token_ids(tok, "none") == set()
    assert excluded_token_ids(tok, "bos") == {tok.bos_token_id}
    assert tok.eos_token_id in excluded_token_ids(tok, "special")
    # a cache manifest's tokenizer record gives the same set as the tokenizer
    record = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    assert excluded_token_ids(record, "special") == excluded_token_ids(tok, "special")
    with pytest.raises(ValueError, match=r"exclude='eos': choose one of \['special', 'bos', 'none'\]"):
        excluded_token_ids(tok, "eos")


def test_mean_ablation_matches_a_direct_computation(tiny_llama):
    """ce_loss_mean: the kept positions replaced by a given mean vector, BOS/EOS kept clean."""
    from saelens_lite.lm.hooks import replace

    lm = tiny_llama
    ctx = _contexts(lm, n=3)
    ids = torch.as_tensor(np.stack(ctx))
    mean_D = torch.linspace(-1, 1, 64)
    got = downstream_metrics(Identity(64), lm, HOOK, ctx, batch_size=2, mean_D=mean_D.numpy(), progress=False)
    keep = ~torch.isin(ids, torch.tensor(sorted(excluded_token_ids(lm.tokenizer, "special"))))
    with torch.no_grad():
        with replace(lm.model, HOOK, lambda a: torch.where(keep[..., None], mean_D.expand_as(a), a)):
            new = lm.model(input_ids=ids).logits.double()
    nll = -new.log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    want = nll[keep[:, :-1]].mean().item()
    assert got["ce_loss_mean"] == pytest.approx(want, rel=1e-6)
    # an exact SAE recovers everything against either reference
    assert got["ce_loss_recovered_mean"] == pytest.approx(1.0, abs=1e-6)
    assert got["ce_loss_mean"] != pytest.approx(got["ce_loss_zero"], abs=1e-3)


def test_evaluate_with_model_fills_downstream_keys(tmp_path, tiny_llama):
    from saelens_lite.cache.harvest import HarvestConfig, harvest

    cache = harvest(HarvestConfig(model="tiny-llama", hooks=[HOOK], tokens=300, context_size=24, device="cpu"),
                    tmp_path / "c", model=tiny_llama, progress=False)
    m = evaluate(Identity(64), cache, EvalConfig(ce_contexts=4, heldout_tokens=200, progress=False),
                  model=tiny_llama)
    assert m["fvu"] == pytest.approx(0.0, abs=1e-12) and m["l0"] > 0
    assert m["in_sample_fvu"] == pytest.approx(0.0, abs=1e-12)
    assert m["reconstruction_split"] == "held-out" and m["n_tokens"] == 200
    assert m["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-6) and m["kl_div"] < 1e-8
    assert m["ce_loss_recovered_mean"] == pytest.approx(1.0, abs=1e-6)
