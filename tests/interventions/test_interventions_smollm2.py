"""Interventions on the real SmolLM2-135M with two quickly trained TopK SAEs (blocks 9 and 29):
the unedited splice keeps the logits, an ablation moves the residual by exactly -c_f W_dec_f,
steering raises the top boosted token, greedy generation is the model's own, and attribution
tracks measured ablations (Spearman floor below)."""

import pytest
import torch

from saelens_lite.features.logits import logit_effects
from saelens_lite.interventions import (
    ablate,
    ablation_check,
    add_direction,
    attribute,
    generate,
    spliced,
)
from saelens_lite.lm.hooks import capture

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

MID, LAST = "blocks.9.hook_resid_post", "blocks.29.hook_resid_post"


@pytest.fixture(scope="module")
def saes(smollm2, tmp_path_factory, one_thread):
    """{hook: TopK SAE (x4, k=32)} trained on 4,096 harvested tokens, and {hook: max_F} over them
    (~35 s on one core)."""
    from saelens_lite.cache.harvest import HarvestConfig, harvest
    from saelens_lite.saes import TopKConfig
    from saelens_lite.training import TrainConfig, train

    tmp = tmp_path_factory.mktemp("smollm2_interventions")
    cache = harvest(HarvestConfig(model="smollm2-135m", hooks=[MID, LAST], tokens=4096,
                                  context_size=128, device="cpu"), tmp / "c", model=smollm2,
                    progress=False)
    trained = train(TrainConfig(sae=TopKConfig(k=32), hooks=[MID, LAST], expansion=4,
                                tokens=4 * 4096, batch_size=512, warmup_steps=10, seed=0, dtype="float32",
                                checkpoint_every=0, progress=False, out_dir=str(tmp / "run")), cache)
    # float32: the same SAE on every CPU (auto trains in bf16 on some); the numbers quoted below are its
    with torch.no_grad():
        max_F = {h: trained[h].encode(cache.activations(h).torch().float()).amax(0) for h in trained}
    return trained, max_F


