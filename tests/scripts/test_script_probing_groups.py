"""scripts/probing_groups.py: seed means, differences to the dense probe and between two groups,
on a hand-built results.json whose answers are worked out here by hand."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "probing_groups.py"


def _module():
    spec = importlib.util.spec_from_file_location("probing_groups", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(sae, dataset, auc, probe="k=1", size=None):
    r = {"sae": sae, "dataset": dataset, "probe": probe, "auc": auc}
    return r if size is None else r | {"train_size": size}


# AUCs: dense 0.8 / 0.6 on datasets a / b; group on (seeds s0, s1), group off (s0, s1)
RESULT = {"rows": [_row("dense probe", "a", 0.8, "dense"), _row("dense probe", "b", 0.6, "dense"),
                   _row("x (on_s0)", "a", 0.7), _row("x (on_s0)", "b", 0.7),
                   _row("x (on_s1)", "a", 0.9), _row("x (on_s1)", "b", 0.5),
                   _row("x (off_s0)", "a", 0.6), _row("x (off_s0)", "b", 0.4),
                   _row("x (off_s1)", "a", 0.6), _row("x (off_s1)", "b", 0.6)],
          "scarce_rows": [_row("dense probe", "a", 0.7, "dense", 8), _row("dense probe", "b", 0.5, "dense", 8)]
          + [_row(f"x ({g}_s{s})", n, 0.55, size=8) for g in ("on", "off") for s in (0, 1) for n in "ab"],
          "ood_rows": [_row("dense probe", "a", 0.5, "dense") | {"test_set": "ood"}]
          + [_row(f"x ({g}_s{s})", "a", 0.6) | {"test_set": "ood"} for g in ("on", "off") for s in (0, 1)]}


def test_means_spreads_and_differences_match_the_hand_computed_values():
    rows = _module().summarise(RESULT, {"on": "(on_s", "off": "(off_s"})
    assert [(r["size"], r["probe"]) for r in rows] == [(8, "k=1"), ("full", "k=1"), ("ood", "k=1")]
    assert rows[2]["datasets"] == 1 and rows[2]["groups"]["on"]["minus_dense"][0] == pytest.approx(0.1)
    full = rows[1]
    assert full["datasets"] == 2 and full["dense"] == pytest.approx(0.7)
    on, off = full["groups"]["on"], full["groups"]["off"]
    # on: members' means 0.7 and 0.7 -> 0.7 ± 0; off: 0.5 and 0.6 -> 0.55 ± 0.0707
    assert on["mean"] == pytest.approx(0.7) and on["std"] == pytest.approx(0.0)
    assert off["mean"] == pytest.approx(0.55) and off["std"] == pytest.approx(np.std([0.5, 0.6], ddof=1))
    # seed-averaged on: a 0.8, b 0.6 = the dense probe -> 0; off: a 0.6, b 0.5 -> -0.2 and -0.1
    assert on["minus_dense"][0] == pytest.approx(0.0) and (on["above"], on["below_005"]) == (0, 0)
    assert off["minus_dense"][0] == pytest.approx(-0.15) and (off["above"], off["below_005"]) == (0, 2)
    lo, hi = off["minus_dense"][1:]
    assert -0.2 - 1e-12 <= lo <= -0.15 <= hi <= -0.1 + 1e-12  # a bootstrap of {-0.2, -0.1}
    mean, lo, hi, higher = full["first_minus_second"]
    assert mean == pytest.approx(0.15) and higher == 2 and 0.1 - 1e-12 <= lo <= hi <= 0.2 + 1e-12
    scarce = rows[0]["groups"]["on"]
    # size 8: 0.55 against the dense 0.7 / 0.5 -> -0.15 and +0.05
    assert scarce["minus_dense"][0] == pytest.approx(-0.05) and (scarce["above"], scarce["below_005"]) == (1, 1)


def test_draws_are_averaged_per_dataset_and_the_settings_get_their_own_rows():
    base = {k: v for k, v in RESULT.items() if k == "rows"}
    # draws 0 / 1 of one fraction: dataset a's on_s0 averages 0.5 and 0.7 -> 0.6, b's 0.9 and 0.7 -> 0.8
    imb = [_row("dense probe", n, a, "dense") | {"pos_fraction": 0.1, "draw": d}
           for n, a in (("a", 0.6), ("b", 0.6)) for d in (0, 1)]
    imb += [_row("x (on_s0)", n, a) | {"pos_fraction": 0.1, "draw": d}
            for n, draws in (("a", (0.5, 0.7)), ("b", (0.9, 0.7))) for d, a in enumerate(draws)]
    noise = [_row(s, "a", 0.5, p) | {"label_noise": 0.25, "draw": 0} for s, p in (("dense probe", "dense"), ("x (on_s0)", "k=1"))]
    rows = _module().summarise(base | {"imbalance_rows": imb, "noise_rows": noise}, {"on": "(on_s0"})
    assert [r["size"] for r in rows] == ["pos=0.1", "noise=0.25", "full"]
    assert rows[0]["groups"]["on"]["mean"] == pytest.approx(0.7) and rows[0]["dense"] == pytest.approx(0.6)
    assert rows[0]["groups"]["on"]["minus_dense"][0] == pytest.approx(0.1) and rows[0]["groups"]["on"]["above"] == 1  # b only
    assert rows[1]["datasets"] == 1 and rows[1]["groups"]["on"]["minus_dense"][0] == pytest.approx(0.0)


@pytest.mark.slow  # runs the script in a process
def test_the_datasets_filter_and_the_command_line(tmp_path):
    only_a = _module().summarise(RESULT, {"on": "(on_s"}, ["a"])
    assert only_a[1]["dense"] == pytest.approx(0.8) and only_a[1]["groups"]["on"]["mean"] == pytest.approx(0.8)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(RESULT))
    run = subprocess.run([sys.executable, str(SCRIPT), str(path), "--group", "on=(on_s", "--group", "off=(off_s"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 5 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| full | k=1 | 2 | 0.700 | 0.700 ± 0.000 | 0.550 ± 0.071 |" in run.stdout
    bad = subprocess.run([sys.executable, str(SCRIPT), str(path), "--group", "z=(nope"], capture_output=True,
                         text=True)
    assert bad.returncode == 1 and "matches no autoencoder" in bad.stderr
