"""Explanations: examples split without shared contexts, the template explainer names a known
trigger token, an oracle explanation beats a shuffled one, runs resume after kill -9 to the same
file, bad choices fail before anything is written, and the openai explainer and judges talk to a
real HTTP server started here. The synthetic SAE and cache: tests/explain/_explain_worker.py."""

import importlib.util
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import _explain_worker as synth
import numpy as np
import pytest
import torch

from saelens_lite.cache import ActivationCache
from saelens_lite.cli import main
from saelens_lite.explain import (
    ExampleSource,
    ExplainConfig,
    TemplateExplainer,
    auroc,
    read_records,
)
from saelens_lite.explain.embedding import SentenceEncoder
from saelens_lite.explain.prompts import highlight, parse_explanation
from saelens_lite.explain.scorers import EmbeddingScorer, FuzzingScorer
from saelens_lite.explain.select import parse_features
from saelens_lite.lm.load import load_model
from saelens_lite.saes import SAE

WORKER = Path(__file__).with_name("_explain_worker.py")
CFG = ExplainConfig(n_explain=6, n_heldout=8, n_nonactivating=8, window_before=24, window_after=8,
                    batch_features=2)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synth.build(tmp_path_factory.mktemp("explain"))


@pytest.fixture(scope="module")
def source(synthetic):
    sae_dir, cache_dir = synthetic
    src = ExampleSource(SAE.load(sae_dir).eval(), ActivationCache(cache_dir), load_model("tiny-llama"),
                        CFG, progress=False)
    yield src
    src.close()


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


def test_examples_use_each_packed_context_once_and_nonactivating_windows_are_zero(source):
    assert source.alive.tolist() == [0, 1, 2, 3, 4]
    for f in source.alive.tolist():
        ex = source.examples(f)
        sets = [ex.explain, ex.heldout, ex.nonactivating]
        contexts = [c.context for s in sets for c in s]
        assert len(contexts) == len(set(contexts)), f"feature {f}: a context is reused"
        assert [len(s) for s in sets] == [CFG.n_explain, CFG.n_heldout, CFG.n_nonactivating]
        assert all(c.acts[c.centre] > 0 for c in ex.explain + ex.heldout)
        assert all(max(c.acts) == 0 for c in ex.nonactivating)
        # explainer examples are the strongest (top) activations, in order
        tops = [c.acts[c.centre] for c in ex.explain]
        assert tops == sorted(tops, reverse=True)
        assert tops[0] == pytest.approx(ex.max_act, rel=1e-3)


def test_template_explainer_names_the_trigger_token(source):
    text = TemplateExplainer().explain(source.examples(0))
    assert text.startswith(f'Fires on "@" ({CFG.n_explain}/{CFG.n_explain})'), text
    assert "boosts" in text  # tiny-llama has an LM head, so the decoder's logit effects are listed


def test_highlight_marks_runs_and_parse_reads_the_last_tag(source):
    c = source.examples(0).explain[0]
    marked = highlight(c)
    assert "<<@>>" in marked and marked.count("<<") == len(c.active)
    assert parse_explanation("thinking...\n[EXPLANATION]: x\n[EXPLANATION]:  The token \"er\". ") \
        == 'The token "er".'
    assert parse_explanation("\n  cats and dogs\nmore") == "cats and dogs"
    assert parse_explanation("[EXPLANATION]: The pattern is:\n\n- Python keywords\n") == "Python keywords"
    assert parse_explanation("Answer:") == "Answer:"


def test_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    pos, neg = np.round(rng.normal(1, 1, 30), 1), np.round(rng.normal(0, 1, 25), 1)  # with ties
    want = roc_auc_score([1] * 30 + [0] * 25, np.concatenate([pos, neg]))
    assert auroc(pos, neg) == pytest.approx(want, abs=1e-12)
    assert auroc([], [1.0]) is None


def test_oracle_explanation_beats_shuffled_with_the_embedding_scorer(source, encoder):
    scorer = EmbeddingScorer(encoder)
    for f, oracle in synth.ORACLE.items():
        shuffled = synth.ORACLE[f % 4 + 1]  # another topic's description
        real, other = scorer.score([oracle, shuffled], source.examples(f))
        assert real["auroc"] >= 0.8 and real["auroc"] > other["auroc"] + 0.2, (f, real, other)


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None,
                    reason="sentence-transformers not installed; the transformers path is used")
