"""The served dashboard's intervention endpoints, over HTTP against a real uvicorn server (tiny
llama, a tiny TopK SAE and a site built by build_dashboard): each answer equals the Python API's
(saelens_lite.interventions) on the same inputs, every bound is answered by a 400 JSON error
naming the field, and concurrent requests of every kind each get their own answer."""

import http.client
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from saelens_lite.dashboards import build_dashboard
from saelens_lite.dashboards.live import LIMITS, LiveModel, RequestError
from saelens_lite.dashboards.server import load_live, make_server
from saelens_lite.interventions import (
    ablate,
    add_direction,
    attribute,
    generate,
    load_site_stats,
    token_loss_effects,
)

pytestmark = pytest.mark.usefixtures("one_thread")
HOOK = "blocks.1.hook_resid_post"
PROMPT = "def f(x): return"


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from saelens_lite.cache.harvest import HarvestConfig, harvest
    from saelens_lite.lm.load import load_model
    from saelens_lite.saes import SAE, SAEConfig

    lm = load_model("tiny-llama")
    tmp = tmp_path_factory.mktemp("interventions")
    cache = harvest(HarvestConfig(model="tiny-llama", hooks=[HOOK], tokens=1200, context_size=40),
                    tmp / "cache", model=lm, progress=False)
    torch.manual_seed(0)
    sae = SAE.from_config(SAEConfig.build(architecture="topk", d_in=64, d_sae=120, k=6, hook_name=HOOK))
    build_dashboard(sae, cache, tmp / "site", model=lm, progress=False, shard_features=64, n_neighbours=0)
    return lm, sae, tmp / "site"


@pytest.fixture(scope="module")
def server(parts):
    lm, sae, site = parts
    with make_server(site, port=0, live=load_live(site, lm, sae)) as srv:
        yield srv.server_address[1]


