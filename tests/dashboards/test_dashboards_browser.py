"""A real browser (headless Chromium through Selenium) uses the site: from disk (file://) it
searches the index, opens a feature and sees highlighted tokens and the histogram; served, it
runs the live box, a feature page's steer and ablate panels and the "explain this output" page;
and token text made of markup stays text.

Needs ``make browser-deps`` (Debian chromium + chromium-driver, pip selenium); skips otherwise.
"""

import dataclasses
import json

import pytest
import torch

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed: run `make browser-deps`")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from saelens_lite.dashboards import build_dashboard  # noqa: E402
from saelens_lite.dashboards.live import LiveModel  # noqa: E402
from saelens_lite.dashboards.server import load_live, make_server  # noqa: E402

pytestmark = pytest.mark.slow  # Chromium (the browser fixture: conftest.py)
HOOK = "blocks.1.hook_resid_post"
EVIL = ['<img src=x onerror="window.__xss=1">', "</script><script>window.__xss=2</script>",
        "<b onmouseover=window.__xss=3>bold</b>", "\u2028"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from saelens_lite.cache.harvest import HarvestConfig, harvest
    from saelens_lite.lm.load import load_model
    from saelens_lite.saes import SAE, SAEConfig

    lm = load_model("tiny-llama")
    cache = harvest(HarvestConfig(model="tiny-llama", hooks=[HOOK], tokens=1200, context_size=40),
                    tmp_path_factory.mktemp("browser") / "cache", model=lm, progress=False)
    torch.manual_seed(0)
    sae = SAE.from_config(SAEConfig.build(architecture="topk", d_in=64, d_sae=300, k=6, hook_name=HOOK))
    return lm, cache, sae


@pytest.fixture(scope="module")
def site(parts, tmp_path_factory):
    lm, cache, sae = parts
    out = tmp_path_factory.mktemp("browser") / "site"
    build_dashboard(sae, cache, out, model=lm, progress=False, shard_features=64)
    return out


def wait(driver, cond, timeout=15):
    """Poll `cond` until truthy; an element re-rendered between its lookup and its read
    (StaleElementReferenceException) just means: poll again."""
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: cond(d))


