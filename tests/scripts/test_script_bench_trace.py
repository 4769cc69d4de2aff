"""scripts/bench_trace.py, the script behind docs/circuits.md's "Measured" tables, runs end to end
on tiny-llama: one fresh process per (prompt length, max feature nodes), a markdown row each whose
counts agree with the graph's node layout, and a trace past --timeout or the memory cap reported as killed or failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_transcoder

pytestmark = pytest.mark.slow  # runs the script in processes

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "abc ab ba cab abba cc a b c"


def run(tmp_path, *extra) -> subprocess.CompletedProcess:
    args = [sys.executable, str(ROOT / "scripts" / "bench_trace.py"), "lengths", "--model", "tiny-llama",
            "--transcoders", str(tmp_path / "tc"), "--prompt", PROMPT, *extra]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, check=True, capture_output=True, text=True, env=env, cwd=ROOT)


def test_each_length_is_traced_in_its_own_process_and_tabulated(tmp_path):
    for layer in range(4):
        make_transcoder(layer).save(tmp_path / "tc" / f"blocks.{layer}.hook_mlp_in")
    out = run(tmp_path, "--tokens", "3", "6", "--max-feature-nodes", "all", "4", "--jsonl", str(tmp_path / "r.jsonl"))
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("| tokens | max feature nodes | active features |") and len(lines) == 2 + 4
    rows = [json.loads(ln) for ln in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(r["tokens"], r["max_feature_nodes"]) for r in rows] == [(3, "all"), (6, "all"), (3, "4"), (6, "4")]
    for r in rows:
        assert r["n_features"] == (r["n_active"] if r["max_feature_nodes"] == "all" else 4)
        assert r["n_nodes"] == r["n_features"] + (4 + 1) * r["tokens"] + r["n_logits"]  # + errors, tokens
        assert r["peak_rss_mb"] >= r["loaded_rss_mb"] > 0 and 0 <= r["replacement"] <= 1
        assert float(r["reconstruction_error"]) < 1e-4
        kept_nodes, kept_links = map(int, r["kept"].split(" / "))
        assert 0 < kept_nodes <= r["n_nodes"] and kept_links > 0
    assert rows[1]["n_active"] > rows[0]["n_active"]  # longer prompt, more active features
    killed = run(tmp_path, "--tokens", "3", "--timeout", "0.01")
    assert "> 0.01 (killed)" in killed.stdout.splitlines()[-1]
    capped = run(tmp_path, "--tokens", "3", "--max-address-space-gb", "0.2")
    last = capped.stdout.splitlines()[-1]
    assert last.startswith("| 3 | all |") and "| failed (exit 1): " in last
