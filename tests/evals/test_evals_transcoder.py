"""Transcoder evaluation: a transcoder equal to the MLP recovers all the loss (CE recovered 1,
KL 0, FVU 0), a zero one none of it; the mean ablation is the mean MLP output; the held-out
FVU of the MLP output equals a float64 recomputation; the summary says what replaced what."""

import copy
import json

import numpy as np
import pytest
import torch

from saelens_lite.cache.harvest import HarvestConfig, harvest
from saelens_lite.evals import evaluate, format_summary
from saelens_lite.evals.downstream import downstream_metrics
from saelens_lite.evals.heldout import eval_contexts
from saelens_lite.lm.hooks import replace_mlp
from saelens_lite.lm.tokens import excluded_token_ids

IN, OUT = "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"
S = 24


class _Cfg:
    def __init__(self, d):
        self.d_in, self.d_sae = d, d
        self.hook_name, self.target_hook = IN, OUT
        self.architecture = "hand-built"


class MLPTranscoder:
    """A "transcoder" whose forward is exactly block 1's MLP (a copy, so it does not trigger
    the model's own hooks); encode returns the input (one latent per dimension) and decode
    runs the MLP on it, so decode(encode(x)) is the forward, as the splice computes it."""

    def __init__(self, lm, scale: float = 1.0):
        self.mlp = copy.deepcopy(lm.model.model.layers[1].mlp)
        self.scale = scale
        self.cfg = _Cfg(lm.model.config.hidden_size)

    def encode(self, x):
        return x

    def decode(self, code):
        return self.scale * self.mlp(code)

    def __call__(self, x):
        return self.decode(self.encode(x))


def _contexts(lm, n=6):
    return eval_contexts(lm.tokenizer, "builtin:pydocs", S, n)