def test_unedited_splice_keeps_smollm2_logits_on_a_padded_batch(smollm2, saes):
    lm = smollm2
    enc = lm.tokenizer(["The weather today is", "A much longer prompt about the city of Paris"],
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        clean = lm.model(**enc).logits
        with spliced(lm, saes[0]):
            same = lm.model(**enc).logits
        with spliced(lm, saes[0], keep_error=False):
            without_error = lm.model(**enc).logits
    keep = enc["attention_mask"].bool()
    assert (same - clean)[keep].abs().max() <= 1e-4
    assert (without_error - clean)[keep].abs().max() > 1.0  # the SAEs really are spliced


def test_ablation_moves_smollm2_residual_by_minus_code_times_decoder_row(smollm2, saes):
    lm, sae = smollm2, saes[0][MID]
    ids = lm.tokenizer(["The Eiffel Tower is in the city of"], return_tensors="pt")["input_ids"]
    x = capture(lm.model, {"input_ids": ids}, [MID])[MID]
    with torch.no_grad():
        c = sae.encode(x)[0].double()
    f = int(c[-1].argmax())
    with spliced(lm, {MID: sae}, [ablate(f)]):
        got = capture(lm.model, {"input_ids": ids}, [MID])[MID][0].double() - x[0].double()
    expected = -c[:, f:f + 1] * sae.W_dec[f].detach().double()
    assert expected.abs().max() > 0.1
    assert (got - expected).abs().max() <= 1e-5 * x.abs().max()


def test_steering_raises_the_logit_of_each_features_top_boosted_token(smollm2, saes):
    """At the last block the decoder direction reaches the unembedding through the final norm
    only, so the dashboard's logit effect (W_dec_f * g @ W_U^T) predicts what steering does."""
    lm = smollm2
    sae, max_F = saes[0][LAST], saes[1][LAST]
    _, top_ids, _, _ = logit_effects(sae.W_dec.detach(), lm, 1)
    ids = lm.tokenizer(["The weather today is"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        clean = lm.model(input_ids=ids).logits[0, -1]
    for f in max_F.argsort(descending=True)[:5].tolist():
        tok = int(top_ids[f, 0])
        with torch.no_grad(), spliced(lm, {LAST: sae}, [add_direction(f, 2.0)],
                                      stats={LAST: max_F}) as state:
            steered = lm.model(input_ids=ids).logits[0, -1]
        assert state.edits[0].unit == "max_activation"
        delta = steered - clean
        assert delta[tok] > delta.mean() + 3 * delta.std()
        above_clean = int((clean > clean[tok]).sum())
        assert int((steered > steered[tok]).sum()) < above_clean or above_clean == 0  # ranks up, or was first


def test_greedy_generation_is_smollm2s_own_and_steering_changes_it(smollm2, saes):
    lm = smollm2
    sae, max_F = saes[0][LAST], saes[1][LAST]
    prompt = "The weather today is"
    enc = lm.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        own = lm.model.generate(**enc, max_new_tokens=10, do_sample=False)[0, enc["input_ids"].shape[1]:]
    plain = generate(lm, prompt, saes[0], max_new_tokens=10)
    (c,) = plain.continuations
    assert c.baseline_ids == c.edited_ids == own.tolist()[: len(c.baseline_ids)]
    f = int(max_F.argmax())
    steered = generate(lm, [prompt], {LAST: sae}, [add_direction(f, 4.0)], stats={LAST: max_F},
                       max_new_tokens=10, temperature=0.8, seed=0)
    again = generate(lm, [prompt], {LAST: sae}, [add_direction(f, 4.0)], stats={LAST: max_F},
                     max_new_tokens=10, temperature=0.8, seed=0)
    assert steered.continuations == again.continuations
    assert steered.continuations[0].edited_ids != steered.continuations[0].baseline_ids


# Attribution vs ablation. For each prompt, Spearman's rank correlation between the attribution
# (c * dm/dc) and the measured m(clean) - m(feature ablated at that position) of the top 20
# (position, feature) nodes of the block-9 SAE, the error term kept. Measured with this fixture's
# SAE: 0.92 / 0.86 / 0.90 on the three prompts below, signs 20/20 each; with an SAE trained twice
# as long, 0.84 / 0.87 / 0.92, and 0.78 for " Paris" against " Rome". Not 1 because attribution
# is a first-order estimate: zeroing a feature is a large step through 20 nonlinear blocks
# (attention re-weighting, the final norm), which shrinks some effects several-fold (-0.75
# predicted, -0.23 measured), and the top-20 attributions lie within a factor ~2-3 of each
# other, so modest errors reorder them. The floors leave room for the SAE's
# run-to-run variation (thread count, kernel order) while still failing if attribution and
# ablation disagree in sign or scale (a wrong gradient, a missing error term, an edit at the
# wrong position gives ~0).
PROMPTS = [
    ("The Eiffel Tower is in the city of", " Paris", None),
    ("When Mary and John went to the store, John gave a drink to", " Mary", " John"),
    ("The capital of Germany is", " Berlin", None),
]
SPEARMAN_FLOOR, SPEARMAN_MEAN_FLOOR = 0.6, 0.75


def test_attribution_tracks_measured_ablation_on_smollm2(smollm2, saes):
    lm, sae = smollm2, {MID: saes[0][MID]}
    rhos = []
    for prompt, target, contrast in PROMPTS:
        att = attribute(lm, prompt, sae, target, contrast=contrast)
        check = ablation_check(lm, prompt, sae, target, contrast=contrast, top_n=20,
                               attribution=att)
        signs = sum((a.attribution > 0) == (m > 0) for a, m in zip(check.nodes, check.measured))
        print(f"{prompt!r} -> {target!r}: spearman {check.spearman:.3f}, signs {signs}/20, "
              f"error total {att.error_totals()[MID]:+.3f}")
        assert signs >= 15
        rhos.append(check.spearman)
    assert min(rhos) >= SPEARMAN_FLOOR and sum(rhos) / len(rhos) >= SPEARMAN_MEAN_FLOOR


def test_attribution_with_both_saes_has_nodes_at_each_hook_and_unchanged_upstream(smollm2, saes):
    """The block-29 splice (error term kept) is the identity in value and in gradient, so the
    block-9 attributions are the same with or without it."""
    lm, prompt = smollm2, "The capital of Germany is"
    both = attribute(lm, prompt, saes[0], " Berlin")
    alone = attribute(lm, prompt, {MID: saes[0][MID]}, " Berlin")
    assert {a.hook for a in both.features} == {MID, LAST}
    assert set(both.error_totals()) == {MID, LAST}
    scale = alone.feature_attr[MID].abs().max()
    assert (both.feature_attr[MID] - alone.feature_attr[MID]).abs().max() <= 1e-3 * scale
    assert both.metric == pytest.approx(alone.metric, abs=1e-3)
