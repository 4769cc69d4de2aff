"""Float oracles do not depend on which CPU kernels run: the saved-output fixtures and the sparse
kernel tests pass with oneDNN capped at AVX2 and at AVX512_CORE (the same machine then picks
different kernels and summation orders, as two CPUs would; ONEDNN_MAX_CPU_ISA only lowers the
ISA, so on a CPU without AVX512 both runs use AVX2). Each run is a child pytest process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
FLOAT_ORACLES = [TESTS / "saes" / "test_saved_fixtures.py", TESTS / "kernels" / "test_kernels.py"]


@pytest.mark.slow  # child pytest processes
@pytest.mark.parametrize("isa", ["AVX2", "AVX512_CORE"])
def test_float_oracles_pass_under_each_cpu_isa(isa):
    env = os.environ | {"ONEDNN_MAX_CPU_ISA": isa, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
            "-m", "not slow", *map(str, FLOAT_ORACLES)]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900,
                       cwd=TESTS.parent)
    assert r.returncode == 0, f"ONEDNN_MAX_CPU_ISA={isa}:\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
    assert " passed" in r.stdout.splitlines()[-1], r.stdout[-500:]
