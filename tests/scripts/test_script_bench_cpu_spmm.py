"""scripts/bench_cpu_spmm.py: the CSR SpMM baseline and the embedding_bag path agree (the script
checks it before timing) and each shape prints one row per output layout."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_cpu_spmm.py"


@pytest.mark.usefixtures("one_thread")
def test_both_paths_agree_and_each_shape_gets_two_rows(capsys):
    spec = importlib.util.spec_from_file_location("bench_cpu_spmm", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--threads", "1", "--rounds", "1", "--calls", "1", "--shape", "16", "64", "8", "4",
                     "--shape", "9", "33", "5", "7"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| 16,") or ln.startswith("| 9,")]
    assert [r.split(" | ")[1] for r in rows] == ["(F, D)", "(D, F)"] * 2
