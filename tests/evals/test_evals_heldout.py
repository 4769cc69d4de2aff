"""Held-out reconstruction metrics: the rows come from contexts after the cache's last one, the
FVU equals a float64 NumPy re-computation on the same rows (harvested independently), and
every number says where it was measured."""

import logging

import numpy as np
import pytest
import torch

from saelens_lite.cache.harvest import HarvestConfig, harvest
from saelens_lite.evals import EvalConfig, evaluate, format_summary
from saelens_lite.saes import SAE, SAEConfig

HOOK = "blocks.1.hook_resid_post"
S = 24


def _fvu64(x, x_hat):
    x, x_hat = np.asarray(x, np.float64), np.asarray(x_hat, np.float64)
    return ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()


@pytest.fixture
def cache_and_sae(tmp_path, tiny_llama):
    cache = harvest(HarvestConfig(model="tiny-llama", hooks=[HOOK], tokens=400, context_size=S, device="cpu"),
                    tmp_path / "c", model=tiny_llama, progress=False)
    torch.manual_seed(0)
    sae = SAE.from_config(SAEConfig.build(architecture="topk", d_in=64, d_sae=256, k=8, hook_name=HOOK))
    return cache, sae


def test_heldout_fvu_equals_an_independent_float64_recomputation(tmp_path, tiny_llama, cache_and_sae):
    cache, sae = cache_and_sae
    m = evaluate(sae, cache, EvalConfig(heldout_tokens=300, ce_contexts=2, progress=False),
                  model=tiny_llama)
    # Independently: a second cache of the same corpus, long enough to hold the held-out rows,
    # whose rows after the first cache's contexts are exactly the held-out rows.
    big = harvest(HarvestConfig(model="tiny-llama", hooks=[HOOK], tokens=1200, context_size=S, device="cpu"),
                  tmp_path / "big", model=tiny_llama, progress=False)
    last_ctx = int(cache.context_ids[-1])
    after = np.flatnonzero(big.context_ids > last_ctx)[:300]
    assert len(after) == 300 and m["n_tokens"] == 300
    x = np.asarray(big.activations(HOOK)[:])[after]
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(torch.as_tensor(x))).double().numpy()
    assert m["fvu"] == pytest.approx(_fvu64(x, x_hat), rel=1e-9)
    # and the in-sample column is the cache's own rows
    xc = np.asarray(cache.activations(HOOK)[:])
    with torch.no_grad():
        xc_hat = sae.decode(sae.encode(torch.as_tensor(xc))).double().numpy()
    assert m["in_sample_fvu"] == pytest.approx(_fvu64(xc, xc_hat), rel=1e-9)
    assert m["fvu"] != pytest.approx(m["in_sample_fvu"], rel=1e-6)
    assert m["reconstruction_split"] == "held-out"
    assert "after the cache's contexts" in m["reconstruction_source"]


def test_summary_labels_where_each_number_was_measured(tiny_llama, cache_and_sae):
    cache, sae = cache_and_sae
    m = evaluate(sae, cache, EvalConfig(heldout_tokens=200, ce_contexts=2, progress=False),
                  model=tiny_llama)
    text = format_summary(m)
    assert "| metric | held-out | in-sample |" in text
    assert "reconstruction (held-out): 200 tokens of contexts" in text
    assert "CE loss recovered vs mean ablation" in text and "mean ablation uses the mean of the in-sample rows" in text


def test_without_a_model_the_figures_are_labelled_in_sample(tmp_path, cache_and_sae, caplog):
    cache, sae = cache_and_sae
    meta = cache.manifest["meta"]
    meta["model"] = None  # as if harvested by a model that cannot be named again
    arr = np.asarray(cache.activations(HOOK)[:])
    with caplog.at_level(logging.WARNING):
        m = evaluate(sae, arr, EvalConfig(progress=False))
    assert m["reconstruction_split"] == "given rows" and "in_sample_fvu" not in m
    assert "in-sample" in caplog.text and m["ce_loss_recovered"] is None


def test_exhausted_corpus_falls_back_and_says_in_sample(tmp_path, tiny_llama, caplog):
    corpus = tmp_path / "small.txt"
    corpus.write_text("a short corpus with a few words only. " * 40)
    cache = harvest(HarvestConfig(model="tiny-llama", hooks=[HOOK], tokens=10**6, context_size=S, device="cpu",
                                  dataset=str(corpus)), tmp_path / "c", model=tiny_llama, progress=False)
    sae = SAE.from_config(SAEConfig.build(architecture="topk", d_in=64, d_sae=128, k=4, hook_name=HOOK))
    with caplog.at_level(logging.WARNING):
        m = evaluate(sae, cache, EvalConfig(heldout_tokens=100, ce_contexts=2, progress=False),
                      model=tiny_llama)
    assert m["reconstruction_split"] == "in-sample"
    assert "IN-SAMPLE" in m["reconstruction_source"] and "no context left" in caplog.text


def test_cache_rows_follow_the_same_token_rule(tmp_path, tiny_llama):
    """A cache written with exclude=bos keeps EOS rows; evaluating it with the default rule
    leaves them out of the in-sample column, as the held-out rows and the CE loss do."""
    import json

    corpus = tmp_path / "docs.jsonl"  # short documents: EOS separators inside the contexts
    corpus.write_text("".join(json.dumps({"text": f"document {i} says hello."}) + "\n" for i in range(200)))
    cache = harvest(HarvestConfig(model="tiny-llama", hooks=[HOOK], tokens=600, context_size=S, device="cpu",
                                  exclude="bos", dataset=str(corpus)), tmp_path / "c", model=tiny_llama,
                    progress=False)
    eos = tiny_llama.tokenizer.eos_token_id
    n_eos = int((cache.token_ids == eos).sum())
    assert n_eos > 0
    sae = SAE.from_config(SAEConfig.build(architecture="topk", d_in=64, d_sae=128, k=4, hook_name=HOOK))
    special = evaluate(sae, cache, EvalConfig(heldout_tokens=0, downstream=False, progress=False),
                        model=tiny_llama)
    bos_only = evaluate(sae, cache, EvalConfig(heldout_tokens=0, downstream=False, exclude="bos",
                                               progress=False),
                         model=tiny_llama)
    assert bos_only["n_tokens"] == cache.n_tokens and special["n_tokens"] == cache.n_tokens - n_eos


def test_other_hook_than_trained_warns(tmp_path, tiny_llama, caplog):
    hooks = [HOOK, "blocks.0.hook_resid_post"]
    cache = harvest(HarvestConfig(model="tiny-llama", hooks=hooks, tokens=200, context_size=S, device="cpu"),
                    tmp_path / "c", model=tiny_llama, progress=False)
    sae = SAE.from_config(SAEConfig.build(architecture="topk", d_in=64, d_sae=128, k=4, hook_name=HOOK))
    with caplog.at_level(logging.WARNING):
        evaluate(sae, cache, EvalConfig(hook="blocks.0.hook_resid_post", downstream=False,
                                        heldout_tokens=0, progress=False))
    assert f"trained on {HOOK} but is evaluated on blocks.0.hook_resid_post" in caplog.text
