"""The static site: files and shards written, data consistent with the cache, JSON-P safe to
embed whatever the token text, and the CLI end to end."""

import dataclasses
import http.client
import json
import re

import numpy as np
import pytest
import torch

from saelens_lite.dashboards import build_dashboard
from saelens_lite.dashboards.site import find_training_curves, js_json, prepare_site
from saelens_lite.training.curves import CURVES_NAME, write_training_curves

HOOK = "blocks.1.hook_resid_post"
EVIL = ['<img src=x onerror="window.__xss=1">', "</script><script>window.__xss=2</script>",
        "\u2028\u2029", "&amp;<!--", '"quoted" \\ back']


@pytest.fixture(scope="module")
def lm():
    from saelens_lite.lm.load import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, lm):
    from saelens_lite.cache.harvest import HarvestConfig, harvest

    cfg = HarvestConfig(model="tiny-llama", hooks=[HOOK], tokens=1500, context_size=40, shard_tokens=500)
    return harvest(cfg, tmp_path_factory.mktemp("site") / "cache", model=lm, progress=False)


@pytest.fixture(scope="module")
def sae():
    from saelens_lite.saes import SAE, SAEConfig

    torch.manual_seed(0)
    return SAE.from_config(SAEConfig.build(architecture="topk", d_in=64, d_sae=80, k=5, hook_name=HOOK))


@pytest.fixture(scope="module")
def site(tmp_path_factory, sae, cache, lm):
    out = tmp_path_factory.mktemp("site") / "site"
    build_dashboard(sae, cache, out, model=lm, progress=False, shard_features=32, n_top=6, n_quantiles=3,
                    n_per_quantile=2, window_before=4, window_after=2)
    return out


def read_jsonp(path, fn: str):
    m = re.fullmatch(rf"{fn}\((?:(\d+),)?(.*)\);\n", path.read_text(encoding="ascii"), re.S)
    assert m, f"{path} is not a {fn}(...) call"
    return json.loads(m.group(2))


def test_site_has_an_index_assets_and_one_shard_per_256_features(site):
    assert (site / "index.html").is_file()
    assert {p.name for p in (site / "assets").iterdir()} == {"app.js", "style.css"}
    assert sorted(p.name for p in (site / "data" / "f").iterdir()) == ["00000.js", "00001.js", "00002.js"]
    meta = read_jsonp(site / "data" / "meta.js", "saeMeta")
    assert meta["n_features"] == 80 and meta["n_shards"] == 3 and meta["hook"] == HOOK
    index = read_jsonp(site / "data" / "index.js", "saeIndex")
    assert len(index["density"]) == len(index["max"]) == len(index["top"]) == 80
    html = (site / "index.html").read_text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html  # no CDN
    assert meta["training_curves"] is None and not (site / "data" / CURVES_NAME).exists()  # an SAE object


def test_shard_examples_match_the_cache(site, sae, cache):
    x = torch.from_numpy(np.asarray(cache.activations(HOOK)[:], np.float32))
    with torch.no_grad():
        A = sae.encode(x).numpy()
    tok_ids = cache.token_ids
    shard = read_jsonp(site / "data" / "f" / "00001.js", "saeShard")
    feats = shard["features"]
    assert [f["i"] for f in feats] == list(range(32, 64))
    checked = 0
    for f in feats:
        i = f["i"]
        assert f["n"] == int((A[:, i] > 0).sum())
        assert f["max"] == pytest.approx(A[:, i].max(), rel=1e-3)
        assert sum(f["hist"]) == f["n"]
        want_top = np.sort(A[:, i][A[:, i] > 0])[::-1][:6]
        got_top = [ex[1][ex[2]] for ex in f["top"]]
        np.testing.assert_allclose(got_top, want_top, rtol=1e-3)
        for toks, acts, c in f["top"]:
            assert all(str(t) in shard["tok"] for t in toks)
            rows = np.flatnonzero(np.isclose(A[:, i], acts[c], rtol=1e-3))
            assert any(tok_ids[r] == toks[c] for r in rows)
            checked += 1
        assert len(f["pos"][0]) == len(f["neg"][0]) == 10
        assert len(f["near"][0]) == 8 and i not in f["near"][0]
    assert checked > 0


