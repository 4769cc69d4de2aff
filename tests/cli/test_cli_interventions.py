"""`saelens-lite steer`, `ablate` and `attribute` through the command line itself, on tiny-llama
with tiny SAEs saved to disk: the text output shows the Python API's results and says the unit of
the strength; `--json` is the API's to_dict(); a dashboard site puts the strength in max-activation
units; bad inputs (feature index, SAE width, hook, target, position) end in one line naming the
value and what is allowed, exit status 2."""

from __future__ import annotations

import json

import helpers
import pytest

from saelens_lite.cli import build_parser, main
from saelens_lite.interventions import (
    ablate,
    ablation_check,
    add_direction,
    attribute,
    clamp,
    generate,
    load_site_stats,
    token_loss_effects,
)
from saelens_lite.saes import SAE

pytestmark = pytest.mark.usefixtures("one_thread")

D, F = 64, 128
HOOK, HOOK2 = "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"
PROMPT = "The weather today"
TEXT = "the cat sat on the mat"
COMMANDS = ("steer", "ablate", "attribute")


def save_sae(path, hook=HOOK, seed=0, d_in=D):
    sae = helpers.make_sae("topk", seed=seed, bias_std=0.05, spread_w_dec=True, d_in=d_in, d_sae=F, k=8,
                           hook_name=hook)
    sae.save(path)
    return path


@pytest.fixture(scope="module")
def lm():
    from saelens_lite.lm.load import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    return save_sae(tmp_path_factory.mktemp("iv") / "sae")


@pytest.fixture(scope="module")
def sae2_dir(tmp_path_factory):
    return save_sae(tmp_path_factory.mktemp("iv") / "sae2", hook=HOOK2, seed=1)


@pytest.fixture(scope="module")
def sae(sae_dir):
    return SAE.load(sae_dir).eval()


@pytest.fixture(scope="module")
def site(tmp_path_factory, lm, sae):
    from saelens_lite.cache.harvest import HarvestConfig, harvest
    from saelens_lite.dashboards import build_dashboard

    root = tmp_path_factory.mktemp("iv")
    cache = harvest(HarvestConfig(model="tiny-llama", hooks=[HOOK], tokens=600, context_size=30),
                    root / "acts", model=lm, progress=False)
    build_dashboard(sae, cache, root / "site", model=lm, progress=False, n_top=3, n_quantiles=2,
                    n_per_quantile=1, n_neighbours=0, n_logits=0)
    return root / "site"


