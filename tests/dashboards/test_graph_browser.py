"""The graph page in headless Chromium, from disk (file://) and served: a traced tiny-llama graph
beside the feature dashboard of its layer-0 transcoder. Every node is drawn, error nodes hide and
show, a linked feature node carries its explanation as its label and opens its feature page,
and a supernode made by hand survives a reload (browser storage from disk, the server's file
served)."""

import json

import pytest
from helpers import make_transcoder, tiny_graph

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed: run `make browser-deps`")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from saelens_lite.dashboards import build_dashboard  # noqa: E402
from saelens_lite.dashboards.graphs import add_graphs  # noqa: E402
from saelens_lite.dashboards.server import make_server  # noqa: E402
from saelens_lite.util.atomic import write_json  # noqa: E402

pytestmark = pytest.mark.slow  # Chromium (the browser fixture: conftest.py)
HOOK = "blocks.0.hook_mlp_in"
FEATURE = "cross layer transcoder"


def wait(driver, cond, timeout=15):
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: cond(d))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(site, graph, the layer-0 feature node explained in the dashboard, its explanation)."""
    from saelens_lite.cache.harvest import HarvestConfig, harvest
    from saelens_lite.lm.load import load_model

    tmp = tmp_path_factory.mktemp("graphs")
    lm = load_model("tiny-llama")
    doc = tiny_graph(lm)
    node = next(n for n in doc["nodes"] if n["feature_type"] == FEATURE and n["layer"] == "0")
    text = "letters after <b>a</b>"  # markup stays text
    cache = harvest(HarvestConfig(model="tiny-llama", hooks=[HOOK], tokens=1200, context_size=40), tmp / "cache",
                    model=lm, progress=False)
    site = tmp / "site"
    build_dashboard(make_transcoder(0), cache, site / "l0", model=lm, progress=False, n_neighbours=0,
                    explanations={node["feature"]: {"explanation": text, "explainer": "test"}})
    write_json(tmp / "abc.json", doc)
    add_graphs(site, [tmp / "abc.json"])
    return site, doc, node, text


def nodes(browser, css=""):
    return browser.find_elements(By.CSS_SELECTOR, "#graph-svg .node" + css)


def node_el(browser, node_id):
    return browser.find_element(By.CSS_SELECTOR, f'#graph-svg .node[data-id="{node_id}"]')


def check_page(browser, doc, node, text, saved_word):
    """On the graph's page: counts, the error toggle, the label, a supernode that survives a reload,
    then the click to the feature page."""
    n_err = sum(n["feature_type"] == "mlp reconstruction error" for n in doc["nodes"])
    assert n_err > 0
    wait(browser, lambda d: len(nodes(d)) == len(doc["nodes"]))
    assert len(nodes(browser, ".error")) == n_err
    browser.find_element(By.ID, "show-errors").click()
    wait(browser, lambda d: len(nodes(d)) == len(doc["nodes"]) - n_err)
    assert not nodes(browser, ".error")
    browser.find_element(By.ID, "show-errors").click()
    wait(browser, lambda d: len(nodes(d)) == len(doc["nodes"]))

    target = node_el(browser, node["node_id"])
    assert target.get_attribute("data-label") == text
    assert target.get_attribute("data-href").endswith(f"l0/index.html#f{node['feature']}")
    assert not [e for e in nodes(browser, "[data-href]") if not e.get_attribute("data-id").startswith("0_")]
    labels = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#graph-svg text.label")]
    assert text[:24] in labels

    members = [n["node_id"] for n in doc["nodes"] if n["feature_type"] == FEATURE][1:3]
    browser.find_element(By.ID, "select-mode").click()
    for m in members:
        node_el(browser, m).click()
    wait(browser, lambda d: d.find_element(By.ID, "n-selected").text == "2 selected")
    browser.find_element(By.ID, "supernode-name").send_keys("say b")
    browser.find_element(By.ID, "make-supernode").click()
    wait(browser, lambda d: d.find_element(By.ID, "save-status").text.startswith(saved_word))
    browser.refresh()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#graph-svg rect.supernode[data-name="say b"]'))
    assert sorted(e.get_attribute("data-id") for e in nodes(browser, ".grouped")) == sorted(members)
    assert [li.get_attribute("data-name") for li in browser.find_elements(By.CSS_SELECTOR, "#supernode-list li")] == ["say b"]

    node_el(browser, node["node_id"]).click()  # after the reload: select mode is off
    title = wait(browser, lambda d: d.find_elements(By.ID, "feature-title"))
    assert title[0].text == f"Feature #{node['feature']}"
    assert browser.current_url.endswith(f"/l0/index.html#f{node['feature']}")
    return members


def test_graph_page_from_disk(browser, built):
    site, doc, node, text = built
    browser.get((site / "graphs" / "index.html").as_uri())
    link = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#graphs tr[data-slug="abc"] a'))
    link[0].click()
    wait(browser, lambda d: d.find_elements(By.ID, "graph-title"))
    check_page(browser, doc, node, text, "Saved in this browser")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    assert not (site / "graphs" / "data" / "abc.supernodes.json").exists()  # from disk: the browser keeps it


def test_graph_page_served(browser, built):
    site, doc, node, text = built
    with make_server(site, port=0) as srv:
        browser.get(srv.url + "graphs/index.html#g/abc")
        members = check_page(browser, doc, node, text, "Saved on the server")
    saved = json.loads((site / "graphs" / "data" / "abc.supernodes.json").read_text())
    assert saved["supernodes"] == [["say b", *members]]