def test_the_site_renders_the_saved_feature_statistics(site, sae, cache):
    from saelens_lite.features.store import load_features

    saved = load_features(site)  # SITE/features/
    x = torch.from_numpy(np.asarray(cache.activations(HOOK)[:], np.float32))
    with torch.no_grad():
        A = sae.encode(x).numpy()
    np.testing.assert_array_equal(saved.stats.count_F, (A > 0).sum(0))
    np.testing.assert_allclose(saved.stats.max_F, A.max(0), rtol=1e-5, atol=1e-7)
    assert saved.stats.hook == HOOK and saved.meta["config"]["n_top"] == 6
    index = read_jsonp(site / "data" / "index.js", "saeIndex")
    shard = read_jsonp(site / "data" / "f" / "00000.js", "saeShard")
    for f in shard["features"]:  # the pages show the saved numbers, to 4 significant digits
        i = f["i"]
        assert f["max"] == index["max"][i] == pytest.approx(float(saved.stats.max_F[i]), rel=5e-4, abs=1e-30)
        assert f["hist"] == saved.stats.hist_FH[i].tolist()
        assert f["pos"][0] == saved.logits.pos_ids_FL[i].tolist()
        assert f["near"][0] == saved.neighbours.idx_FN[i].tolist()


def test_js_json_cannot_close_the_script_or_break_lines():
    s = js_json({"tok": EVIL})
    assert "<" not in s and ">" not in s and "&" not in s
    assert "\u2028" not in s and "\u2029" not in s and s.isascii()
    assert json.loads(s) == {"tok": EVIL}


class EvilTokenizer:
    """Every token decodes to markup: the site must carry it as inert text."""

    def __init__(self, tok):
        self._tok = tok

    def batch_decode(self, seqs, **kw):
        return [EVIL[s[0] % len(EVIL)] for s in seqs]


def test_untrusted_token_text_is_escaped_in_every_data_file(tmp_path, sae, cache, lm):
    import dataclasses

    evil_lm = dataclasses.replace(lm, tokenizer=EvilTokenizer(lm.tokenizer))
    out = tmp_path / "evil"
    build_dashboard(sae, cache, out, model=evil_lm, progress=False, shard_features=40, n_neighbours=0)
    for p in (out / "data").rglob("*.js"):
        text = p.read_text(encoding="ascii")
        assert "<" not in text and "\u2028" not in text
    shard = read_jsonp(out / "data" / "f" / "00000.js", "saeShard")
    assert set(shard["tok"].values()) <= set(EVIL)