def cli(capsys, *argv) -> str:
    """stdout of a successful command."""
    assert main([*map(str, argv)]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def cli_json(capsys, *argv) -> dict:
    return json.loads(cli(capsys, *argv, "--json"))


def q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


# ------------------------------------------------------------------ help


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_is_documented_with_its_default(command):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    text = " ".join(sub.format_help().split())
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, action.dest
            assert f"(default: {action.default})" in text or f"(default: {action.default!r})" in text, action.dest


# ------------------------------------------------------------------ steer


def test_steer_the_issue_example_prints_both_continuations_and_the_unit(capsys, lm, sae, sae_dir):
    out = cli(capsys, "steer", "--model", "tiny-llama", "--sae", sae_dir, "--feature", 100, "--strength", 8,
              "--prompt", PROMPT, "--max-new-tokens", 12, "--seed", 0)
    g = generate(lm, PROMPT, sae, [add_direction(100, 8.0)], max_new_tokens=12)
    c = g.continuations[0]
    assert c.baseline != c.edited  # strength 8 changes the text: the side by side shows something
    assert f"baseline: {q(c.baseline)}" in out and f"steered:  {q(c.edited)}" in out
    assert "strength 8 in raw units of the unit-norm decoder direction" in out and "greedy" in out


def test_steer_json_is_the_python_result(capsys, lm, sae, sae_dir):
    d = cli_json(capsys, "steer", "--model", "tiny-llama", "--sae", sae_dir, "--feature", 3, "--feature", 9,
                 "--strength", 2, -1.5, "--mode", "clamp", "--positions", 1, 2, "--prompt", PROMPT,
                 "--prompt", "a b", "--max-new-tokens", 6, "--temperature", 0.8, "--seed", 5)
    edits = [clamp(3, 2.0, positions=[1, 2]), clamp(9, -1.5, positions=[1, 2])]
    g = generate(lm, [PROMPT, "a b"], sae, edits, max_new_tokens=6, temperature=0.8, seed=5)
    assert d == json.loads(json.dumps(g.to_dict()))
    assert [e["unit"] for e in d["edits"]] == ["code", "code"] and d["seed"] == 5


def test_steer_with_a_dashboard_puts_the_strength_in_max_activation_units(capsys, lm, sae, sae_dir, site):
    max_F = load_site_stats(site).max_F
    f = int(max_F.argmax())
    argv = ["steer", "--model", "tiny-llama", "--sae", sae_dir, "--dashboard", site, "--feature", f,
            "--strength", 3, "--prompt", PROMPT, "--max-new-tokens", 4]
    d = cli_json(capsys, *argv)
    assert d["edits"][0]["unit"] == "max_activation"
    assert d["edits"][0]["code_value"] == pytest.approx(3 * max_F[f])
    assert d == json.loads(json.dumps(generate(lm, PROMPT, sae, [add_direction(f, 3.0)], max_new_tokens=4,
                                               stats=load_site_stats(site)).to_dict()))
    assert f"strength 3 in units of the feature's max activation ({max_F[f]:.4g} in {site})" in cli(capsys, *argv)


def test_steer_two_saes_with_hook_feature_pairs(capsys, lm, sae, sae_dir, sae2_dir):
    d = cli_json(capsys, "steer", "--model", "tiny-llama", "--sae", sae_dir, "--sae", sae2_dir,
                 "--feature", f"{HOOK}:4", "--feature", f"{HOOK2}:7", "--strength", 5,
                 "--prompt", PROMPT, "--max-new-tokens", 5)
    saes = {HOOK: sae, HOOK2: SAE.load(sae2_dir).eval()}
    g = generate(lm, PROMPT, saes, [add_direction(4, 5.0, hook=HOOK), add_direction(7, 5.0, hook=HOOK2)],
                 max_new_tokens=5)
    assert d == json.loads(json.dumps(g.to_dict()))
    assert [(e["hook"], e["feature"]) for e in d["edits"]] == [(HOOK, 4), (HOOK2, 7)]


# ------------------------------------------------------------------ ablate


def test_ablate_text_json_is_token_loss_effects(capsys, lm, sae, sae_dir):
    d = cli_json(capsys, "ablate", "--model", "tiny-llama", "--sae", sae_dir, "--feature", 11,
                 "--feature", 12, "--text", TEXT)
    assert d["generation"] is None
    expected = token_loss_effects(lm, TEXT, sae, [ablate(11), ablate(12)]).to_dict()
    assert d["loss_effects"] == json.loads(json.dumps(expected))


def test_ablate_prints_continuations_and_the_loss_table(capsys, lm, sae, sae_dir):
    r = token_loss_effects(lm, TEXT, sae, [ablate(11)])
    g = generate(lm, PROMPT, sae, [ablate(11)], max_new_tokens=5)
    out = cli(capsys, "ablate", "--model", "tiny-llama", "--sae", sae_dir, "--feature", 11, "--text", TEXT,
              "--prompt", PROMPT, "--max-new-tokens", 5)
    c = g.continuations[0]
    assert f"baseline: {q(c.baseline)}" in out and f"ablated:  {q(c.edited)}" in out
    assert "edit: ablate feature 11 at blocks.1.hook_resid_post (all positions)" in out
    rows = [line.split() for line in out.splitlines() if line[:7].strip().rstrip("*").isdigit()]
    assert len(rows) == len(r.tokens)
    t = r.tokens[5]  # position, token, activation, clean, ablated, delta
    assert rows[5][0] == "5" and rows[5][2:] == [f"{t.activations[0]:.4g}", f"{t.loss_clean:.4f}",
                                                 f"{t.loss_edited:.4f}", f"{t.delta:+.4f}"]
    assert rows[0][0] == "0*" and rows[0][3:] == ["-", "-", "-"]
    assert (f"mean over {r.n_scored} scored tokens: clean {r.loss_clean:.4f}, ablated {r.loss_edited:.4f}, "
            f"delta {r.delta:+.4f}") in out


def test_ablate_generation_json(capsys, lm, sae, sae_dir):
    d = cli_json(capsys, "ablate", "--model", "tiny-llama", "--sae", sae_dir, "--feature", 2,
                 "--positions", 3, "--prompt", PROMPT, "--max-new-tokens", 4)
    g = generate(lm, PROMPT, sae, [ablate(2, positions=[3])], max_new_tokens=4)
    assert d == {"generation": json.loads(json.dumps(g.to_dict())), "loss_effects": None}


# ------------------------------------------------------------------ attribute


def test_attribute_prints_the_ranked_features_and_the_validation(capsys, lm, sae, sae_dir):
    prompt = "The Eiffel Tower is in the city of"
    a = attribute(lm, prompt, sae, " ", contrast="e")
    chk = ablation_check(lm, prompt, sae, " ", contrast="e", top_n=6, attribution=a)
    out = cli(capsys, "attribute", "--model", "tiny-llama", "--sae", sae_dir, "--prompt", prompt,
              "--target", " ", "--contrast", "e", "--top", 4, "--validate", 6)
    assert f'metric m = logit(" ") - logit("e") at position {a.position} ("f") = {a.metric:.4f}' in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4]
    for r, f, m in zip(rows, a.features, chk.measured):
        assert (int(r[1]), int(r[3]), r[5], r[6]) == (f.position, f.feature, f"{f.attribution:+.4g}", f"{m:+.4g}")
    assert f"Spearman rho = {chk.spearman:.3f}" in out
    assert f"error node at {HOOK} (summed over positions): {a.error_totals()[HOOK]:+.4g}" in out