def post(port, path, body, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        c.request("POST", path, data, {"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def live_feature(lm, sae, text=PROMPT):
    """A feature that fires on ``text`` (and its first position there)."""
    from saelens_lite.lm.hooks import capture, resolve_hooks

    ids = lm.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        code_SF = sae.encode(capture(lm.model, dict(ids), resolve_hooks(lm.model, [HOOK]))[HOOK][0])
    s, f = (code_SF[1:] > 0).nonzero()[0].tolist()  # skip BOS: excluded from the splice
    return f, s + 1


def test_info_says_what_the_server_can_do(server):
    c = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    c.request("GET", "/api/info")
    info = json.loads(c.getresponse().read())
    c.close()
    assert info["interventions"] and info["encode"]
    assert info["n_features"] == 120 and info["hook"] == HOOK
    assert info["strength_unit"] == "max_activation"
    assert info["limits"]["max_new_tokens"] == LIMITS.max_new_tokens


def test_the_api_reference_lists_every_endpoint_with_its_bounds(server):
    c = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    c.request("GET", "/openapi.json")
    spec = json.loads(c.getresponse().read())
    c.request("GET", "/docs")
    page = c.getresponse().read().decode()
    c.close()
    assert {"/api/info", "/api/encode", "/api/steer", "/api/ablate", "/api/attribute"} <= set(spec["paths"])
    steer = spec["components"]["schemas"]["SteerRequest"]["properties"]
    assert steer["max_new_tokens"]["maximum"] == LIMITS.max_new_tokens
    assert steer["strength"]["maximum"] == LIMITS.max_strength
    assert f"integer, &gt;= 1, &lt;= {LIMITS.max_new_tokens}, default 24" in page
    assert "<code>target</code></td><td>string|null, chars &gt;= 1, chars &lt;= 64<" in page  # optional
    assert "<script" not in page


def test_steer_answers_the_python_api_with_strength_in_max_activation_units(server, parts):
    lm, sae, site = parts
    max_F = load_site_stats(site).max_F
    f = int(np.argmax(max_F))
    req = {"prompt": PROMPT, "feature": f, "strength": 6.0, "max_new_tokens": 12}
    status, out = post(server, "/api/steer", req)
    assert status == 200, out
    ref = generate(lm, PROMPT, sae, [add_direction(f, 6.0)], max_new_tokens=12, stats=max_F)
    assert out["generation"] == json.loads(json.dumps(ref.to_dict()))
    assert (out["baseline"], out["steered"]) == (ref.continuations[0].baseline, ref.continuations[0].edited)
    assert out["unit"] == "max_activation" and out["max_activation"] == pytest.approx(max_F[f])
    assert out["generation"]["edits"][0]["code_value"] == pytest.approx(6.0 * max_F[f])
    assert out["baseline"] != out["steered"]  # 6x the feature's max moves this model
    # strength 0: the splice with its error term is the clean model
    status, zero = post(server, "/api/steer", {**req, "strength": 0.0})
    assert zero["steered"] == zero["baseline"] == out["baseline"]


def test_steer_sampling_is_reproducible_under_a_seed(server, parts):
    f = int(np.argmax(load_site_stats(parts[2]).max_F))
    req = {"prompt": PROMPT, "feature": f, "strength": 2.0, "max_new_tokens": 10, "temperature": 1.0}
    a, b = (post(server, "/api/steer", {**req, "seed": 7})[1] for _ in range(2))
    c = post(server, "/api/steer", {**req, "seed": 8})[1]
    assert a == b
    assert c["generation"]["continuations"] != a["generation"]["continuations"]


def test_ablate_gives_the_per_token_loss_change_of_the_python_api(server, parts):
    lm, sae, _ = parts
    text = "def f(x): return x + 1"
    f, first = live_feature(lm, sae, text)
    status, out = post(server, "/api/ablate", {"text": text, "feature": f})
    assert status == 200, out
    ref = json.loads(json.dumps(token_loss_effects(lm, text, sae, [ablate(f)]).to_dict()))
    assert out == {"feature": f, **ref}
    tokens = out["tokens"]
    assert "".join(t["token"] for t in tokens[1:]) == text
    assert tokens[first]["activations"][0] > 0
    # causal model: tokens up to the first firing cannot change; a later one does
    assert all(t["delta"] == 0 for t in tokens[1:first + 1])
    assert any(t["delta"] != 0 for t in tokens[first + 1:])


def test_attribute_ranks_features_and_links_them_by_index(server, parts):
    lm, sae, _ = parts
    status, out = post(server, "/api/attribute", {"prompt": PROMPT, "top": 5})
    assert status == 200, out
    with torch.no_grad():
        predicted = int(lm.model(**lm.tokenizer(PROMPT, return_tensors="pt")).logits[0, -1].argmax())
    ref = attribute(lm, PROMPT, sae, predicted)
    assert out["target"]["id"] == predicted and out["target_is_prediction"]
    expected = {k: v for k, v in json.loads(json.dumps(ref.to_dict(top=5))).items()}
    assert {k: out[k] for k in expected} == expected
    # by_feature: the node attributions summed per feature, ranked by magnitude
    sums: dict[int, float] = {}
    for n in ref.features:
        sums[n.feature] = sums.get(n.feature, 0.0) + n.attribution
    ranked = sorted(sums, key=lambda k: -abs(sums[k]))[:5]
    assert [r["feature"] for r in out["by_feature"]] == ranked
    for r in out["by_feature"]:
        assert r["attribution"] == pytest.approx(sums[r["feature"]], rel=1e-9, abs=1e-12)


def test_attribute_a_logit_difference(server, parts):
    lm, sae, _ = parts
    x, y = (lm.tokenizer.encode(t, add_special_tokens=False) for t in ("x", "y"))
    assert len(x) == len(y) == 1  # single tokens of this vocabulary
    status, out = post(server, "/api/attribute", {"prompt": PROMPT, "target": "x", "contrast": "y"})
    assert status == 200, out
    ref = attribute(lm, PROMPT, sae, "x", contrast="y")
    assert out["metric"] == pytest.approx(ref.metric)
    assert (out["target"]["id"], out["contrast"]["id"]) == (x[0], y[0]) and not out["target_is_prediction"]


LONG = "a " * 200  # 400 characters, over 128 tokens
BAD = [
    ("/api/steer", {"prompt": "", "feature": 0}, "prompt"),
    ("/api/steer", {"prompt": "x" * (LIMITS.prompt_chars + 1), "feature": 0}, "prompt"),
    ("/api/steer", {"prompt": LONG, "feature": 0}, "prompt"),
    ("/api/steer", {"prompt": "hi", "feature": -1}, "feature"),
    ("/api/steer", {"prompt": "hi", "feature": 120}, "feature"),
    ("/api/steer", {"prompt": "hi", "feature": "3"}, "feature"),
    ("/api/steer", {"prompt": "hi", "feature": 3.0}, "feature"),
    ("/api/steer", {"prompt": "hi"}, "feature"),
    ("/api/steer", {"prompt": "hi", "feature": 0, "strength": 100.5}, "strength"),
    ("/api/steer", {"prompt": "hi", "feature": 0, "strength": -101}, "strength"),
    ("/api/steer", {"prompt": "hi", "feature": 0, "strength": float("nan")}, "strength"),
    ("/api/steer", {"prompt": "hi", "feature": 0, "strength": float("inf")}, "strength"),
    ("/api/steer", {"prompt": "hi", "feature": 0, "max_new_tokens": 0}, "max_new_tokens"),
    ("/api/steer", {"prompt": "hi", "feature": 0, "max_new_tokens": 65}, "max_new_tokens"),
    ("/api/steer", {"prompt": "hi", "feature": 0, "seed": -1}, "seed"),
    ("/api/steer", {"prompt": "hi", "feature": 0, "temperature": 2.5}, "temperature"),
    ("/api/steer", {"prompt": "hi", "feature": 0, "strenght": 1}, "strenght"),
    ("/api/ablate", {"text": "", "feature": 0}, "text"),
    ("/api/ablate", {"text": "a " * 300, "feature": 0}, "text"),
    ("/api/ablate", {"text": "hi there", "feature": 10**9}, "feature"),
    ("/api/ablate", {"feature": 0}, "text"),
    ("/api/attribute", {"prompt": LONG}, "prompt"),
    ("/api/attribute", {"prompt": "hi", "target": " hello world"}, "target"),
    ("/api/attribute", {"prompt": "hi", "target": ""}, "target"),
    ("/api/attribute", {"prompt": "hi", "contrast": "two tokens"}, "contrast"),
    ("/api/attribute", {"prompt": "hi", "target": "a", "contrast": "a"}, "contrast"),
    ("/api/attribute", {"prompt": "hi", "top": 0}, "top"),
    ("/api/attribute", {"prompt": "hi", "top": LIMITS.max_top + 1}, "top"),
    ("/api/attribute", {"prompt": "hi", "target": 5}, "target"),
]


@pytest.mark.parametrize("path,body,field", BAD, ids=[f"{p[5:]}-{f}-{i}" for i, (p, _, f) in enumerate(BAD)])
def test_bad_requests_get_a_400_json_error_naming_the_field(server, path, body, field):
    status, out = post(server, path, body)
    assert status == 400, out
    assert out["field"] == field, out
    assert field in out["error"], out
    assert [e["field"] for e in out["errors"]][0] == field


def test_a_feature_that_never_fired_has_no_strength_unit(parts):
    lm, sae, site = parts
    max_F = load_site_stats(site).max_F.copy()
    max_F[3] = 0.0
    live = LiveModel(lm, sae, max_F=max_F)
    with pytest.raises(RequestError, match="never fired") as e:
        live.steer("hi", 3, 1.0, 4, 0, 0.0)
    assert e.value.field == "feature"


def test_without_site_statistics_strength_is_in_unit_direction_units(parts, tmp_path):
    lm, sae, _ = parts
    (tmp_path / "index.html").write_text("<!doctype html>")
    live = load_live(tmp_path, lm, sae)
    assert live.info()["strength_unit"] == "unit_direction"
    out = live.steer("hi", 0, 2.0, 3, 0, 0.0)
    assert out["unit"] == "unit_direction" and out["max_activation"] is None
    norm = float(sae.W_dec[0].detach().double().norm())
    assert out["generation"]["edits"][0]["code_value"] == pytest.approx(2.0 / norm)


def test_a_site_of_another_sae_is_refused(parts):
    from saelens_lite.saes import SAE, SAEConfig

    lm, _, site = parts
    other = SAE.from_config(SAEConfig.build(architecture="topk", d_in=64, d_sae=77, k=6, hook_name=HOOK))
    with pytest.raises(ValueError, match="describes 120 features but the SAE has d_sae=77"):
        load_live(site, lm, other)


def mixed_requests(lm, sae, site):
    f = int(np.argmax(load_site_stats(site).max_F))
    return [("/api/steer", {"prompt": PROMPT, "feature": f, "strength": 8.0, "max_new_tokens": 6}),
            ("/api/encode", {"text": PROMPT}),
            ("/api/ablate", {"text": PROMPT + " x", "feature": f}),
            ("/api/attribute", {"prompt": PROMPT, "top": 3}),
            ("/api/steer", {"prompt": "x = 1", "feature": f, "strength": -8.0, "max_new_tokens": 6}),
            ("/api/encode", {"text": "x = 1"})] * 4


def test_concurrent_requests_of_every_kind_each_get_their_own_answer(server, parts):
    """Steering splices hooks into the shared model; 24 mixed requests from 8 threads at once
    (a plain encode beside a steered generation) equal the same requests one by one."""
    reqs = mixed_requests(*parts)
    alone = [post(server, p, b) for p, b in reqs]
    assert all(s == 200 for s, _ in alone)
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda r: post(server, *r), reqs))
    assert together == alone


def test_the_model_lock_keeps_direct_callers_apart_too(parts):
    """The same from Python threads calling one LiveModel without the server."""
    lm, sae, site = parts
    live = load_live(site, lm, sae)
    calls = {"/api/steer": lambda b: live.steer(b["prompt"], b["feature"], b["strength"], b["max_new_tokens"], 0, 0.0),
             "/api/encode": lambda b: live.encode(b["text"]),
             "/api/ablate": lambda b: live.ablate(b["text"], b["feature"]),
             "/api/attribute": lambda b: live.attribute(b["prompt"], None, None, b["top"])}
    reqs = mixed_requests(lm, sae, site)
    alone = [calls[p](b) for p, b in reqs]
    results = [None] * len(reqs)
    barrier = threading.Barrier(len(reqs))

    def run(i):
        barrier.wait()
        results[i] = calls[reqs[i][0]](reqs[i][1])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == alone
