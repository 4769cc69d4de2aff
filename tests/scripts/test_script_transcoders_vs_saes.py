"""scripts/transcoders_vs_saes.py, the script behind docs/transcoders.md's table, runs end to end
on tiny-llama: seven coders trained on one cache, the old-init transcoders saved with their own
decoder_init and b_enc_init, and a table row per coder with the held-out dead fraction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the script in a process

ROOT = Path(__file__).resolve().parents[2]


def test_the_script_trains_evaluates_and_tabulates_every_coder(tmp_path):
    out = tmp_path / "tc"
    args = [sys.executable, str(ROOT / "scripts" / "transcoders_vs_saes.py"), "--out", str(out),
            "--model", "tiny-llama", "--layer", "1", "--tokens", "1024", "--train-tokens", "4096",
            "--expansion", "2", "--k", "4", "--batch-size", "256", "--heldout-tokens", "256",
            "--ce-contexts", "2", "--context-size", "32"]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    subprocess.run(args, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    names = ["sae_mlp_out", "sae_resid_post", "transcoder", "transcoder_skip", "transcoder_random_decoder",
             "transcoder_skip_random_decoder", "transcoder_uncentred"]
    results = json.loads((out / "results.json").read_text())
    assert list(results) == names
    for name, r in results.items():
        assert 0 <= r["dead_fraction"] <= 1 and r["l0"] > 0, name
    rows = [ln for ln in (out / "table.md").read_text().splitlines() if ln.startswith("| transcoder")]
    assert [ln.split(" | ")[0][2:] for ln in rows] == names[2:]
    cfgs = {n: json.loads((out / n / "blocks.1.hook_mlp_in" / "cfg.json").read_text()) for n in names[2:]}
    assert cfgs["transcoder"]["b_enc_init"] == "auto" and cfgs["transcoder_uncentred"]["b_enc_init"] == "zeros"
    assert [cfgs[n]["decoder_init"] for n in names[2:]] == ["auto"] * 2 + ["random"] * 3
    assert cfgs["transcoder_skip"]["skip"] is True
    first = (out / "table.md").read_text()
    done = subprocess.run(args, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    assert "sae_mlp_out {" not in done.stdout  # every coder reused, nothing retrained
    assert (out / "table.md").read_text() == first
