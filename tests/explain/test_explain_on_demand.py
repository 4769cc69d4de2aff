"""Explanations on demand (the served dashboard's "Explain this feature") and batched scoring:
the on-demand record equals the batch run's for the same feature, batching changes no score,
a local model's batched generation gives the one-at-a-time answers, and /api/explain answers
over HTTP with the record, keeps it, and refuses bad requests naming the field. The synthetic
SAE and cache: tests/explain/_explain_worker.py."""

import http.client
import json

import _explain_worker as synth
import pytest

from saelens_lite.cache import ActivationCache
from saelens_lite.explain import ExampleSource, ExplainConfig, explain, read_records
from saelens_lite.explain.chat import HFChat
from saelens_lite.explain.embedding import SentenceEncoder
from saelens_lite.explain.explainers import TemplateExplainer
from saelens_lite.explain.on_demand import FeatureExplainer
from saelens_lite.explain.scorers import EmbeddingScorer
from saelens_lite.lm.load import load_model
from saelens_lite.saes import SAE

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = ExplainConfig(n_explain=4, n_heldout=6, n_nonactivating=6, batch_features=3)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synth.build(tmp_path_factory.mktemp("ondemand"))


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def source(synthetic, lm):
    sae_dir, cache_dir = synthetic
    src = ExampleSource(SAE.load(sae_dir).eval(), ActivationCache(cache_dir), lm, CFG, progress=False)
    yield src
    src.close()


def test_embedding_scores_of_a_batch_equal_one_feature_at_a_time(source):
    scorer = EmbeddingScorer(SentenceEncoder())
    items = [([synth.ORACLE[f], synth.ORACLE[f % 4 + 1]], source.examples(f)) for f in (1, 2, 3, 4)]
    batched = scorer.score_many(items)
    alone = [scorer.score(texts, ex) for texts, ex in items]
    for b, a in zip(batched, alone):
        for x, y in zip(b, a):
            assert x["auroc"] == pytest.approx(y["auroc"], abs=1e-3)  # float32 encoder, other batch
    assert [b[0]["auroc"] for b in batched] != [b[1]["auroc"] for b in batched]


@pytest.mark.slow
def test_batched_generation_gives_the_one_at_a_time_answers():
    """SmolLM2 (the byte-level tiny model has no yes/no tokens to judge with): prompts of unequal
    lengths, left-padded together, answer as they do alone."""
    chat = HFChat("smollm2-135m", max_new_tokens=6, batch_size=3)
    msgs = [[{"role": "user", "content": q}] for q in
            ("Name a colour.", "What is the capital of France? Answer in one word.",
             "Say hello.", "Count from one to three, in words, separated by commas.")]
    assert chat.complete_many(msgs, prefix="A:") == [chat.complete(m, prefix="A:") for m in msgs]
    assert chat.p_yes(msgs) == pytest.approx([chat.p_yes([m])[0] for m in msgs], abs=1e-4)


def test_on_demand_record_equals_the_batch_runs(synthetic, lm, tmp_path):
    sae_dir, cache_dir = synthetic
    explain(sae_dir, cache_dir, tmp_path / "batch", features="1,2", config=CFG, model=lm,
            progress=False)
    batch = {r["feature"]: r for r in read_records(tmp_path / "batch" / "explanations.jsonl")}
    fe = FeatureExplainer(SAE.load(sae_dir).eval(), ActivationCache(cache_dir), lm, config=CFG,
                          out=tmp_path / "live")
    try:
        r = fe.explain(2)
        assert r["explanation"] == batch[2]["explanation"] == TemplateExplainer().explain(
            fe._source().examples(2))
        assert r["examples"] == batch[2]["examples"] and r["density"] == batch[2]["density"]
        assert r["scores"]["embedding"]["auroc"] == pytest.approx(
            batch[2]["scores"]["embedding"]["auroc"], abs=1e-3)
        g = r["shuffled"]["feature"]
        assert g != 2 and g in fe._source().alive.tolist()
        assert r["shuffled"]["explanation"] == TemplateExplainer().explain(fe._source().examples(g))
        with pytest.raises(ValueError, match="outside this SAE's 8 features"):
            fe.explain(8)
    finally:
        fe.close()
    # kept: a new explainer on the same folder answers from the file
    again = FeatureExplainer(SAE.load(sae_dir).eval(), ActivationCache(cache_dir), lm, config=CFG,
                             out=tmp_path / "live", explainer=_Refuses())
    with pytest.raises(ValueError, match="other settings"):  # another explainer: another run
        again.explain(2)
    again.close()
    same = FeatureExplainer(SAE.load(sae_dir).eval(), ActivationCache(cache_dir), lm, config=CFG,
                            out=tmp_path / "live")
    try:
        same.explainer = _Refuses(spec="template")  # would fail if asked to explain
        assert same.explain(2) == r
        assert len(read_records(tmp_path / "live" / "explanations.jsonl")) == 1
    finally:
        same.close()


class _Refuses:
    chat = None

    def __init__(self, spec="refuses"):
        self.spec = spec

    def explain(self, ex):
        raise AssertionError("asked to explain a feature that was already explained")


def _post(port, path, body, ctype="application/json"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        c.request("POST", path, json.dumps(body).encode(), {"Content-Type": ctype})
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def _get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def test_api_explain_over_http(synthetic, lm, tmp_path):
    from saelens_lite.dashboards import build_dashboard
    from saelens_lite.dashboards.server import load_explainer, load_live, make_server

    sae_dir, cache_dir = synthetic
    site = tmp_path / "site"
    build_dashboard(sae_dir, cache_dir, site, model=lm, progress=False, n_neighbours=0)
    live = load_live(site, lm, sae_dir)
    with make_server(site, port=0, live=live) as srv:  # no cache given: the button is off
        port = srv.server_address[1]
        assert _get(port, "/api/info")[1]["explain"] is False
        status, body = _post(port, "/api/explain", {"feature": 1})
        assert status == 404 and "--activations" in body["error"]
    expl = load_explainer(site, live, cache_dir, explainer="template", scorers="embedding",
                          sae_path=str(sae_dir))
    with make_server(site, port=0, live=live, explainer=expl) as srv:
        port = srv.server_address[1]
        assert _get(port, "/api/info")[1]["explain"] == {"explainer": "template", "scorers": ["embedding"]}
        status, body = _post(port, "/api/explain", {"feature": 1})
        assert status == 200, body
        stored = read_records(site / "live-explanations" / "explanations.jsonl")
        assert len(stored) == 1 and body["text"] == stored[0]["explanation"]
        assert body["feature"] == 1 and set(body["scores"]["embedding"]) >= {"auroc", "shuffled_auroc"}
        assert body["shuffled"]["feature"] not in (None, 1)
        assert _post(port, "/api/explain", {"feature": 1}) == (200, body)  # kept, not redone
        for bad, field in (({"feature": 8}, "feature"), ({"feature": -1}, "feature"),
                           ({"feature": "1"}, "feature"), ({"feature": 1, "x": 2}, "x")):
            status, err = _post(port, "/api/explain", bad)
            assert status == 400 and err["field"] == field, (bad, err)
        assert _post(port, "/api/explain", {"feature": 1}, ctype="text/plain")[0] == 415
