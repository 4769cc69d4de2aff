"""Graph pages (dashboards/graphs.py) and their API (dashboards/graph_api.py): a traced tiny-llama
graph put into a site, listed with the transcoder dashboards its nodes link to, supernodes
saved and read back, bad bodies refused with one line and nothing written, and the CLI ways in
(``trace --site``, ``dashboard --graphs``). The pages in Chromium: test_graph_browser.py."""

import json

import pytest
from fastapi.testclient import TestClient
from helpers import tiny_graph

from saelens_lite.cli import main
from saelens_lite.dashboards.graphs import (
    add_graphs,
    find_dashboards,
    load_supernodes,
    save_supernodes,
)
from saelens_lite.dashboards.server import make_app
from saelens_lite.dashboards.site import prepare_site
from saelens_lite.features.store import FORMAT, MANIFEST, SITE_SUBDIR
from saelens_lite.util.atomic import write_json

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def doc():
    from saelens_lite.lm.load import load_model

    return tiny_graph(load_model("tiny-llama"))


def fake_dashboard(folder, hook, target=None, model="tiny-llama", n=48):
    """A dashboard site as find_dashboards sees it: index.html and a features manifest."""
    (folder / SITE_SUBDIR).mkdir(parents=True)
    (folder / "index.html").write_text("<!doctype html>")
    write_json(folder / SITE_SUBDIR / MANIFEST, {"format": FORMAT, "hook": hook, "n_features": n, "n_tokens": 1,
                                                  "meta": {"model": model, "target_hook": target}, "arrays": {}})


@pytest.fixture
def site(tmp_path, doc):
    site = tmp_path / "site"
    fake_dashboard(site / "l0", "blocks.0.hook_mlp_in", "blocks.0.hook_mlp_out")
    fake_dashboard(site / "runs" / "l2", "blocks.2.hook_mlp_in", "blocks.2.hook_mlp_out")
    fake_dashboard(site / "resid", "blocks.1.hook_resid_post")  # an SAE, not a transcoder
    fake_dashboard(site / "other", "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out", model="smollm2-135m")
    write_json(tmp_path / "abc.json", doc)
    assert add_graphs(site, [tmp_path / "abc.json"]) == ["abc"]
    return site


@pytest.fixture
def client(site):
    return TestClient(make_app(site))


def ids(doc, kind=None):
    return [n["node_id"] for n in doc["nodes"] if kind is None or n["feature_type"] == kind]


def jsonp(path, fn):
    text = path.read_text()
    assert text.startswith(fn + "(") and text.endswith(");\n")
    return text[len(fn) + 1:-3]


def test_the_site_holds_the_graph_and_lists_it_with_the_transcoder_dashboards(site, client, doc):
    data = site / "graphs" / "data"
    assert json.loads((data / "abc.json").read_text()) == doc
    assert (site / "graphs" / "index.html").is_file() and (site / "graphs" / "assets" / "graph.js").is_file()
    slug, static = jsonp(data / "abc.js", "saeGraph").split(",", 1)
    assert json.loads(slug) == "abc" and json.loads(static)["nodes"] == doc["nodes"]
    r = client.get("/api/graphs")
    assert r.status_code == 200
    listed = r.json()
    assert [g["slug"] for g in listed["graphs"]] == ["abc"]
    g = listed["graphs"][0]
    assert (g["n_nodes"], g["n_links"], g["prompt"], g["model"]) == (len(doc["nodes"]), len(doc["links"]),
                                                                    "abc ab", "tiny-llama")
    assert g["n_features"] == len(ids(doc, "cross layer transcoder"))
    assert listed["dashboards"] == {"tiny-llama": {"0": {"path": "l0/", "n_features": 48},
                                                   "2": {"path": "runs/l2/", "n_features": 48}},
                                    "smollm2-135m": {"1": {"path": "other/", "n_features": 48}}}
    assert json.loads(jsonp(data / "index.js", "saeGraphIndex")) == listed  # the static page's copy
    assert client.get("/api/graphs/abc").json() == doc
    r = client.get("/api/graphs/nope")
    assert r.status_code == 404 and r.json()["error"] == "no graph 'nope' in this site; it has: abc"


