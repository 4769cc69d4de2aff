"""Seed means and paired intervals for `saelens-lite bench probing` results: the tables of
docs/probing.md "Trained on-domain, and with few labels" (size "ood": the `--ood` rows,
"pos=F": `--pos-fractions`, "noise=F": `--label-noise`; a dataset's `--draws` are averaged).

Each ``--group NAME=TEXT`` collects the autoencoders whose label contains TEXT (for example the
seeds of one recipe: ``on=(on_s``). For every training size (the full split and each
``--train-sizes`` value), class fraction, noise level and probe it prints, over the datasets every member has:

- the dense probe's mean test AUC;
- each group's mean AUC as mean ± sample std over its members (the spread over seeds);
- each group minus the dense probe: the member-averaged AUC minus the dense probe's, averaged
  over datasets, with a 95% bootstrap interval over datasets, and on how many datasets it is
  above the dense probe, above by more than 0.05, and below by more than 0.05;
- with two or more groups, the first minus the second the same way, and on how many datasets
  the first is higher.

    python scripts/probing_groups.py bench/results.json --group on='(on_s' --group off='(off_s' \
        [--datasets 113_movie_sent ...]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from saelens_lite.evals.probing.report import DENSE, SETTINGS

PREFIX = {"imbalance_rows": "pos=", "noise_rows": "noise="}
"""Settings whose values get a prefix in the size column (training sizes are bare integers)."""


def _setting(r: dict, key: str) -> object:
    """The size column's value of a row of ``result[key]``."""
    if r.get("test_set") == "ood":
        return "ood"
    if key in PREFIX:
        return f"{PREFIX[key]}{r[SETTINGS[key].field]:g}"
    return r.get("train_size", "full")


def auc_table(result: dict, datasets: list[str] | None = None) -> dict[tuple[str, str, object], dict[str, float]]:
    """{(sae, probe, size): {dataset: test AUC}}, a dataset's draws averaged; size "full" for the
    main rows, an integer for a training-set size, "pos=F" / "noise=F" for a class fraction or a
    share of flipped labels, "ood" for the OOD rows (full training split, scored on the OOD
    texts); only ``datasets`` when given."""
    draws: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))
    for key in ("rows", *SETTINGS, "ood_rows"):
        for r in result.get(key, []):
            if datasets is None or r["dataset"] in datasets:
                draws[(r["sae"], r["probe"], _setting(r, key))][r["dataset"]].append(r["auc"])
    return {k: {n: float(np.mean(a)) for n, a in v.items()} for k, v in draws.items()}


def bootstrap_mean(diff_N: np.ndarray, *, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5th, 97.5th percentile of the mean over resampled datasets)."""
    rng = np.random.default_rng(seed)
    means = diff_N[rng.integers(0, len(diff_N), (resamples, len(diff_N)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(diff_N.mean()), float(lo), float(hi)


def summarise(result: dict, groups: dict[str, str], datasets: list[str] | None = None) -> list[dict]:
    """One dict per (size, probe): dense, per group mean/std/minus-dense, first-minus-second."""
    table = auc_table(result, datasets)
    if datasets:
        missing = sorted(set(datasets) - {n for v in table.values() for n in v})
        if missing:
            raise SystemExit(f"--datasets {missing[0]!r} is not in the results")
    saes = sorted({s for s, _, _ in table if s != DENSE})
    members = {g: [s for s in saes if text in s] for g, text in groups.items()}
    empty = [g for g, m in members.items() if not m]
    if empty:
        raise SystemExit(f"--group {empty[0]}={groups[empty[0]]!r} matches no autoencoder; labels: {saes}")
    sizes = sorted({z for _, _, z in table if isinstance(z, int)})
    sizes += sorted({z for _, _, z in table if isinstance(z, str) and z.startswith("pos=")}, key=lambda z: float(z[4:]))
    sizes += sorted({z for _, _, z in table if isinstance(z, str) and z.startswith("noise=")}, key=lambda z: float(z[6:]))
    sizes += ["full"]
    sizes += ["ood"] if any(z == "ood" for _, _, z in table) else []
    probes = sorted({p for s, p, _ in table if s != DENSE}, key=lambda p: (p == "all", int(p[2:]) if p[2:].isdigit() else 0))
    out = []
    for size in sizes:
        dense = table.get((DENSE, "dense", size), {})
        for probe in probes:
            keys = [(s, probe, size) for m in members.values() for s in m]
            if any(k not in table for k in keys):
                continue
            names = sorted(set(dense).intersection(*(table[k] for k in keys)))
            d_N = np.array([dense[n] for n in names])
            row = {"size": size, "probe": probe, "datasets": len(names), "dense": float(d_N.mean()), "groups": {}}
            avg = {}
            for g, m in members.items():
                a_SN = np.array([[table[(s, probe, size)][n] for n in names] for s in m])
                avg[g] = a_SN.mean(0)
                per_member = a_SN.mean(1)
                diff = avg[g] - d_N
                row["groups"][g] = {"mean": float(per_member.mean()),
                                    "std": float(per_member.std(ddof=1)) if len(m) > 1 else float("nan"),
                                    "members": len(m), "minus_dense": bootstrap_mean(diff),
                                    "above": int((diff > 0).sum()), "above_005": int((diff > 0.05).sum()),
                                    "below_005": int((diff < -0.05).sum())}
            if len(members) > 1:
                g1, g2 = list(members)[:2]
                diff = avg[g1] - avg[g2]
                row["first_minus_second"] = bootstrap_mean(diff) + (int((diff > 0).sum()),)
            out.append(row)
    return out


def _ci(t) -> str:
    return f"{t[0]:+.3f} ({t[1]:+.3f}, {t[2]:+.3f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="results.json of saelens-lite bench probing")
    ap.add_argument("--group", action="append", required=True, metavar="NAME=TEXT",
                    help="autoencoders whose label contains TEXT (repeatable; the first two are compared)")
    ap.add_argument("--datasets", nargs="+", default=None, help="only these datasets (default: every one)")
    args = ap.parse_args(argv)
    bad = [g for g in args.group if "=" not in g]
    if bad:
        raise SystemExit(f"--group {bad[0]!r}: give NAME=TEXT")
    groups = dict(g.split("=", 1) for g in args.group)
    with open(args.results) as f:
        rows = summarise(json.load(f), groups, args.datasets)
    names = list(groups)
    head = ["size", "probe", "datasets", "dense"] + [f"{g} (mean ± sd)" for g in names]
    for g in names:
        head += [f"{g} minus dense (95% CI)", f"{g}: above / by > 0.05 / below by > 0.05"]
    if len(names) > 1:
        head += [f"{names[0]} - {names[1]} (95% CI)", f"{names[0]} higher on"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        g = r["groups"]
        cells = [str(r["size"]), r["probe"], str(r["datasets"]), f"{r['dense']:.3f}"]
        cells += [f"{g[n]['mean']:.3f} ± {g[n]['std']:.3f}" for n in names]
        cells += [f"{_ci(g[n]['minus_dense'])} | {g[n]['above']} / {g[n]['above_005']} / {g[n]['below_005']}"
                  for n in names]
        if "first_minus_second" in r:
            cells.append(f"{_ci(r['first_minus_second'][:3])} | {r['first_minus_second'][3]}")
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
