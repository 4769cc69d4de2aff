"""Every command of the README's quick tour, and its Python example, run as written.

The one switch: ``SMALL`` below, a table of substitutions applied to the README's text before
it runs (SmolLM2 -> the tiny random llama, its layers 9/14 -> 1/2, token counts cut). Each
substitution must apply somewhere, so a README edit that the table no longer matches fails
here instead of passing untested. ``serve`` runs in the background until it answers a request.
The README's "Quick tour" section says so.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test runs the README or the demo in processes

README = Path(__file__).resolve().parents[1] / "README.md"
BIN = Path(sys.executable).parent

SMALL = (  # (README text, what the test runs instead)
    ("smollm2-135m", "tiny-llama"),
    ("blocks.9.hook_resid_post", "blocks.1.hook_resid_post"),
    ("blocks.14.hook_resid_post", "blocks.2.hook_resid_post"),
    ("blocks.9.hook_mlp_in", "blocks.1.hook_mlp_in"),
    ("blocks.9.hook_mlp_out", "blocks.1.hook_mlp_out"),
    ("--out runs/probing", "--max-examples 60 --out runs/probing"),
    ("--tokens 2000000", "--tokens 16384"),  # before its prefix below
    ("--tokens 200000", "--tokens 3000"),
    ("--out runs/eval", "--heldout-tokens 4096 --out runs/eval"),
    # 2 of the 5 TopK frontier runs; every autoencoder type still trains
    ("--images digits --out", "--images digits --tokens 2048 --frontier-ks 2 --max-eval 512 --out"),
    ("bench synthetic", "bench synthetic --d 16 --features 32 --mean-active 2 --n-train 4000 --train-tokens 8192"),
    # the tiny model's tokenizer is byte-level: " Paris" is 6 tokens there, a target must be one
    ('--target " Paris" --contrast " Rome"', '--target " " --contrast "e"'),
)


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def _blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


def _commands(block: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _small(text: str, used: set[str]) -> str:
    for old, new in SMALL:
        if old in text:
            used.add(old)
            text = text.replace(old, new)
    return text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
                         "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}


def _serve(argv: list[str], cwd: Path) -> None:
    """Start ``serve`` on a free port, wait until the index and the live encoder answer, stop it."""
    port = _free_port()
    proc = subprocess.Popen([*argv, "--port", str(port)], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    assert r.status == 200
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read() if proc.poll() is not None else ""
                    raise AssertionError(f"serve did not start: {out}") from None
                time.sleep(0.5)
        if "--model" in argv:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/encode", method="POST",
                                         data=json.dumps({"text": "def f(x): return x"}).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                body = json.loads(r.read())
            assert body["tokens"], body
        if "--activations" in argv:  # the "Explain this feature" button's request
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/explain", method="POST",
                                         data=json.dumps({"feature": 0}).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=300) as r:
                body = json.loads(r.read())
            assert body["feature"] == 0 and body["explainer"] == "template", body
            assert "embedding" in body["scores"], body
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_quick_tour_commands_run_as_written(tmp_path):
    (tmp_path / ".venv").symlink_to(BIN.parent)  # the tour starts with `. .venv/bin/activate`
    used: set[str] = set()
    commands = [c for b in _blocks(_section("Quick tour"), "bash") for c in _commands(b)]
    assert commands[0] == ". .venv/bin/activate"
    ran = []
    for cmd in commands[1:]:
        argv = shlex.split(_small(cmd, used))
        assert argv[0] == "saelens-lite", f"quick tour line is not a saelens-lite command: {cmd}"
        if argv[1] == "serve":
            _serve(argv, tmp_path)
        else:
            res = subprocess.run(argv, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
            assert res.returncode == 0, f"{cmd}\n-> {' '.join(argv)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        ran.append(argv[1] if argv[1] != "bench" else "bench " + argv[2])
    unused = {old for old, _ in SMALL} - used
    assert not unused, f"substitutions that no longer match the README: {sorted(unused)}"
    assert {"harvest", "train", "eval", "dashboard", "serve"} <= set(ran)


def test_quick_tour_python_example_runs_as_written(tmp_path):
    (block,) = _blocks(_section("Quick tour"), "python")
    res = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "FVU" in res.stdout and (tmp_path / "runs" / "tiny_sae").is_dir()


def test_demo_runs_small_and_its_heldout_fvu_matches_a_float64_recomputation(tmp_path):
    """scripts/demo.py end to end on the tiny model; the held-out FVU it prints equals one
    computed in float64 from the same rows, harvested again independently."""
    import numpy as np
    import torch

    from saelens_lite.cache import ActivationCache
    from saelens_lite.cache.harvest import HarvestConfig, harvest
    from saelens_lite.saes import SAE

    hook = "blocks.1.hook_resid_post"
    out = tmp_path / "demo"
    argv = [sys.executable, str(README.parent / "scripts" / "demo.py"), "--out", str(out), "--model", "tiny-llama",
            "--hooks", hook, "blocks.2.hook_resid_post", "--train-hook", hook, "--tokens", "2000",
            "--train-tokens", "8192", "--batch-size", "512", "--heldout-tokens", "500", "--context-size", "32"]
    res = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    m = re.search(r"FVU (\d\.\d+) \(held-out, 500 tokens\)", res.stdout)
    assert m, res.stdout[-2000:]
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["reconstruction_split"] == "held-out"
    sae = SAE.load(out / "sae" / hook)
    cache_ctx = int(ActivationCache(out / "activations").context_ids.max())
    big = harvest(HarvestConfig(model="tiny-llama", hooks=[hook], tokens=4000, context_size=32, device="cpu"),
                  tmp_path / "again", progress=False)
    rows = np.flatnonzero(big.context_ids > cache_ctx)[:500]
    x = np.asarray(big.activations(hook)[:])[rows].astype(np.float64)
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(torch.as_tensor(x, dtype=torch.float32))).double().numpy()
    fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert float(m.group(1)) == pytest.approx(fvu, abs=5e-5)  # printed to 4 decimals
    assert metrics["fvu"] == pytest.approx(fvu, rel=1e-9)