def test_rebuilding_replaces_the_site_and_other_folders_are_refused(tmp_path, sae, cache, lm):
    out = tmp_path / "again"
    build_dashboard(sae, cache, out, model=lm, progress=False, shard_features=16, n_neighbours=0)
    build_dashboard(sae, cache, out, model=lm, progress=False, shard_features=40, n_neighbours=0)
    assert len(list((out / "data" / "f").iterdir())) == 2  # no stale shards of the first build
    assert not list(out.glob("dashboard-codes-*"))  # the temporary code table is gone
    (tmp_path / "precious.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a dashboard site"):
        prepare_site(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep"


def test_cli_dashboard_writes_a_site(tmp_path, sae, cache, caplog):
    from saelens_lite.cli import main

    sae_dir = sae.save(tmp_path / "sae")
    out = tmp_path / "cli_site"
    rc = main(["dashboard", "--sae", str(sae_dir), "--activations", str(cache.path), "--out", str(out),
               "--n-top", "3", "--n-neighbours", "0", "--no-progress"])
    assert rc == 0
    assert not [r for r in caplog.records if "trained on" in r.getMessage()]
    assert len(list((out / "data" / "f").iterdir())) == 1
    shard = read_jsonp(out / "data" / "f" / "00000.js", "saeShard")
    assert all(len(f["top"]) <= 3 and "near" not in f for f in shard["features"])


def test_cli_dashboard_warns_when_hook_is_not_the_saes(tmp_path, sae, cache, caplog):
    from saelens_lite.cli import main

    sae_dir = sae.save(tmp_path / "sae")
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    (sae_dir / "cfg.json").write_text(json.dumps({**cfg, "hook_name": "blocks.0.hook_mlp_out"}))
    rc = main(["dashboard", "--sae", str(sae_dir), "--activations", str(cache.path), "--out",
               str(tmp_path / "site"), "--hook", HOOK, "--n-neighbours", "0", "--no-progress"])
    assert rc == 0
    (msg,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "trained on" in r.getMessage()]
    assert HOOK in msg and "blocks.0.hook_mlp_out" in msg


def test_encoder_model_site_has_a_note_instead_of_logit_effects(tmp_path):
    from saelens_lite.cache.harvest import HarvestConfig, harvest
    from saelens_lite.lm.load import load_model
    from saelens_lite.saes import SAE, SAEConfig

    bert = load_model("tiny-bert")
    cache = harvest(HarvestConfig(model="tiny-bert", hooks=[HOOK], tokens=300, context_size=32),
                    tmp_path / "cache", model=bert, progress=False)
    sae = SAE.from_config(SAEConfig.build(architecture="relu", d_in=64, d_sae=16, hook_name=HOOK))
    build_dashboard(sae, cache, tmp_path / "site", model=bert, progress=False)
    meta = read_jsonp(tmp_path / "site" / "data" / "meta.js", "saeMeta")
    assert "language-model head" in meta["logits_note"]
    feats = read_jsonp(tmp_path / "site" / "data" / "f" / "00000.js", "saeShard")["features"]
    assert len(feats) == 16 and all("pos" not in f for f in feats)


# --- training curves ------------------------------------------------------------------------


def fake_run(root, sae):
    """A run folder as the trainer leaves it: metrics.jsonl, the curves PNG, the SAE folder."""
    run = root / "run"
    run.mkdir(parents=True)
    recs = [{"hook": HOOK, "step": s, "tokens": 64 * s, "loss": 1 / s, "fvu": 0.5 / s, "l0": 5.0,
             "dead_fraction": 0.0} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    write_training_curves(run)
    return run, sae.save(run / HOOK)


def test_the_run_folders_training_curves_are_copied_into_the_site_and_served(tmp_path, sae, cache, lm):
    from saelens_lite.dashboards.server import make_server

    run, sae_dir = fake_run(tmp_path, sae)
    out = tmp_path / "site"
    build_dashboard(sae_dir, cache, out, model=lm, progress=False, n_neighbours=0, n_logits=0)
    meta = read_jsonp(out / "data" / "meta.js", "saeMeta")
    assert meta["training_curves"] == f"data/{CURVES_NAME}"  # relative to index.html
    assert (out / meta["training_curves"]).read_bytes() == (run / CURVES_NAME).read_bytes()
    assert "meta.training_curves" in (out / "assets" / "app.js").read_text()  # the index shows it
    with make_server(out, port=0) as httpd:
        conn = http.client.HTTPConnection("127.0.0.1", httpd.server_address[1], timeout=10)
        conn.request("GET", "/" + meta["training_curves"])
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type") == "image/png"
        assert resp.read() == (run / CURVES_NAME).read_bytes()
    # rebuilt from an SAE object (no folder to look in): no curves, and no stale copy
    build_dashboard(sae, cache, out, model=lm, progress=False, n_neighbours=0, n_logits=0)
    assert read_jsonp(out / "data" / "meta.js", "saeMeta")["training_curves"] is None
    assert not (out / "data" / CURVES_NAME).exists()


def test_training_curves_are_found_in_the_sae_folder_or_its_run_folder_only(tmp_path, sae):
    run, sae_dir = fake_run(tmp_path, sae)
    assert find_training_curves(sae_dir) == run / CURVES_NAME
    (sae_dir / CURVES_NAME).write_bytes(b"own")
    assert find_training_curves(sae_dir) == sae_dir / CURVES_NAME
    lone = sae.save(tmp_path / "elsewhere" / "sae")
    (tmp_path / "elsewhere" / CURVES_NAME).write_bytes(b"not a run folder: no metrics.jsonl")
    assert find_training_curves(lone) is None


# --- hook ---------------------------------------------------------------------------------------


def hook_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelname == "WARNING" and "trained on" in r.getMessage()]


def test_a_hook_other_than_the_saes_is_read_with_a_warning_naming_both(tmp_path, sae, cache, lm, caplog):
    from saelens_lite.saes import SAE

    other = SAE.from_config(dataclasses.replace(sae.cfg, hook_name="blocks.0.hook_resid_post"))
    other.load_state_dict(sae.state_dict())
    with caplog.at_level("WARNING", logger="saelens_lite.dashboards"):
        build_dashboard(other, cache, tmp_path / "a", model=lm, progress=False, hook=HOOK, n_neighbours=0)
    (msg,) = hook_warnings(caplog)
    assert HOOK in msg and "blocks.0.hook_resid_post" in msg
    caplog.clear()
    with caplog.at_level("WARNING", logger="saelens_lite.dashboards"):  # the cache's only hook
        build_dashboard(other, cache, tmp_path / "b", model=lm, progress=False, n_neighbours=0)
    assert len(hook_warnings(caplog)) == 1
    caplog.clear()
    with caplog.at_level("WARNING", logger="saelens_lite.dashboards"):  # the SAE's own hook
        build_dashboard(sae, cache, tmp_path / "c", model=lm, progress=False, hook=HOOK, n_neighbours=0)
    assert hook_warnings(caplog) == []


# --- explanations (saelens-lite explain's JSONL) -------------------------------------------------


def expl_record(f: int, text: str, density: float | None = None) -> dict:
    """A record as saelens_lite.explain writes it (docs/explanations.md)."""
    return {"feature": f, "explanation": text, "explainer": "template",
            "scores": {"embedding": {"auroc": 0.9, "shuffled_auroc": 0.5, "n_pos": 10, "n_neg": 10}},
            "shuffled": {"feature": f + 1, "explanation": "other"}, "density": density, "max_act": 1.0,
            "examples": {}}


def write_explanations(folder, records: list[dict], settings: dict):
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(settings))
    (folder / "explanations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder / "explanations.jsonl"


def test_explanations_from_a_jsonl_reach_the_index_and_the_feature_shards(tmp_path, sae, cache, lm):
    sae_dir = sae.save(tmp_path / "sae")
    path = write_explanations(tmp_path / "expl", [expl_record(3, EVIL[1]), expl_record(40, "the word the")],
                              {"sae": str(sae_dir.resolve()), "cache": str(cache.path.resolve())})
    out = tmp_path / "site"
    build_dashboard(sae_dir, cache, out, model=lm, progress=False, shard_features=32, n_neighbours=0,
                    explanations=path)
    index = read_jsonp(out / "data" / "index.js", "saeIndex")
    assert index["expl"][3] == EVIL[1] and index["expl"][40] == "the word the" and index["expl"][0] is None
    assert index["scores"] == {"embedding": [0.9 if f in (3, 40) else None for f in range(80)]}
    meta = read_jsonp(out / "data" / "meta.js", "saeMeta")
    assert meta["explanations"] == {"source": "explanations.jsonl", "n": 2, "explainers": ["template"],
                                    "scorers": ["embedding"]}
    shard = read_jsonp(out / "data" / "f" / "00001.js", "saeShard")
    assert shard["expl"] == {"40": {"text": "the word the", "explainer": "template",
                                    "scores": expl_record(40, "")["scores"],
                                    "shuffled": {"feature": 41, "explanation": "other"}}}
    assert "</script>" not in (out / "data" / "f" / "00000.js").read_text()  # free text is escaped


def test_without_explanations_the_site_data_is_unchanged(site):
    assert "expl" not in read_jsonp(site / "data" / "index.js", "saeIndex")
    assert "explanations" not in read_jsonp(site / "data" / "meta.js", "saeMeta")
    assert "expl" not in read_jsonp(site / "data" / "f" / "00000.js", "saeShard")


def test_explanations_beyond_the_saes_width_fail_naming_the_feature(tmp_path, sae, cache, lm):
    path = write_explanations(tmp_path / "expl", [expl_record(3, "a"), expl_record(200, "b")], {"sae": None})
    with pytest.raises(ValueError, match=r"feature 200 is outside this SAE's 80 features \(0..79\)"):
        build_dashboard(sae, cache, tmp_path / "site", model=lm, progress=False, explanations=path)
    with pytest.raises(ValueError, match="feature 80 is outside"):
        build_dashboard(sae, cache, tmp_path / "site", model=lm, progress=False,
                        explanations={80: expl_record(80, "a")})
    assert not (tmp_path / "site").exists()  # checked before any work


def test_explanations_of_another_sae_fail_naming_it(tmp_path, sae, cache, lm):
    sae_dir = sae.save(tmp_path / "sae")
    path = write_explanations(tmp_path / "expl", [expl_record(3, "a")], {"sae": "/elsewhere/sae"})
    with pytest.raises(ValueError, match="written for the SAE '/elsewhere/sae', not .*sae'"):
        build_dashboard(sae_dir, cache, tmp_path / "site", model=lm, progress=False, explanations=path)
    # the same folder, retrained: the records' densities on the same cache give it away
    path = write_explanations(tmp_path / "expl2", [expl_record(3, "a", density=0.123)],
                              {"sae": str(sae_dir.resolve()), "cache": str(cache.path.resolve())})
    with pytest.raises(ValueError, match="feature 3 has density 0.123 there but"):
        build_dashboard(sae_dir, cache, tmp_path / "site", model=lm, progress=False, n_neighbours=0,
                        explanations=path)
    build_dashboard(sae_dir, cache, tmp_path / "site", model=lm, progress=False, n_neighbours=0)  # rebuildable


def test_cli_dashboard_takes_explanations(tmp_path, sae, cache):
    from saelens_lite.cli import main

    sae_dir = sae.save(tmp_path / "sae")
    path = write_explanations(tmp_path / "expl", [expl_record(7, "seven")], {"sae": str(sae_dir)})
    rc = main(["dashboard", "--sae", str(sae_dir), "--activations", str(cache.path), "--out",
               str(tmp_path / "site"), "--n-neighbours", "0", "--no-progress", "--explanations", str(path)])
    assert rc == 0
    assert read_jsonp(tmp_path / "site" / "data" / "index.js", "saeIndex")["expl"][7] == "seven"


def test_dashboard_config_checks_its_own_fields_and_the_statistics_ones():
    from saelens_lite.dashboards import DashboardConfig

    with pytest.raises(ValueError, match="window_before=-1"):
        DashboardConfig(window_before=-1)
    with pytest.raises(ValueError, match="shard_features=0"):
        DashboardConfig(shard_features=0)
    with pytest.raises(ValueError, match="n_top=0"):  # a StatsConfig field
        DashboardConfig(n_top=0)


def test_every_dashboard_option_keeps_its_help_from_the_field_docstring():
    """The statistics' fields are inherited from StatsConfig; --help still shows their docstrings."""
    import argparse

    from saelens_lite.dashboards import DashboardConfig
    from saelens_lite.util.dataclass_args import add_dataclass_args

    p = argparse.ArgumentParser(formatter_class=lambda prog: argparse.HelpFormatter(
        prog, max_help_position=200, width=10_000))
    add_dataclass_args(p, DashboardConfig)
    lines = {ln.split()[0]: ln for ln in p.format_help().splitlines() if ln.startswith("  --")}
    assert set(lines) == {"--" + f.name.replace("_", "-") for f in dataclasses.fields(DashboardConfig)}
    assert "Top activating examples kept per feature" in lines["--n-top"]  # inherited
    assert "Context tokens shown before" in lines["--window-before"]
    assert all(len(ln.split()) > 2 for ln in lines.values())  # each has a help text