def test_sentence_transformers_matches_the_mean_pooling_recipe(encoder):
    texts = ["the cat sat on the mat", "stock prices fell", "a b c " * 100]  # the last truncates
    ref = SentenceEncoder(backend="transformers").encode(texts)
    got = SentenceEncoder(backend="sentence-transformers").encode(texts)
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_fuzzing_negatives_borrow_marks_from_positives(source):
    ex = source.examples(0)
    pos, neg = FuzzingScorer(judge=None).items(ex)
    assert len(pos) == len(ex.heldout) and len(neg) == len(ex.nonactivating)
    assert all("<<@>>" in t for t in pos)
    assert all("<<" in t and "<<@>>" not in t for t in neg)


def test_parse_features():
    count_F = np.array([5, 0, 9, 1, 9])
    assert parse_features(None)(count_F) == [0, 2, 3, 4]
    assert parse_features("top:2")(count_F) == [2, 4]
    assert parse_features("1-3")(count_F) == [2, 3]  # 1 never fires
    assert parse_features("0:2")(count_F) == [0]
    assert parse_features("4,0,4")(count_F) == [4, 0]
    for bad in ("top:x", "3-1", "a,b"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            parse_features(bad)
    with pytest.raises(ValueError, match=r"\[7\], outside the SAE's 5 features"):
        parse_features("7")(count_F)


def _cli(synthetic, out, *extra):
    sae_dir, cache_dir = synthetic
    return main(["explain", "--sae", sae_dir, "--activations", cache_dir, "--out", str(out),
                 "--no-progress", "--n-explain", "4", "--n-heldout", "4", "--n-nonactivating", "4",
                 "--batch-features", "2", *extra])


def test_cli_writes_one_record_per_feature_and_a_rerun_skips_them(synthetic, tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(synthetic, out, "--features", "0-2") == 0
    records = read_records(out / "explanations.jsonl")
    assert [r["feature"] for r in records] == [0, 1, 2]
    r = records[0]
    assert r["explainer"] == "template" and '"@"' in r["explanation"]
    assert set(r["scores"]["embedding"]) == {"auroc", "shuffled_auroc", "n_pos", "n_neg"}
    assert r["shuffled"]["feature"] == 1  # rotation inside the batch [0, 1]
    assert records[2]["shuffled"]["feature"] == 1  # a batch of one borrows the previous record
    assert set(r["examples"]) == {"explain", "heldout", "nonactivating"}
    assert not set(r["examples"]["explain"]) & set(r["examples"]["heldout"])
    before = (out / "explanations.jsonl").read_bytes()
    capsys.readouterr()
    assert _cli(synthetic, out, "--features", "0-2") == 0
    assert (out / "explanations.jsonl").read_bytes() == before
    assert "(0 new" in capsys.readouterr().out
    assert _cli(synthetic, out, "--features", "0-3") == 2  # other settings: refused, file untouched
    assert "other settings (features" in capsys.readouterr().err
    assert (out / "explanations.jsonl").read_bytes() == before


def test_bad_explainer_is_a_clear_error_and_writes_nothing(synthetic, tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(synthetic, out, "--explainer", "gpt4") == 2
    err = capsys.readouterr().err
    assert "--explainer 'gpt4' is not valid" in err and "template" in err and "hf:NAME_OR_PATH" in err \
        and "openai:URL" in err
    assert not out.exists()
    assert _cli(synthetic, out, "--scorers", "embedding,vibes") == 2
    assert "'embedding,vibes' is not valid" in capsys.readouterr().err
    assert not out.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_is_a_clear_error_and_writes_nothing(synthetic, tmp_path, capsys):
    out, url = tmp_path / "run", f"http://127.0.0.1:{_free_port()}/v1"
    assert _cli(synthetic, out, "--explainer", f"openai:{url}", "--openai-model", "m", "--retries", "1",
                "--timeout", "5") == 2
    err = capsys.readouterr().err
    assert f"--explainer openai:{url}: the endpoint does not answer" in err and "2 attempt(s)" in err
    assert "template" in err  # the valid choices
    assert not out.exists()


class RuleServer(BaseHTTPRequestHandler):
    """A tiny OpenAI-compatible chat server that answers by rule, not a mock of the client: the
    explainer's answer names the most often highlighted token; the judge says yes when the first
    quoted token of the description is in the text (inside << >> for the fuzzing question), with
    log-probabilities as OpenAI returns them. The first ``fail`` requests get HTTP 503."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        if self.server.fail > 0:
            self.server.fail -= 1
            self.send_error(503, "warming up")
            return
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        last = body["messages"][-1]["content"]
        if body.get("logprobs"):
            desc, _, text = last.partition("\n\nText: ")
            quoted = re.findall(r'"(.+?)"', desc)
            marked = "".join(re.findall(r"<<(.*?)>>", text)) if "<<" in text else text
            p = 0.9 if quoted and quoted[0] in marked else 0.1
            top = [{"token": "yes", "logprob": math.log(p)}, {"token": "no", "logprob": math.log(1 - p)}]
            reply = {"choices": [{"message": {"content": "yes" if p > 0.5 else "no"},
                                  "logprobs": {"content": [{"token": "yes", "top_logprobs": top}]}}]}
        else:
            marks = Counter(re.findall(r"<<(.*?)>>", last))
            name = marks.most_common(1)[0][0] if marks else "nothing"
            reply = {"choices": [{"message": {"content": f'[EXPLANATION]: The token "{name}".'}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def rule_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), RuleServer)
    server.requests, server.fail = [], 2
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_openai_explainer_and_judge_against_a_local_server(synthetic, tmp_path, rule_server):
    url = f"http://127.0.0.1:{rule_server.server_address[1]}/v1"
    out = tmp_path / "run"
    assert _cli(synthetic, out, "--features", "0,1", "--explainer", f"openai:{url}", "--openai-model",
                "rule-1", "--scorers", "detection,fuzzing") == 0
    paths = {p for p, _ in rule_server.requests}
    assert paths == {"/v1/chat/completions"}
    assert all(b["model"] == "rule-1" for _, b in rule_server.requests)
    r0, r1 = read_records(out / "explanations.jsonl")
    assert r0["explanation"] == 'The token "@".' and r0["explainer"] == f"openai:{url}#rule-1"
    # The rule judge recognises "@" contexts perfectly; the shuffled explanation names a letter of
    # a topic feature, present in nearly every context, so its scores sit near chance.
    for scorer in ("detection", "fuzzing"):
        s = r0["scores"][scorer]
        assert s["auroc"] == 1.0 and s["balanced_accuracy"] == 1.0, (scorer, s)
        assert s["shuffled_auroc"] < 0.8, (scorer, s)
    assert r1["shuffled"]["explanation"] == r0["explanation"]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.slow  # starts a process
def test_resume_after_kill_9_gives_the_same_file(synthetic, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent), "OMP_NUM_THREADS": "1"}
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    run = lambda out, mode: [sys.executable, str(WORKER), *synthetic, str(out), mode]  # noqa: E731
    subprocess.run(run(full, "full"), env=env, check=True, timeout=300)
    proc = subprocess.Popen(run(crashed, "crash"), env=env)
    deadline = time.time() + 300
    while _lines(crashed / "explanations.jsonl") < 2 and time.time() < deadline:  # batch one: 2 lines
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = _lines(crashed / "explanations.jsonl")
    assert 2 <= n_before < 5
    with open(crashed / "explanations.jsonl", "ab") as fh:  # what a kill mid-write leaves
        fh.write(b'{"feature":2,"explanation":"Fires on')
    subprocess.run(run(crashed, "full"), env=env, check=True, timeout=300)
    assert (crashed / "explanations.jsonl").read_bytes() == (full / "explanations.jsonl").read_bytes()
    assert len(read_records(full / "explanations.jsonl")) == 5


@pytest.mark.slow
def test_hf_explainer_smollm2_writes_an_explanation_and_judges(source):
    from saelens_lite.explain import make_explainer

    torch.set_num_threads(1)
    explainer = make_explainer("hf")
    assert explainer.spec == "hf:smollm2-135m"
    ex = source.examples(0)
    text = explainer.explain(ex)
    assert isinstance(text, str) and 0 < len(text) <= 200
    p = explainer.chat.p_yes([[{"role": "user", "content": "Is Paris in France? Answer yes or no."}],
                              [{"role": "user", "content": "Is 2 + 2 = 5? Answer yes or no."}]])
    assert all(0 <= x <= 1 for x in p)
    # Left padding with positions from each sequence's start: alone or batched, the same P(yes).
    alone = explainer.chat.p_yes([[{"role": "user", "content": "Is 2 + 2 = 5? Answer yes or no."}]])
    assert alone[0] == pytest.approx(p[1], abs=1e-4)
