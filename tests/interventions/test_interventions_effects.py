"""The JSON layer of the interventions and the per-token loss effects of edits: token_loss_effects
against a float64 recomputation (the hook's activation moved by (c' - c) @ W_dec by hand, the
losses from log_softmax), no edit gives exactly zero deltas, totals are the means of the scored
rows; every to_dict() is strict JSON with the documented keys and the objects' values; a
dashboard site's max activations read back as the site wrote them."""

import json
import math
import re

import helpers
import pytest
import torch

from saelens_lite.interventions import (
    ablate,
    ablation_check,
    add_direction,
    attribute,
    clamp,
    generate,
    load_site_stats,
    scale,
    token_loss_effects,
)
from saelens_lite.lm.hooks import capture, replace
from saelens_lite.saes import SAE

pytestmark = pytest.mark.usefixtures("one_thread")

D, F = 64, 128
HOOK, HOOK2 = "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"
TEXT = "the cat sat on the mat and the dog ran"


def make_sae(hook=HOOK, seed=0, dtype=torch.float32) -> SAE:
    """Non-trivial biases and decoder norms."""
    return helpers.make_sae("topk", seed=seed, bias_std=0.05, spread_w_dec=True, d_in=D, d_sae=F, k=8,
                            hook_name=hook).to(dtype).eval()


def strict_json(d: dict) -> dict:
    return json.loads(json.dumps(d, allow_nan=False))


@pytest.fixture(scope="module")
def lm():
    from saelens_lite.lm.load import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def lm64():
    from saelens_lite.lm.load import load_model

    return load_model("tiny-llama", dtype=torch.float64)


# ------------------------------------------------------------------ token_loss_effects


def oracle(lm, sae, text, edit):
    """Per-token next-token losses, clean and with the residual at HOOK moved by
    (edit(c) - c) @ W_dec on the non-BOS tokens, computed directly in the model's dtype."""
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        x = capture(lm.model, {"input_ids": ids}, [HOOK])[HOOK]
        c = sae.encode(x)
        keep = (ids != lm.tokenizer.bos_token_id)[..., None]
        dx = (edit(c.clone()) - c) @ sae.W_dec * keep
        clean = lm.model(input_ids=ids).logits
        with replace(lm.model, HOOK, lambda a: a + dx):
            edited = lm.model(input_ids=ids).logits

    def loss(logits):
        logp = torch.log_softmax(logits[0, :-1], -1)
        return -logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]]

    return c[0] * keep[0], loss(clean), loss(edited)


def test_token_loss_effects_match_a_float64_recomputation(lm64):
    sae = make_sae(dtype=torch.float64)
    ids = lm64.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        c = sae.encode(capture(lm64.model, {"input_ids": ids}, [HOOK])[HOOK])[0, 1:]
    f_top, f2 = int(c.sum(0).argmax()), int(c.sum(0).argsort()[-2])

    def edit(c_BSF):
        c_BSF[..., f_top] = 0.0
        c_BSF[:, [2, 3], f2] = 0.5
        return c_BSF

    r = token_loss_effects(lm64, TEXT, sae, [ablate(f_top), clamp(f2, 0.5, positions=[2, 3])])
    acts, clean, edited = oracle(lm64, sae, TEXT, edit)
    assert r.features == [(HOOK, f_top), (HOOK, f2)]
    assert r.tokens[0].loss_clean is None and r.tokens[0].delta is None
    for s, t in enumerate(r.tokens):
        assert t.position == s and t.token_id == int(ids[0, s])
        assert t.activations == pytest.approx([float(acts[s, f_top]), float(acts[s, f2])], abs=1e-12)
        if s:
            assert t.loss_clean == pytest.approx(float(clean[s - 1]), abs=1e-10)
            assert t.loss_edited == pytest.approx(float(edited[s - 1]), abs=1e-10)
            assert t.delta == pytest.approx(t.loss_edited - t.loss_clean, abs=1e-12)
    assert r.tokens[0].activations == [0.0, 0.0]  # BOS: no SAE spliced there
    assert max(abs(t.delta) for t in r.tokens[1:]) > 1e-3  # the edit matters: the check has teeth


