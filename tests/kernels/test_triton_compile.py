"""The CUDA fast step's Triton kernels compile for an H100 (sm_90) with the installed Triton.

The interpreter tests (test_triton_kernels.py) check the kernels' arithmetic but not that the
compiler accepts them; `scripts/triton_compile_check.py` compiles them to cubins without a
GPU (the fast step on meta tensors, a stand-in driver). It runs in a subprocess because this
test session sets TRITON_INTERPRET=1, which Triton reads when a kernel is defined.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "triton_compile_check.py"


def _ptxas() -> bool:
    spec = importlib.util.find_spec("triton")
    if spec is None or spec.origin is None:
        return False
    return (Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


pytestmark = [pytest.mark.skipif(not _ptxas(), reason="triton with its CUDA backend is missing"),
              pytest.mark.slow]  # every test starts a process


def _check(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    r = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
        cwd=ROOT, timeout=600,
    )  # fmt: skip
    if r.returncode == 3:  # a trivial probe kernel did not compile: Triton's internals moved
        pytest.skip(f"the compile harness does not support this Triton: {r.stdout[-300:]}")
    return r


def test_every_fast_step_kernel_compiles_for_sm90_without_spilling(tmp_path):
    out = tmp_path / "kernels.json"
    r = _check("--shape", "256", "2048", "32", "512", "--archs", "topk", "--fail-on-spill",
               "--json", str(out))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    recs = json.loads(out.read_text())
    # the fused selection, the decoder (main and AuxK), the sampled dot, the weight gradients
    assert {c["kernel"] for c in recs} == {
        "_tile_topk_kernel",
        "_decode_topk_kernel",
        "_sampled_dot_kernel",
        "_segment_matmul_kernel",
    }
    assert {c["consts"].get("K") for c in recs if c["kernel"] == "_decode_topk_kernel"} == {
        32, 128}  # main k; AuxK's k_aux = D/2  # fmt: skip
    fused = [c for c in recs if c["kernel"] == "_tile_topk_kernel"]
    kts = sorted(c["consts"]["KT"] for c in fused)  # the full selection's, the pruned one's
    assert len(kts) == 2 and kts[1] == 32 and 8 <= kts[0] < 32, kts
    for c in recs:  # read from the cubins by cuobjdump
        assert c["error"] is None and 0 < c["usage"]["REG"] <= 255, c
        assert c["usage"]["LOCAL"] == 0 and c["blocks_per_sm"] >= 1, c
        assert c["usage"]["SASS"] > 100, c  # the disassembly was read
    # the fused kernel's unrolled top-k network dwarfs the sparse kernels' loops
    sass = {c["kernel"]: c["usage"]["SASS"] for c in recs}
    assert sass["_tile_topk_kernel"] > 5 * sass["_segment_matmul_kernel"], sass
    assert "0 failed to compile, 0 spill" in r.stdout


def test_a_tile_the_compiler_rejects_is_reported_and_fails_the_run():
    r = _check("--shape", "256", "2048", "32", "512", "--archs", "topk",
               "--topk-blocks", "64,250,64")  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    failed = [row for row in r.stdout.splitlines() if "FAILED" in row]
    assert failed and all(row.startswith("_tile_topk_kernel") for row in failed), r.stdout
    assert all("power of 2" in row and "BLOCK_F=250" in row for row in failed)
    assert f"{len(failed)} failed to compile" in r.stdout  # the fused and the pruned selection


def test_bad_tile_spec_is_refused_with_the_expected_form():
    r = _check("--topk-blocks", "64,256")
    assert r.returncode == 2
    assert "BLOCK_B,BLOCK_F,BLOCK_D[,warps[,stages]]" in r.stderr and "'64,256'" in r.stderr


def test_a_harness_that_cannot_compile_the_probe_exits_3_instead_of_blaming_our_kernels():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "scripts"), str(ROOT), env.get("PYTHONPATH", "")]
    )
    code = (
        "import sys, triton_compile_check as t\n"
        "def broken(self): raise RuntimeError('no target')\n"
        "t._MetaDriver.get_current_target = broken\n"
        "sys.exit(t.main(['--shape', '64', '512', '8', '64', '--archs', 'topk']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)  # fmt: skip
    assert r.returncode == 3, r.stdout + r.stderr
    assert "does not work with this Triton" in r.stdout and "no target" in r.stdout
    assert "kernel variants" not in r.stdout  # no verdict on our kernels