def test_attribute_json_is_the_python_result(capsys, lm, sae, sae_dir, sae2_dir):
    saes = {HOOK: sae, HOOK2: SAE.load(sae2_dir).eval()}
    d = cli_json(capsys, "attribute", "--model", "tiny-llama", "--sae", sae_dir, "--sae", sae2_dir,
                 "--prompt", TEXT, "--target", "t", "--position", -2, "--top", 0, "--validate", 5)
    a = attribute(lm, TEXT, saes, "t", position=-2)
    assert d["attribution"] == json.loads(json.dumps(a.to_dict()))
    assert d["validation"] == json.loads(json.dumps(ablation_check(lm, TEXT, saes, "t", position=-2, top_n=5,
                                                                   attribution=a).to_dict()))
    assert {f["hook"] for f in d["attribution"]["features"]} == {HOOK, HOOK2}
    d = cli_json(capsys, "attribute", "--model", "tiny-llama", "--sae", sae_dir, "--prompt", TEXT, "--target", "t")
    assert len(d["attribution"]["features"]) == 10 and d["validation"] is None


# ------------------------------------------------------------------ bad inputs


@pytest.fixture(scope="module")
def bad_saes(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return {"narrow": save_sae(root / "narrow", d_in=32), "far": save_sae(root / "far", hook="blocks.9.hook_resid_post")}


BAD = [  # (argv after --model tiny-llama, the pieces the one-line error must contain)
    (["steer", "--sae", "{sae}", "--feature", "128", "--prompt", "x"],
     ["feature=128 is out of range", "valid indices are 0..127"]),
    (["ablate", "--sae", "{sae}", "--feature", f"{HOOK}:500", "--text", "ab"], ["feature=500", "0..127"]),
    (["steer", "--sae", "{narrow}", "--feature", "1", "--prompt", "x"],
     ["reads d_in=32 but the hook gives width 64"]),
    (["attribute", "--sae", "{far}", "--prompt", "x", "--target", "x"],
     ["unknown hook 'blocks.9.hook_resid_post'", "closest: blocks.3.hook_resid_post"]),
    (["ablate", "--sae", "{sae}", "--feature", "abc", "--text", "ab"], ["--feature 'abc'", "integer >= 0"]),
    (["steer", "--sae", "{sae}", "--feature", f"{HOOK2}:1", "--prompt", "x"],
     [f"hook='{HOOK2}' has no spliced SAE", f"spliced hooks: ['{HOOK}']"]),
    (["steer", "--sae", "{sae}", "--feature", "1", "--feature", "2", "--strength", "1", "2", "3", "--prompt", "x"],
     ["3 --strength values for 2 --feature"]),
    (["steer", "--sae", "{sae}", "--feature", "1", "--prompt", "x", "--max-new-tokens", "0"],
     ["max_new_tokens=0 is invalid", "integer >= 1"]),
    (["attribute", "--sae", "{sae}", "--prompt", "hi", "--target", "xy"], ["target 'xy' is 2 tokens"]),
    (["attribute", "--sae", "{sae}", "--prompt", "hi", "--target", "x", "--position", "9"],
     ["position=9 is outside the prompt's 3 tokens: use -3..2"]),
    (["attribute", "--sae", "{sae}", "--prompt", "hi", "--target", "x", "--validate", "1"],
     ["--validate 1 is invalid", "0 (skip) or an integer >= 2"]),
    (["ablate", "--sae", "{sae}", "--feature", "1"], ["give --prompt", "--text"]),
    (["steer", "--sae", "{sae}", "--feature", "1", "--prompt", "x", "--dashboard", "{sae}"],
     ["holds no saved feature statistics", "saelens-lite dashboard"]),
]


@pytest.mark.parametrize(("argv", "pieces"), BAD, ids=[" ".join(a[:1] + a[3:5]) for a, _ in BAD])
def test_bad_inputs_end_in_one_line_naming_the_value(capsys, argv, pieces, sae_dir, bad_saes):
    paths = {"sae": sae_dir, **bad_saes}
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in argv]
    assert main([argv[0], "--model", "tiny-llama", *argv[1:]]) == 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert cap.out == "" and "\n" not in err and "Traceback" not in err
    assert err.startswith(f"saelens-lite {argv[0]}: error: ")
    for piece in pieces:
        assert piece in err


def test_steer_dashboard_of_another_hook_is_refused(capsys, sae2_dir, site):
    assert main(["steer", "--model", "tiny-llama", "--sae", str(sae2_dir), "--dashboard", str(site),
                 "--feature", "1", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert f"describes an SAE at '{HOOK}', where no --sae is spliced; spliced hooks: ['{HOOK2}']" in err