def test_the_mlp_itself_recovers_everything_and_zero_nothing(tiny_llama):
    lm = tiny_llama
    ctx = _contexts(lm)
    with torch.no_grad():
        exact = downstream_metrics(MLPTranscoder(lm), lm, OUT, ctx, source_hook=IN, progress=False)
        zero = downstream_metrics(MLPTranscoder(lm, scale=0.0), lm, OUT, ctx, source_hook=IN,
                                  exclude="none", progress=False)
        half = downstream_metrics(MLPTranscoder(lm, scale=0.5), lm, OUT, ctx, source_hook=IN, progress=False)
    assert exact["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert exact["kl_div"] == pytest.approx(0.0, abs=1e-8)
    assert exact["ce_loss_zero"] != pytest.approx(exact["ce_loss_clean"], abs=1e-4)
    assert zero["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-9)  # the MLP output zeroed
    assert zero["kl_div"] == pytest.approx(zero["kl_div_zero"], rel=1e-9)
    assert half["kl_div"] > 1e-6 and half["ce_loss_sae"] != pytest.approx(half["ce_loss_clean"], abs=1e-5)


def test_spliced_ce_equals_a_direct_mlp_replacement(tiny_llama):
    """ce_loss_sae: the MLP output replaced by 0.5 MLP(mlp_in) at kept positions, computed with
    replace_mlp by hand; the mean ablation puts a given vector in the MLP's place."""
    lm = tiny_llama
    ctx = _contexts(lm, n=3)
    ids = torch.as_tensor(np.stack(ctx))
    keep = ~torch.isin(ids, torch.tensor(sorted(excluded_token_ids(lm.tokenizer, "special"))))
    tc = MLPTranscoder(lm, scale=0.5)
    mean_D = torch.linspace(-1, 1, 64)
    got = downstream_metrics(tc, lm, OUT, ctx, batch_size=2, source_hook=IN, mean_D=mean_D.numpy(),
                             progress=False)

    def nll_mean(fn):
        with torch.no_grad(), replace_mlp(lm.model, 1, fn):
            logits = lm.model(input_ids=ids).logits.double()
        nll = -logits.log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
        return nll[keep[:, :-1]].mean().item()

    want = nll_mean(lambda x, clean: torch.where(keep[..., None], tc(x), clean))
    want_mean = nll_mean(lambda x, clean: torch.where(keep[..., None], mean_D.expand_as(clean), clean))
    assert got["ce_loss_sae"] == pytest.approx(want, rel=1e-6)
    assert got["ce_loss_mean"] == pytest.approx(want_mean, rel=1e-6)


@pytest.fixture
def pair_cache(tmp_path, tiny_llama):
    return harvest(HarvestConfig(model="tiny-llama", hooks=[IN, OUT], tokens=300, context_size=S, device="cpu"),
                   tmp_path / "c", model=tiny_llama, progress=False)


def test_evaluate_scores_the_mlp_output_and_says_it_replaces_the_mlp(tmp_path, tiny_llama, pair_cache):
    m = evaluate(MLPTranscoder(tiny_llama), pair_cache, model=tiny_llama, ce_contexts=3, heldout_tokens=200,
                 progress=False)
    assert m["reconstruction_split"] == "held-out" and m["n_tokens"] == 200
    assert m["fvu"] == pytest.approx(0.0, abs=1e-10) and m["in_sample_fvu"] == pytest.approx(0.0, abs=1e-10)
    assert m["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert m["ce_loss_recovered_mean"] == pytest.approx(1.0, abs=1e-6)
    assert m["target_hook"] == OUT and m["hook"] == IN
    text = format_summary(m)
    assert "transcoder blocks.1.hook_mlp_in -> blocks.1.hook_mlp_out (replaces the MLP)" in text


def test_heldout_fvu_of_the_mlp_output_equals_a_float64_recomputation(tmp_path, tiny_llama, pair_cache):
    tc = MLPTranscoder(tiny_llama, scale=0.5)
    m = evaluate(tc, pair_cache, model=tiny_llama, heldout_tokens=150, downstream=False, progress=False)
    big = harvest(HarvestConfig(model="tiny-llama", hooks=[IN, OUT], tokens=900, context_size=S, device="cpu"),
                  tmp_path / "big", model=tiny_llama, progress=False)
    after = np.flatnonzero(big.context_ids > int(pair_cache.context_ids[-1]))[:150]
    x = torch.as_tensor(np.asarray(big.activations(IN)[:])[after])
    y = np.asarray(big.activations(OUT)[:])[after].astype(np.float64)
    with torch.no_grad():
        y_hat = tc(x).double().numpy()
    want = ((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    # ||y - y/2||^2 = ||y||^2 / 4: a second way to the same number
    assert want == pytest.approx(0.25 * (y ** 2).sum() / ((y - y.mean(0)) ** 2).sum(), rel=1e-5)
    assert m["fvu"] == pytest.approx(want, rel=1e-6)


def test_a_cache_without_the_target_fails_naming_both_hooks(tmp_path, tiny_llama):
    cache = harvest(HarvestConfig(model="tiny-llama", hooks=[IN], tokens=100, context_size=S, device="cpu"),
                    tmp_path / "c", model=tiny_llama, progress=False)
    with pytest.raises(ValueError, match=r"blocks.1.hook_mlp_in -> blocks.1.hook_mlp_out.*lacks the target"):
        evaluate(MLPTranscoder(tiny_llama), cache, model=tiny_llama, progress=False)


def test_cli_harvest_train_eval_a_transcoder_end_to_end(tmp_path, capsys):
    from saelens_lite.cli import main

    hooks = ["blocks.2.hook_mlp_in", "blocks.2.hook_mlp_out"]
    assert main(["harvest", "--model", "tiny-gpt2", "--hooks", *hooks, "--tokens", "600", "--context-size", "24",
                 "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    assert main(["train", "--activations", str(tmp_path / "c"), "--hooks", hooks[0], "--target-hook", hooks[1],
                 "--skip", "--latents", "128", "--k", "4", "--tokens", "2048", "--batch-size", "256",
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    saved = json.loads((tmp_path / "run" / hooks[0] / "cfg.json").read_text())
    assert (saved["hook_name"], saved["target_hook"], saved["skip"]) == (hooks[0], hooks[1], True)
    assert main(["eval", "--sae", str(tmp_path / "run" / hooks[0]), "--activations", str(tmp_path / "c"),
                 "--out", str(tmp_path / "ev"), "--ce-contexts", "2", "--heldout-tokens", "200",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "transcoder blocks.2.hook_mlp_in -> blocks.2.hook_mlp_out (replaces the MLP)" in out
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["target_hook"] == hooks[1] and m["ce_loss_recovered"] is not None