def test_index_search_and_feature_page_from_disk(browser, site):
    browser.get((site / "index.html").as_uri())
    rows = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#features tbody tr"))
    assert len(rows) == 300  # first page of the 300 features
    first = rows[0].get_attribute("data-id")  # sorted by density: a live feature

    search = browser.find_element(By.ID, "search")
    search.send_keys("12")
    wait(browser, lambda d: "of 300" in d.find_element(By.ID, "count").text
         and not d.find_element(By.ID, "count").text.startswith("300"))
    ids = [r.get_attribute("data-id") for r in browser.find_elements(By.CSS_SELECTOR, "#features tbody tr")]
    assert ids and all(i.startswith("12") for i in ids)

    search.clear()
    search.send_keys(first)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'#features tr[data-id="{first}"] a'))
    browser.find_element(By.CSS_SELECTOR, f'#features tr[data-id="{first}"] a').click()

    title = wait(browser, lambda d: d.find_elements(By.ID, "feature-title"))
    assert title[0].text == f"Feature #{first}"
    centre = browser.find_elements(By.CSS_SELECTOR, "#top-examples .tok.centre")
    assert centre, "no highlighted activating tokens"
    assert "act = " in centre[0].get_attribute("title")
    assert centre[0].value_of_css_property("background-color") not in ("rgba(0, 0, 0, 0)", "transparent")
    assert not browser.find_elements(By.CSS_SELECTOR, "#interventions, #steer, #ablate")  # no server: no panels
    bars = browser.find_elements(By.CSS_SELECTOR, "#hist rect.bar")
    assert len(bars) == 40 and any(float(b.get_attribute("height")) > 0 for b in bars)
    assert browser.find_elements(By.CSS_SELECTOR, "table.logits.pos tr")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_sorting_by_clicking_a_header(browser, site):
    browser.get((site / "index.html").as_uri() + "#")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#features tbody tr"))
    browser.find_element(By.ID, "search").clear()  # the query outlives a visit to a feature
    browser.find_element(By.ID, "search").send_keys(" ")
    wait(browser, lambda d: d.find_element(By.ID, "count").text.startswith("300 of"))
    browser.find_element(By.CSS_SELECTOR, 'th[data-key="id"]').click()
    ids = [int(r.get_attribute("data-id")) for r in
           wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#features tbody tr"))[:20]]
    assert ids == list(range(20))


def test_markup_in_token_text_shows_as_text(browser, parts, tmp_path):
    lm, cache, sae = parts

    class EvilTokenizer:
        def batch_decode(self, seqs, **kw):
            return [EVIL[s[0] % len(EVIL)] for s in seqs]

    out = tmp_path / "evil"
    build_dashboard(sae, cache, out, model=dataclasses.replace(lm, tokenizer=EvilTokenizer()), progress=False,
                    shard_features=300, n_neighbours=0)
    browser.get(out.joinpath("index.html").as_uri())
    chips = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#features .chip"))
    texts = {c.get_attribute("textContent") for c in chips}
    assert any("<img" in t for t in texts), texts
    browser.find_element(By.CSS_SELECTOR, "#features tbody tr a").click()
    toks = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#top-examples .tok"))
    assert any("<img src=x" in t.get_attribute("textContent") for t in toks)
    # hovering cannot trigger handlers either: there are no such elements at all
    assert browser.find_elements(By.CSS_SELECTOR, "#app img, #app script, #app b") == []
    assert browser.execute_script("return window.__xss === undefined")


def test_live_box_when_served_with_a_model(browser, parts, site):
    lm, _, sae = parts
    with make_server(site, port=0, live=LiveModel(lm, sae)) as srv:
        browser.get(srv.url)
        box = wait(browser, lambda d: d.find_elements(By.ID, "live-text"))[0]
        box.send_keys("hello <i>world</i>")
        browser.find_element(By.ID, "live-run").click()
        toks = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#live-out .tok"))
        assert "".join(t.get_attribute("textContent") for t in toks[1:]) == "hello <i>world</i>"
        toks[3].click()
        links = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#live-detail a"))
        links[0].click()
        title = wait(browser, lambda d: [e.text for e in d.find_elements(By.ID, "feature-title")
                                         if e.text.startswith("Feature #")])[0]
        shown = int(title.removeprefix("Feature #"))
        browser.find_element(By.TAG_NAME, "body").send_keys("\ue014")  # ArrowRight: next feature
        wait(browser, lambda d: d.find_element(By.ID, "feature-title").text == f"Feature #{shown + 1}")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors


def test_training_curves_show_on_the_index_from_disk_and_served(browser, parts, tmp_path):
    from saelens_lite.training.curves import write_training_curves

    lm, cache, sae = parts
    run = tmp_path / "run"
    run.mkdir()
    recs = [{"hook": HOOK, "step": s, "tokens": 64 * s, "loss": 1 / s, "fvu": 0.5 / s, "l0": 6.0,
             "dead_fraction": 0.0} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "site"
    build_dashboard(sae, cache, out, model=lm, progress=False, shard_features=300, n_neighbours=0,
                    training_curves=write_training_curves(run))

    def check(url):
        browser.get(url)
        img = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#training img#training-curves"))[0]
        assert "in-sample FVU" in img.get_attribute("alt")
        browser.find_element(By.CSS_SELECTOR, "#training summary").click()  # closed by default
        wait(browser, lambda d: img.is_displayed())
        assert wait(browser, lambda d: d.execute_script(
            "var i = arguments[0]; return i.complete && i.naturalWidth;", img)) == 1100  # loaded under the CSP
        browser.save_screenshot(str(tmp_path / "index.png"))
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors

    check(out.joinpath("index.html").as_uri())
    with make_server(out, port=0) as srv:
        check(srv.url)
        assert not browser.find_elements(By.CSS_SELECTOR, "#explain-card, section.live")  # no model: no panels


def _post(url, body):
    import urllib.request

    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def test_steer_and_ablate_panels_on_a_feature_page_through_the_server(browser, parts, site):
    from saelens_lite.interventions import load_site_stats

    lm, _, sae = parts
    f = int(load_site_stats(site).max_F.argmax())
    prompt = "hello <b>x</b>"
    with make_server(site, port=0, live=load_live(site, lm, sae)) as srv:
        browser.get(srv.url + f"#f{f}")
        wait(browser, lambda d: d.find_elements(By.ID, "steer"))[0].find_element(By.TAG_NAME, "summary").click()
        browser.find_element(By.ID, "steer-prompt").send_keys(prompt)
        strength = browser.find_element(By.ID, "steer-strength")
        strength.clear()
        strength.send_keys("6")
        tokens = browser.find_element(By.ID, "steer-tokens")
        tokens.clear()
        tokens.send_keys("8")
        browser.find_element(By.ID, "steer-run").click()
        steered = wait(browser, lambda d: d.find_elements(By.ID, "steer-steered"))[0]
        want = _post(srv.url + "api/steer", {"prompt": prompt, "feature": f, "strength": 6.0, "max_new_tokens": 8})
        base = browser.find_element(By.ID, "steer-baseline")
        assert base.get_attribute("textContent") == prompt + want["baseline"]
        assert steered.get_attribute("textContent") == prompt + want["steered"]
        assert want["baseline"] != want["steered"]
        assert "max activation" in browser.find_element(By.ID, "steer-out").text

        browser.find_element(By.CSS_SELECTOR, "#ablate summary").click()
        text = browser.find_element(By.ID, "ablate-text").get_attribute("value")
        assert text, "the ablate box starts with the feature's top example"
        browser.find_element(By.ID, "ablate-run").click()
        toks = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#ablate-tokens .tok"))
        want = _post(srv.url + "api/ablate", {"text": text, "feature": f})
        shown = {ord("\n"): "\u21b5", ord("\t"): "\u2192", ord("\r"): "\u240d"}  # as app.js showTok
        assert [t.get_attribute("textContent") for t in toks] == [w["token"].translate(shown)
                                                                   for w in want["tokens"]]
        assert "no prediction" in toks[0].get_attribute("title")
        assert all("Δloss" in t.get_attribute("title") for t in toks[1:])
        moved = [t for t, w in zip(toks, want["tokens"]) if w["delta"]]
        assert moved and all(t.value_of_css_property("background-color") != "rgba(0, 0, 0, 0)" for t in moved)
        fires = [w["activations"][0] > 0 for w in want["tokens"]]
        assert ["fires" in t.get_attribute("class") for t in toks] == fires and any(fires)

        assert browser.find_elements(By.CSS_SELECTOR, "#app b") == []  # markup in the prompt stayed text
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors


def test_explain_this_output_links_each_top_feature_to_its_page(browser, parts, site, tmp_path):
    lm, _, sae = parts
    prompt = "def f(x): return"
    with make_server(site, port=0, live=load_live(site, lm, sae)) as srv:
        browser.get(srv.url)
        wait(browser, lambda d: d.find_elements(By.ID, "explain-link"))[0].click()
        wait(browser, lambda d: d.find_elements(By.ID, "explain-prompt"))[0].send_keys(prompt)
        browser.find_element(By.ID, "explain-run").click()
        rows = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#explain-features tbody tr"))
        want = _post(srv.url + "api/attribute", {"prompt": prompt, "top": 30})
        assert [int(r.get_attribute("data-id")) for r in rows] == [b["feature"] for b in want["by_feature"]]
        assert "most likely next token" in browser.find_element(By.ID, "explain-out").text
        browser.save_screenshot(str(tmp_path / "explain.png"))
        top = want["by_feature"][0]["feature"]
        rows[0].find_element(By.CSS_SELECTOR, "a").click()
        wait(browser, lambda d: d.find_element(By.ID, "feature-title").text == f"Feature #{top}")
        browser.back()  # the explanation is still there
        rows = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#explain-features tbody tr"))
        assert int(rows[0].get_attribute("data-id")) == top
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors


def test_explanations_column_search_sort_and_feature_page(browser, parts, tmp_path):
    lm, cache, sae = parts
    scores = {5: 0.6, 17: 0.95, 250: 0.8}
    texts = {5: "zebra crossings", 17: "Zebra stripes", 250: '<img src=x onerror="window.__xss=1">'}
    expl = {f: {"feature": f, "explanation": texts[f], "explainer": "template",
                "scores": {"embedding": {"auroc": scores[f], "shuffled_auroc": 0.5}},
                "shuffled": {"feature": 0, "explanation": "other"}} for f in texts}
    out = tmp_path / "site"
    build_dashboard(sae, cache, out, model=lm, progress=False, shard_features=64, n_neighbours=0, explanations=expl)
    browser.get((out / "index.html").as_uri())
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#features tbody tr"))
    assert browser.find_element(By.CSS_SELECTOR, 'th[data-key="expl"]').text.startswith("Explanation")
    browser.find_element(By.ID, "search").send_keys("zebra")  # explanation text, any case
    wait(browser, lambda d: d.find_element(By.ID, "count").text.startswith("2 of 300"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#features tbody tr")
    assert sorted(r.get_attribute("data-id") for r in rows) == ["17", "5"]
    assert {r.find_element(By.CSS_SELECTOR, "td.expl").text for r in rows} == {texts[5], texts[17]}

    browser.find_element(By.ID, "search").clear()
    browser.find_element(By.ID, "search").send_keys(" ")
    wait(browser, lambda d: d.find_element(By.ID, "count").text.startswith("300 of"))
    browser.find_element(By.CSS_SELECTOR, 'th[data-key="s:embedding"]').click()  # best score first
    ids = [r.get_attribute("data-id") for r in
           wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#features tbody tr"))[:3]]
    assert ids == ["17", "250", "5"]
    assert browser.find_element(By.CSS_SELECTOR, '#features tr[data-id="250"] td.expl').text == texts[250]

    browser.find_element(By.CSS_SELECTOR, '#features tr[data-id="17"] a').click()
    text = wait(browser, lambda d: d.find_elements(By.ID, "explanation-text"))
    assert text[0].text == texts[17]
    cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#explanation-scores tbody td")]
    assert cells == ["embedding", "auroc", "0.95", "0.5"]  # beside the shuffled explanation's
    assert "template" in browser.find_element(By.ID, "explanation").text
    assert browser.execute_script("return window.__xss") is None
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_explain_this_feature_button_through_the_server(browser, parts, site, tmp_path):
    """Served with --activations: the feature page's button asks /api/explain and shows the
    record (text, explainer, scores beside the shuffled ones); a site without explanations."""
    from saelens_lite.dashboards.server import load_explainer
    from saelens_lite.interventions import load_site_stats

    lm, cache, sae = parts
    f = int(load_site_stats(site).max_F.argmax())
    live = load_live(site, lm, sae)
    expl = load_explainer(site, live, cache.path, out=tmp_path / "live")
    with make_server(site, port=0, live=live, explainer=expl) as srv:
        browser.get(srv.url + f"#f{f}")
        btn = wait(browser, lambda d: d.find_elements(By.ID, "explain-run"))[0]
        assert "by template, scored by embedding" in browser.find_element(By.ID, "explanation").text
        btn.click()
        text = wait(browser, lambda d: d.find_elements(By.ID, "explanation-text"), timeout=120)[0]
        want = _post(srv.url + "api/explain", {"feature": f})  # the kept record
        assert text.get_attribute("textContent") == want["text"] and want["text"].startswith("Fires on")
        assert "Explanation (made now)" in browser.find_element(By.ID, "explanation").text
        rows = browser.find_elements(By.CSS_SELECTOR, "#explanation-scores tbody tr")
        assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows] == ["embedding"]
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