def test_totals_are_means_over_the_scored_tokens(lm):
    r = token_loss_effects(lm, TEXT, make_sae(), [ablate(5), scale(7, 3.0)])
    scored = [t for t in r.tokens if t.scored]
    # BOS starts the text: token 1, predicted from BOS, is not scored (as evals.downstream)
    assert [t.scored for t in r.tokens[:2]] == [False, False] and all(t.scored for t in r.tokens[2:])
    assert r.n_scored == len(scored) == len(r.tokens) - 2
    assert r.loss_clean == pytest.approx(sum(t.loss_clean for t in scored) / len(scored), rel=1e-12)
    assert r.loss_edited == pytest.approx(sum(t.loss_edited for t in scored) / len(scored), rel=1e-12)
    assert r.delta_sum == pytest.approx(sum(t.delta for t in scored), rel=1e-9, abs=1e-12)
    assert r.delta == pytest.approx(r.loss_edited - r.loss_clean, abs=1e-9)


def test_without_an_edit_every_delta_is_exactly_zero_with_two_saes(lm):
    saes = [make_sae(), make_sae(HOOK2, seed=1)]
    r = token_loss_effects(lm, TEXT, saes, [])
    assert r.features == [] and all(t.activations == [] for t in r.tokens)
    assert all(t.delta == 0.0 for t in r.tokens[1:]) and r.delta_sum == 0.0
    r2 = token_loss_effects(lm, TEXT, saes, [ablate(3, hook=HOOK2), ablate(4, hook=HOOK)])
    assert r2.features == [(HOOK2, 3), (HOOK, 4)]
    assert [t.loss_clean for t in r2.tokens] == [t.loss_clean for t in r.tokens]


def test_token_loss_effects_to_dict_is_strict_json_with_the_documented_keys(lm):
    r = token_loss_effects(lm, TEXT, make_sae(), [add_direction(9, 2.0)])
    d = strict_json(r.to_dict())
    assert set(d) == {"text", "features", "edits", "tokens", "totals"}
    assert d["features"] == [{"hook": HOOK, "feature": 9}]
    assert d["edits"][0] | {"code_value": None} == {"kind": "add", "hook": HOOK, "feature": 9, "value": 2.0,
                                                     "positions": None, "unit": "unit_direction",
                                                     "code_value": None}
    assert d["tokens"][0]["loss_clean"] is None
    assert [t["token"] for t in d["tokens"]] == [t.token for t in r.tokens]
    assert d["tokens"][3] == r.tokens[3]._asdict()
    assert d["totals"] == {"n_scored": r.n_scored, "loss_clean": r.loss_clean, "loss_edited": r.loss_edited,
                           "delta": r.delta, "delta_sum": r.delta_sum}


def test_a_text_without_scored_tokens_gives_null_means(lm):
    d = strict_json(token_loss_effects(lm, "a", make_sae(), [ablate(1)]).to_dict())  # <s> a
    assert d["totals"]["n_scored"] == 0 and d["totals"]["loss_clean"] is None and d["totals"]["delta"] is None


def test_token_loss_effects_bad_inputs_name_the_value(lm):
    with pytest.raises(ValueError, match=r"feature=500 is out of range .* 0\.\.127"):
        token_loss_effects(lm, TEXT, make_sae(), [ablate(500)])
    with pytest.raises(ValueError, match="text has 1 token"):
        token_loss_effects(lm, "", make_sae(), [ablate(1)])


# ------------------------------------------------------------------ to_dict of the other results


def test_generation_result_to_dict(lm):
    g = generate(lm, ["the cat", "a dog ran"], make_sae(), [add_direction(3, 4.0)], max_new_tokens=5)
    d = strict_json(g.to_dict())
    assert set(d) == {"max_new_tokens", "temperature", "seed", "edits", "continuations"}
    assert (d["max_new_tokens"], d["temperature"], d["seed"]) == (5, 0.0, 0)
    assert d["edits"] == [g.edits[0].describe()] and d["edits"][0]["unit"] == "unit_direction"
    assert [c["prompt"] for c in d["continuations"]] == ["the cat", "a dog ran"]
    for c, cont in zip(d["continuations"], g.continuations):
        assert c == {"prompt": cont.prompt, "baseline": cont.baseline, "edited": cont.edited,
                     "baseline_ids": cont.baseline_ids, "edited_ids": cont.edited_ids}