def test_supernodes_round_trip_through_the_api_a_restart_and_a_new_copy_of_the_graph(site, client, doc, tmp_path):
    feats, errs = ids(doc, "cross layer transcoder"), ids(doc, "mlp reconstruction error")
    groups = [[" say b ", feats[0], feats[1]], ["errors", errs[0]]]
    assert client.get("/api/graphs/abc/supernodes").json() == {"supernodes": []}
    r = client.post("/api/graphs/abc/supernodes", json={"supernodes": groups}, headers=JSON)
    assert r.status_code == 200, r.text
    want = [["say b", feats[0], feats[1]], ["errors", errs[0]]]
    assert r.json() == {"supernodes": want}
    saved = json.loads((site / "graphs" / "data" / "abc.supernodes.json").read_text())
    assert saved == {"format": 1, "graph": "abc", "supernodes": want}
    static = json.loads(jsonp(site / "graphs" / "data" / "abc.js", "saeGraph").split(",", 1)[1])
    assert static["qParams"]["supernodes"] == want  # the page from disk shows them too
    assert TestClient(make_app(site)).get("/api/graphs/abc/supernodes").json() == {"supernodes": want}
    add_graphs(site, [tmp_path / "abc.json"])  # the same graph again: its grouping is kept
    assert load_supernodes(site, "abc") == want
    traced_again = {**doc, "nodes": [n for n in doc["nodes"] if n["node_id"] != errs[0]],
                    "links": [x for x in doc["links"] if errs[0] not in (x["source"], x["target"])]}
    write_json(tmp_path / "abc.json", traced_again)
    add_graphs(site, [tmp_path / "abc.json"])  # a node is gone: dropped, and its emptied group
    assert load_supernodes(site, "abc") == want[:1]


@pytest.mark.parametrize("body, message", [
    ({"supernodes": [["g", "nope_1_2"]]}, "supernodes[0] (g): node 'nope_1_2' is not in graph 'abc' (it has {n} nodes)"),
    ({"supernodes": [["g", "{f}"], ["h", "{f}"]]}, "supernodes[1] (h): node '{f}' is already in supernode 'g'; "
                                                   "a node belongs to one supernode"),
    ({"supernodes": [["g", "{f}"], [" g", "{e}"]]}, "supernodes[1]: name ' g' is used twice; give each supernode "
                                                    "its own name"),
    ({"supernodes": [["  ", "{f}"]]}, "supernodes[0]: name '  ' is empty; give each supernode its own name"),
    ({"supernodes": [["g"]]}, "supernodes.0: List should have at least 2 items after validation, not 1"),
    ({"supernodes": [["g", 3]]}, "supernodes.0.1: Input should be a valid string"),
    ({"supernodes": "g"}, "supernodes: Input should be a valid list"),
    ({"groups": []}, "supernodes: Field required"),
])
def test_bad_supernode_bodies_are_refused_in_one_line_and_nothing_is_written(site, client, doc, body, message):
    f, e = ids(doc, "cross layer transcoder")[0], ids(doc, "mlp reconstruction error")[0]
    body = json.loads(json.dumps(body).replace("{f}", f).replace("{e}", e))
    r = client.post("/api/graphs/abc/supernodes", json=body, headers=JSON)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err == message.format(n=len(doc["nodes"]), f=f) and "\n" not in err
    assert r.json()["field"].startswith("supernodes")
    assert not (site / "graphs" / "data" / "abc.supernodes.json").exists()


