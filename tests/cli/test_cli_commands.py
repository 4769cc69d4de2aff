"""The README's commands through the command line itself, on tiny models and sizes: `train`
(its aliases, `--option`, an interrupted run continued with `--resume`), `convert --to saelens`
and back, `serve --model --sae` answering `/api/encode`, and `bench synthetic` without
`--arch` (a row or a reason for every registered architecture)."""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from saelens_lite.cli import main
from saelens_lite.saes import REGISTRY, SAE

HOOK = "blocks.1.hook_resid_post"
D = 64  # tiny-llama's width
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from saelens_lite.cache.harvest import HarvestConfig, harvest

    out = tmp_path_factory.mktemp("cli") / "acts"
    harvest(HarvestConfig(model="tiny-llama", hooks=[HOOK], tokens=1200, context_size=32, device="cpu"),
            out, progress=False)
    return out


def train_args(cache: Path, out: Path, *extra: str) -> list[str]:
    """The README's `train` line (aliases --hook --arch --out), shrunk to 12 steps of 128 tokens."""
    return ["train", "--activations", str(cache), "--hook", HOOK, "--arch", "topk", "--expansion", "2",
            "--k", "4", "--tokens", str(128 * 12), "--batch-size", "128", "--checkpoint-every", str(128 * 4),
            "--init-sample-tokens", "256", "--device", "cpu", "--no-progress", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory):
    """The SAE folder written by `saelens-lite train` (uninterrupted)."""
    out = tmp_path_factory.mktemp("cli") / "sae"
    assert main(train_args(cache, out, "--option", "aux_coeff=0.05")) == 0
    return out / HOOK


def metrics_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------- train


def test_train_aliases_and_option_reach_the_saved_sae(trained, capsys):
    sae = SAE.load(trained)
    assert type(sae) is REGISTRY["topk"]
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (D, 2 * D, 4)  # --expansion 2, --k 4
    assert sae.cfg.hook_name == HOOK and sae.cfg.aux_coeff == 0.05  # --hook, --option
    assert metrics_steps(trained.parent)[-1] == 12


def test_train_refuses_a_malformed_option_in_one_line(cache, tmp_path, capsys):
    assert main(train_args(cache, tmp_path / "x", "--option", "aux_coeff")) == 2
    err = capsys.readouterr().err
    assert "expected KEY=VALUE" in err and "Traceback" not in err
    assert main(train_args(cache, tmp_path / "y", "--option", "no_such_field=1")) == 2
    assert "no_such_field" in capsys.readouterr().err


def test_an_interrupted_train_resumes_and_ends_as_the_uninterrupted_run(cache, trained, tmp_path,
                                                                        monkeypatch, capsys, caplog):
    from saelens_lite.training import trainer

    real = trainer.save_checkpoint

    def save_then_interrupt(*a, **k):  # Ctrl-C right after the first checkpoint (step 4)
        real(*a, **k)
        raise KeyboardInterrupt

    out = tmp_path / "sae"
    args = train_args(cache, out, "--option", "aux_coeff=0.05")
    monkeypatch.setattr(trainer, "save_checkpoint", save_then_interrupt)
    assert main(args) == 130
    assert "re-run the same command to resume" in capsys.readouterr().err
    assert not (out / HOOK / "sae.safetensors").exists()
    monkeypatch.setattr(trainer, "save_checkpoint", real)

    assert main(args) == 2  # without --resume the checkpoint is not overwritten
    assert "resume" in capsys.readouterr().err
    with caplog.at_level("INFO", logger="saelens_lite.training.trainer"):
        assert main([*args, "--resume"]) == 0
    assert re.search(r"resuming \S+ at step 4 ", caplog.text), caplog.text
    ours, ref = load_file(out / HOOK / "sae.safetensors"), load_file(trained / "sae.safetensors")
    assert ours.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=0, atol=0, msg=name)
    assert metrics_steps(out) == metrics_steps(trained.parent)


