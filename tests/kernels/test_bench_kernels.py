"""scripts/bench_kernels.py, the per-kernel GPU sweep, runs end to end on the CPU (Triton
interpreter, tiny shape): the one GPU run it exists for must not fail on a script error. Each
variant is checked against its reference inside the script; a wrong or failing one is printed
as WRONG / FAILED, which this test refuses."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

# not imported here: Triton reads TRITON_INTERPRET once, and other test modules set it first
pytestmark = [pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                 reason="triton is not installed"),
              pytest.mark.slow]  # runs the script in a process  # fmt: skip
ROOT = Path(__file__).resolve().parents[2]


def test_bench_kernels_dry_run_checks_and_times_every_section():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_kernels.py"), "--device", "cpu",
           "--shape", "32", "512", "8", "64", "--reps", "1", "--quick", "--kt", "0", "4"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "WRONG" not in out and "FAILED" not in out, out
    for needle in ("cuBLAS matmul + torch.topk", "KT=8 ", "KT=4 (pruned)",
                   "BLOCK_N=8 BLOCK_D=256 warps=4 prefetch", "pattern skewed",
                   "torch index_add_", "decode_topk", "sampled_dot"):
        assert needle in out, (needle, out)