def test_other_bad_requests(site, client):
    r = client.post("/api/graphs/abc/supernodes", content=b'{"supernodes": []}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/api/graphs/nope/supernodes", json={"supernodes": []}, headers=JSON)
    assert r.status_code == 404 and "no graph 'nope'" in r.json()["error"]
    assert client.get("/api/graphs/..%2F..%2Fetc/supernodes").status_code == 404
    with pytest.raises(ValueError, match=r"node 'x' is not in graph 'abc'"):
        save_supernodes(site, "abc", [["g", "x"]])
    assert not (site / "graphs" / "data" / "abc.supernodes.json").exists()


def test_bad_graphs_are_named_before_anything_is_written(tmp_path, doc):
    site = tmp_path / "site"
    broken = {**doc, "links": doc["links"] + [{"source": "ghost", "target": doc["nodes"][0]["node_id"], "weight": 1.0}]}
    write_json(tmp_path / "broken.json", broken)
    write_json(tmp_path / "good.json", doc)
    with pytest.raises(ValueError, match=rf"broken.json: links\[{len(doc['links'])}\] source 'ghost' is not a node"):
        add_graphs(site, [tmp_path / "good.json", tmp_path / "broken.json"])
    write_json(tmp_path / "bad.json", {**doc, "metadata": {**doc["metadata"], "slug": "../x"}})
    with pytest.raises(ValueError, match=r"graph name '../x' is invalid; allowed: letters"):
        add_graphs(site, [tmp_path / "bad.json"])
    (tmp_path / "again").mkdir()
    write_json(tmp_path / "again" / "good.json", doc)
    with pytest.raises(ValueError, match=r"two graphs named 'abc'"):
        add_graphs(site, [tmp_path / "good.json", tmp_path / "again" / "good.json"])
    assert not site.exists()
    (site / "graphs").mkdir(parents=True)
    (site / "graphs" / "mine.txt").write_text("x")
    with pytest.raises(FileExistsError, match=r"holds no graph pages"):
        add_graphs(site, [tmp_path / "good.json"])


def test_a_site_of_graph_pages_only_is_served_and_can_take_a_dashboard(tmp_path, doc):
    site = tmp_path / "site"
    write_json(tmp_path / "abc.json", doc)
    add_graphs(site, [tmp_path / "abc.json"])
    r = TestClient(make_app(site)).get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/graphs/index.html"
    prepare_site(site)  # a feature dashboard may be built into it; the graph pages stay
    assert (site / "graphs" / "data" / "abc.json").is_file() and (site / "assets").is_dir()
    assert find_dashboards(site) == {}


def test_cli_trace_site_and_dashboard_graphs(tmp_path, capsys, doc):
    from helpers import make_transcoder

    for i in range(4):
        make_transcoder(i).save(tmp_path / "tcs" / f"l{i}")
    site, out = tmp_path / "site", tmp_path / "g" / "ab.json"
    assert main(["trace", "--model", "tiny-llama", "--transcoders", str(tmp_path / "tcs"), "--prompt", "abc ab",
                 "--target", "b", "--out", str(out), "--site", str(site)]) == 0
    assert f"graph page: file://{(site / 'graphs' / 'index.html').resolve()}#g/ab" in capsys.readouterr().out
    assert json.loads((site / "graphs" / "data" / "ab.json").read_text()) == json.loads(out.read_text())
    write_json(tmp_path / "abc.json", doc)
    assert main(["dashboard", "--graphs", str(tmp_path / "abc.json"), "--out", str(site)]) == 0
    assert "graph pages written (abc)" in capsys.readouterr().out
    listed = json.loads(jsonp(site / "graphs" / "data" / "index.js", "saeGraphIndex"))
    assert [g["slug"] for g in listed["graphs"]] == ["ab", "abc"] and listed["dashboards"] == {}
    assert main(["dashboard", "--out", str(site)]) == 2
    assert "nothing to write: give --sae and --activations" in capsys.readouterr().err
    assert main(["trace", "--model", "tiny-llama", "--transcoders", str(tmp_path / "tcs"), "--prompt", "abc",
                 "--out", str(tmp_path / "a b.json"), "--site", str(site)]) == 2
    assert "graph name 'a b' is invalid" in capsys.readouterr().err
    assert not (tmp_path / "a b.json").exists()