# ---------------------------------------------------------------------------- convert


def test_convert_to_saelens_and_back_computes_the_same_function(trained, tmp_path, capsys):
    from saelens_lite.saes.interop import detect_format, load_any

    assert main(["convert", "--to", "saelens", str(trained), str(tmp_path / "sl")]) == 0
    assert detect_format(tmp_path / "sl") == "saelens"
    assert main(["convert", "--to", "native", str(tmp_path / "sl"), str(tmp_path / "back")]) == 0
    assert "(saelens)" in capsys.readouterr().out
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(0)) * 3
    original, back = SAE.load(trained), SAE.load(tmp_path / "back")
    assert back.cfg.hook_name == HOOK and type(back) is type(original)
    with torch.no_grad():
        acts = original.encode(x)
        assert (acts != 0).sum() >= 64  # not a vacuous comparison
        for other in (load_any(tmp_path / "sl"), back):
            torch.testing.assert_close(other.encode(x), acts, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(other.decode(acts), original.decode(acts), rtol=1e-5, atol=1e-5)
    assert main(["convert", "--to", "saelens", str(trained), str(tmp_path / "sl")]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err


# ---------------------------------------------------------------------------- serve


def _post(port: int, path: str, payload: dict) -> tuple[int, dict]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("POST", path, json.dumps(payload), {"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


@pytest.mark.slow  # starts a process
def test_serve_with_model_and_sae_answers_encode(trained, tmp_path):
    from saelens_lite.lm.hooks import capture, resolve_hooks
    from saelens_lite.lm.load import load_model

    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<!doctype html><title>site</title>")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "saelens_lite", "serve", str(site), "--model", "tiny-llama",
                             "--sae", str(trained), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        port, seen, deadline = None, [], time.monotonic() + 120
        while port is None:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                pytest.fail(f"serve printed no address within 120 s: {seen}")
            seen.append(line)
            m = re.search(r"at http://127\.0\.0\.1:(\d+)/", line)
            port = int(m.group(1)) if m else None
            assert proc.poll() is None or port is not None, "".join(seen)
        text = "def f(x): return x"
        status, out = _post(port, "/api/encode", {"text": text})
        assert status == 200, out

        lm, sae = load_model("tiny-llama"), SAE.load(trained)
        ids = lm.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            dense = sae.encode(capture(lm.model, dict(ids), resolve_hooks(lm.model, [HOOK]))[HOOK][0])
        assert len(out["tokens"]) == len(out["features"]) == dense.shape[0]
        assert sum(len(f) for f in out["features"]) > 0
        for s, feats in enumerate(out["features"]):
            got = dict((f, v) for f, v in feats)
            assert set(got) == set(torch.nonzero(dense[s] > 0).flatten().tolist())
            np.testing.assert_allclose([got[f] for f in sorted(got)], dense[s, sorted(got)].numpy(),
                                       rtol=1e-3, atol=1e-4)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the server stops cleanly
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


# ---------------------------------------------------------------------------- bench


def test_bench_synthetic_without_arch_has_a_row_or_a_reason_for_every_architecture(tmp_path, capsys):
    from saelens_lite.evals.synthetic import skip_reason

    assert main(["bench", "synthetic", "--d", "16", "--features", "32", "--mean-active", "2",
                 "--n-train", "2048", "--train-tokens", "8192", "--eval-tokens", "1000",
                 "--json", str(tmp_path / "b.json")]) == 0
    table = capsys.readouterr().out
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["architecture"] for r in rows] == sorted(REGISTRY)
    for r in rows:
        (line,) = [t for t in table.splitlines() if t.startswith(f"| {r['architecture']} |")]
        reason = skip_reason(r["architecture"])
        if reason is None:
            assert 0 < r["mmcs"] <= 1 and np.isfinite(r["fvu"]), r
            assert "skipped" not in line
        else:
            assert r["skipped"] == reason and f"skipped: {reason}" in line