def test_attribution_to_dict_ranks_cuts_and_names_the_target(lm):
    a = attribute(lm, TEXT, make_sae(), "t", contrast="a")
    d = strict_json(a.to_dict(top=5))
    assert set(d) == {"prompt", "tokens", "position", "target", "contrast", "metric", "n_features",
                      "features", "errors", "error_totals"}
    assert d["target"] == {"id": a.target, "token": "t"} and d["contrast"] == {"id": a.contrast, "token": "a"}
    assert d["position"] == len(d["tokens"]) - 1 and d["metric"] == a.metric
    assert d["n_features"] == len(a.features) > 5 and len(d["features"]) == 5
    assert d["features"][0] == {"hook": HOOK, "position": a.features[0].position, "token": a.features[0].token,
                                "feature": a.features[0].feature, "activation": a.features[0].activation,
                                "attribution": a.features[0].attribution}
    assert d["tokens"][d["features"][0]["position"]] == d["features"][0]["token"]
    assert len(d["errors"]) == len(a.errors) and d["error_totals"] == {HOOK: pytest.approx(
        sum(e.attribution for e in a.errors))}
    assert len(strict_json(a.to_dict())["features"]) == len(a.features)
    assert strict_json(attribute(lm, TEXT, make_sae(), "t").to_dict())["contrast"] is None


def test_attribution_tokens_are_decoded_text_not_byte_level_pieces(tiny_gpt2):
    a = attribute(tiny_gpt2, "a b", make_sae(), " ")  # byte-level: the space is the piece 'Ġ'
    assert tiny_gpt2.tokenizer.convert_ids_to_tokens(a.target) == "Ġ"
    assert a.tokens == ["a", " ", "b"] and a.target_token == " "


def test_ablation_check_to_dict(lm):
    chk = ablation_check(lm, TEXT, make_sae(), "t", top_n=4)
    d = strict_json(chk.to_dict())
    assert d["spearman"] == chk.spearman
    assert [n["measured"] for n in d["nodes"]] == chk.measured
    assert [n["feature"] for n in d["nodes"]] == [n.feature for n in chk.nodes]
    assert chk._replace(spearman=math.nan).to_dict()["spearman"] is None


# ------------------------------------------------------------------ stats from a dashboard site


def test_site_stats_read_back_the_max_activations_the_site_shows(lm, tmp_path):
    from saelens_lite.cache.harvest import HarvestConfig, harvest
    from saelens_lite.dashboards import build_dashboard

    cache = harvest(HarvestConfig(model="tiny-llama", hooks=[HOOK], tokens=600, context_size=30),
                    tmp_path / "acts", model=lm, progress=False)
    sae = make_sae()
    build_dashboard(sae, cache, tmp_path / "site", model=lm, progress=False, n_top=3, n_quantiles=2,
                    n_per_quantile=1, n_neighbours=0, n_logits=0)
    st = load_site_stats(tmp_path / "site")
    assert st.hook == HOOK and st.max_F.shape == (F,)
    with torch.no_grad():  # every cached row encoded at once: the max the site should show
        max_F = sae.encode(cache.activations(HOOK).torch().float()).amax(0).numpy()
    assert st.max_F == pytest.approx(max_F, rel=1e-5, abs=1e-7)  # saved in float32, not rounded
    r = generate(lm, "the cat", sae, [add_direction(int(st.max_F.argmax()), 1.0)], stats=st, max_new_tokens=1)
    assert r.edits[0].unit == "max_activation" and r.edits[0].code_value == pytest.approx(st.max_F.max())


def test_site_stats_of_a_folder_that_is_no_site(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path)) + ".*saelens-lite dashboard"):
        load_site_stats(tmp_path)
    (tmp_path / "data").mkdir()  # a site written before the statistics were saved with it
    (tmp_path / "data" / "meta.js").write_text('saeMeta({"format": 1});\n')
    with pytest.raises(FileNotFoundError, match="built before.*rebuild it with saelens-lite dashboard"):
        load_site_stats(tmp_path)
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "features.json").write_text('{"format": 99}')
    with pytest.raises(ValueError, match="features format 99"):
        load_site_stats(tmp_path)
