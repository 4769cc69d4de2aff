"""The probing report: results.json (every row), results.md (per-dataset tables with counts, the
means, and where SAE probes beat the dense probe) and auc_vs_k.png (mean test AUC against k, one
line per autoencoder, the dense probe as a horizontal line), each written atomically. Each
setting that refits the probes on a changed training split (:data:`SETTINGS`: training-set
size, class imbalance, label noise) adds a table of mean test AUC by its value and a plot
(its ``plot``).

A row: {sae, hook, pooling, dataset, probe (``dense`` / ``k=K`` / ``all``), k, auc, accuracy, C,
n_train, n_test, n_train_pos, n_test_pos, classes}; the dense probe's rows have sae
``dense probe``. A data-scarce row (``result["scarce_rows"]``) has ``train_size`` and ``draw``
too, a class-imbalance row (``imbalance_rows``) ``pos_fraction`` and ``draw``, a label-noise row
(``noise_rows``) ``label_noise``, ``draw`` and ``n_flipped`` (its n_train_pos counts the flipped
labels), an OOD row (``result["ood_rows"]``) ``test_set`` "ood", the OOD set's counts as n_test,
n_test_pos and its two target values as ``ood_classes``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from saelens_lite.util.atomic import atomic_open, write_json, write_text

DENSE = "dense probe"


def _probe_names(rows: list[dict]) -> list[str]:
    ks = sorted({r["k"] for r in rows if r["k"] is not None})
    return [f"k={k}" for k in ks] + (["all"] if any(r["probe"] == "all" for r in rows) else [])


def _index(rows: list[dict]) -> dict:
    """{(sae, hook, pooling, dataset, probe): row}."""
    return {(r["sae"], r["hook"], r["pooling"], r["dataset"], r["probe"]): r for r in rows}


def _groups(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(sae, hook, pooling) of the autoencoders, in first-seen order."""
    seen: dict[tuple[str, str, str], None] = {}
    for r in rows:
        if r["sae"] != DENSE:
            seen.setdefault((r["sae"], r["hook"], r["pooling"]), None)
    return list(seen)


def means(rows: list[dict]) -> dict[tuple[str, str, str, str], dict[str, float]]:
    """{(sae, hook, pooling, probe): {"auc", "accuracy", "n"}} averaged over datasets (a dataset's
    several draws, ``draw``, averaged first; ``n`` counts datasets); the dense probe's entries
    have sae ``dense probe``."""
    per_ds: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        per_ds[(r["sae"], r["hook"], r["pooling"], r["probe"], r["dataset"])].append(r)
    acc: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for (*key, _), rs in per_ds.items():
        acc[tuple(key)].append((np.mean([r["auc"] for r in rs]), np.mean([r["accuracy"] for r in rs])))
    return {key: {"auc": float(np.mean([a for a, _ in v])), "accuracy": float(np.mean([b for _, b in v])),
                  "n": len(v)} for key, v in acc.items()}


def _cell(r: dict | None) -> str:
    return "-" if r is None else f"{r['auc']:.3f} ({r['accuracy']:.2f})"


def _dataset_table(rows: list[dict], sae: str, hook: str, pooling: str, probes: list[str]) -> list[str]:
    idx = _index(rows)
    names = list(dict.fromkeys(r["dataset"] for r in rows if r["sae"] == sae and r["pooling"] == pooling))
    lines = ["| dataset | train (pos) | test (pos) | dense | " + " | ".join(probes) + " |",
             "|---|---|---|---|" + "---|" * len(probes)]
    for name in names:
        d = idx.get((DENSE, hook, pooling, name, "dense"))
        any_row = d or next(r for r in rows if r["dataset"] == name)
        cells = [_cell(idx.get((sae, hook, pooling, name, p))) for p in probes]
        lines.append(f"| {name} | {any_row['n_train']} ({any_row['n_train_pos']}) | "
                     f"{any_row['n_test']} ({any_row['n_test_pos']}) | {_cell(d)} | " + " | ".join(cells) + " |")
    m = means([r for r in rows if r["dataset"] in names])
    mean_cells = [_cell(m.get((sae, hook, pooling, p))) for p in probes]
    lines.append(f"| **mean of {len(names)}** | | | {_cell(m.get((DENSE, hook, pooling, 'dense')))} | "
                 + " | ".join(mean_cells) + " |")
    return lines


def versus_dense(rows: list[dict], sae: str, hook: str, pooling: str, probe: str) -> dict[str, list[str]]:
    """{"above": datasets where the probe's test AUC is above the dense probe's, "equal", "below"}."""
    idx = _index(rows)
    out: dict[str, list[str]] = {"above": [], "equal": [], "below": []}
    for (s, h, pl, name, pr), r in idx.items():
        d = idx.get((DENSE, h, pl, name, "dense"))
        if (s, h, pl, pr) == (sae, hook, pooling, probe) and d is not None:
            side = "above" if r["auc"] > d["auc"] else "equal" if r["auc"] == d["auc"] else "below"
            out[side].append(name)
    return out


def format_markdown(result: dict) -> str:
    rows = result["rows"]
    probes = _probe_names(rows)
    cfg = result["config"]
    out = ["# Sparse probing", "",
           f"Model {cfg['model']}; test AUC (accuracy) on each dataset's held-out split "
           f"(at most {cfg['max_examples']} texts per dataset, {cfg['test_fraction']:.0%} of each label "
           f"held out, seed {cfg['seed']}); C chosen by {result['probe_config']['folds']}-fold "
           "cross-validation on the training split. k-sparse probes use the k latents with the largest "
           "mean difference on the training split.", ""]
    for sae, hook, pooling in _groups(rows):
        out += [f"## {sae}: {hook}, {pooling}-token pooling", ""]
        out += _dataset_table(rows, sae, hook, pooling, probes) + [""]
        for probe in probes:
            vs = versus_dense(rows, sae, hook, pooling, probe)
            out.append(f"- {probe} against the dense probe's test AUC: above on {len(vs['above'])}, equal on "
                       f"{len(vs['equal'])}, below on {len(vs['below'])} datasets"
                       + (f" (above: {', '.join(vs['above'])})" if vs["above"] else ""))
        out.append("")
    for key in SETTINGS:
        if result.get(key):
            out += setting_table(result, key)
    if result.get("ood_rows"):
        out += ood_table(result)
    return "\n".join(out)


def ood_table(result: dict) -> list[str]:
    """Markdown: per (hook, pooling), each probe's mean test AUC in distribution and on the OOD
    texts, over the datasets that have an OOD set."""
    ood = result["ood_rows"]
    names = sorted({r["dataset"] for r in ood})
    m_in = means([r for r in result["rows"] if r["dataset"] in names])
    m_ood = means(ood)
    probes = _size_probes(result["rows"])
    out = ["## Out of distribution (the covariate-shift setting)", "",
           f"Each probe fitted on the training split as above, scored on its held-out test split (in "
           f"distribution) and on the dataset's OOD texts; mean test AUC over the {len(names)} datasets with "
           f"an OOD set ({', '.join(names)}).", ""]
    for hook, pooling in dict.fromkeys((r["hook"], r["pooling"]) for r in ood):
        out += [f"### {hook}, {pooling}-token pooling", "",
                "| autoencoder | probe | in distribution | OOD | OOD minus in distribution |", "|---|---|---|---|---|"]
        keys = [(DENSE, hook, pooling, "dense")] + [(sae, hook, pooling, p) for sae, h, pl in _groups(ood)
                                                    if (h, pl) == (hook, pooling) for p in probes]
        for key in keys:
            a, b = m_in.get(key), m_ood.get(key)
            if a and b:
                out.append(f"| {key[0]} | {key[3]} | {a['auc']:.3f} | {b['auc']:.3f} | {b['auc'] - a['auc']:+.3f} |")
        out.append("")
    return out


def _size_probes(rows: list[dict]) -> list[str]:
    """The probes the data-scarce views show: k=1, the largest k and all."""
    names = _probe_names(rows)
    ks = [p for p in names if p.startswith("k=")]
    return list(dict.fromkeys(ks[:1] + ks[-1:] + [p for p in names if p == "all"]))


class Setting(NamedTuple):
    """A setting that refits the probes on a changed training split (``splits.variants``)."""

    field: str
    """The rows' field that varies."""
    option: str
    """The ``ProbingConfig`` field that asks for it."""
    title: str
    """Heading of its table."""
    axis: str
    """Its plot's x label."""
    about: str
    """What a value means, for the table's preamble."""
    plot: str
    """Its plot's file name."""


SETTINGS = {
    "scarce_rows": Setting("train_size", "train_sizes", "Training-set size (the data-scarce setting)",
                           "training texts (half per label)",
                           "each size a balanced, seeded draw from the training split", "auc_vs_train_size.png"),
    "imbalance_rows": Setting("pos_fraction", "pos_fractions", "Class imbalance", "share of positive training texts",
                              "each fraction a seeded draw of one size per dataset from the training split (the "
                              "largest every fraction allows), the test split balanced as before",
                              "auc_vs_pos_fraction.png"),
    "noise_rows": Setting("label_noise", "label_noise", "Label noise", "share of training labels flipped",
                          "the whole training split with that share of its labels flipped (the latents chosen on "
                          "the flipped labels too), the test labels clean", "auc_vs_label_noise.png"),
}
"""{result key: its Setting}."""


def setting_means(result: dict, key: str = "scarce_rows") -> dict[tuple[str, str, str, str], dict]:
    """{(sae, hook, pooling, probe): {value: {"auc", "accuracy", "n"}}}: :func:`means` per value
    of the setting ``key`` (:data:`SETTINGS`); value ``"full"`` is the whole training split as
    it is (the main rows)."""
    field_ = SETTINGS[key].field
    by_value: dict[object, list[dict]] = defaultdict(list)
    for r in result.get(key, []):
        by_value[r[field_]].append(r)
    by_value["full"] = result["rows"]
    out: dict[tuple, dict] = defaultdict(dict)
    for value, rows in by_value.items():
        for k, v in means(rows).items():
            out[k][value] = v
    return dict(out)


def setting_table(result: dict, key: str = "scarce_rows") -> list[str]:
    """Markdown: mean test AUC by the setting's value, per (hook, pooling), the dense probe first."""
    field_, title = SETTINGS[key].field, SETTINGS[key].title
    values = sorted({r[field_] for r in result[key]})
    m = setting_means(result, key)
    probes = _size_probes(result["rows"])
    n_full = sorted({r["n_train"] for r in result["rows"]})
    full = f"full ({n_full[0]})" if len(n_full) == 1 else f"full ({n_full[0]}-{n_full[-1]})"
    draws = len({r.get("draw", 0) for r in result[key]})
    sizes = sorted({r["n_train"] for r in result[key]})
    size_note = (f" Training texts per dataset: {sizes[0]}" + (f"-{sizes[-1]}" if len(sizes) > 1 else "") + "."
                 if key == "imbalance_rows" else "")
    out = [f"## {title}", "",
           f"Mean test AUC over the datasets the value applies to (their count in brackets where it is not "
           f"all of them); {SETTINGS[key].about}; {draws} seeded draw{'s' if draws > 1 else ''} per value, averaged "
           f"per dataset first.{size_note} The \"full\" column is the whole training split as it is.", ""]
    n_all = len({r["dataset"] for r in result["rows"]})
    # the unchanged split is noise 0: first in the noise table, last (the largest size, or the
    # balanced split) in the others
    columns = ["full", *values] if key == "noise_rows" else [*values, "full"]
    for hook, pooling in dict.fromkeys((r["hook"], r["pooling"]) for r in result["rows"]):
        out += [f"### {hook}, {pooling}-token pooling", "",
                "| autoencoder | probe | " + " | ".join(full if v == "full" else f"{v:g}" for v in columns) + " |",
                "|---|---|" + "---|" * (len(values) + 1)]
        keys = [(DENSE, hook, pooling, "dense")] + [(sae, hook, pooling, p) for sae, h, pl in _groups(result["rows"])
                                                    if (h, pl) == (hook, pooling) for p in probes]
        for k in keys:
            cells = []
            for value in columns:
                v = m.get(k, {}).get(value)
                cells.append("-" if v is None else f"{v['auc']:.3f}" + (f" [{v['n']}]" if v["n"] != n_all else ""))
            out.append(f"| {k[0]} | {k[3]} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def _save_png(fig, path: str | Path) -> Path:
    """Lay out, write atomically as PNG and close ``fig``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    with atomic_open(path) as f:
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)
    return path


def plot_setting(result: dict, key: str, path: str | Path) -> Path:
    """Mean test AUC against the setting's value (training-set size on a log2 axis with the full
    split at the far right; a fraction on a linear one, the unchanged split at 0.5 positive or 0
    noise), one panel per pooling: the dense probe dashed black, each autoencoder's k=1 probe
    dotted and its largest-k probe solid, in one colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    field_, xlabel = SETTINGS[key].field, SETTINGS[key].axis
    rows = result["rows"]
    m = setting_means(result, key)
    values = sorted({r[field_] for r in result[key]})
    x_full = {"scarce_rows": 2 * values[-1], "imbalance_rows": 0.5, "noise_rows": 0.0}[key]
    probes = [p for p in _size_probes(rows) if p.startswith("k=")]
    poolings = list(dict.fromkeys(r["pooling"] for r in rows))
    fig, axes = plt.subplots(1, len(poolings), figsize=(8 * len(poolings), 4), squeeze=False)

    def line(ax, k, style, **kw):
        xs = sorted([v for v in values if v in m.get(k, {})] + (["full"] if "full" in m.get(k, {}) else []),
                    key=lambda v: x_full if v == "full" else v)
        return ax.plot([x_full if v == "full" else v for v in xs], [m[k][v]["auc"] for v in xs], style, **kw)[0]

    for ax, pooling in zip(axes[0], poolings):
        for hook in dict.fromkeys(r["hook"] for r in rows if r["pooling"] == pooling):
            line(ax, (DENSE, hook, pooling, "dense"), "k--", label=f"dense probe ({hook})")
        for sae, hook, pl in _groups(rows):
            if pl != pooling:
                continue
            first = line(ax, (sae, hook, pl, probes[-1]), "o-", label=f"{sae} {probes[-1]}")
            if len(probes) > 1:
                line(ax, (sae, hook, pl, probes[0]), "o:", color=first.get_color(), label=f"{sae} {probes[0]}")
        if key == "scarce_rows":
            ax.set_xscale("log", base=2)
            ax.set_xticks(values + [x_full], [str(v) for v in values] + ["full"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean test AUC")
        ax.set_title(f"{pooling}-token pooling")
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the lines, not over them
    return _save_png(fig, path)


def plot_auc_vs_k(result: dict, path: str | Path) -> Path:
    """Mean test AUC against k (log2 axis; the all-latent probe at the far right), one line per
    autoencoder and one panel per pooling, the dense probe as a dashed horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    m = means(rows)
    poolings = list(dict.fromkeys(r["pooling"] for r in rows))
    ks = sorted({r["k"] for r in rows if r["k"] is not None})
    x_all = 2 * ks[-1] if ks else 1
    fig, axes = plt.subplots(1, len(poolings), figsize=(5.5 * len(poolings), 4), squeeze=False)
    for ax, pooling in zip(axes[0], poolings):
        for sae, hook, pl in _groups(rows):
            if pl != pooling:
                continue
            xs = [k for k in ks if (sae, hook, pl, f"k={k}") in m]
            line = ax.plot(xs, [m[(sae, hook, pl, f"k={k}")]["auc"] for k in xs], "o-", label=sae)[0]
            if (sae, hook, pl, "all") in m:
                ax.plot([x_all], [m[(sae, hook, pl, "all")]["auc"]], "s", color=line.get_color())
        for (s, hook, pl, _probe), v in m.items():
            if s == DENSE and pl == pooling:
                ax.axhline(v["auc"], ls="--", color="k", label=f"dense probe ({hook})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks + [x_all], [str(k) for k in ks] + ["all"])
        ax.set_xlabel("latents in the probe (k)")
        ax.set_ylabel(f"mean test AUC over {len({r['dataset'] for r in rows})} datasets")
        ax.set_title(f"{pooling}-token pooling")
        ax.legend(fontsize=7)
    return _save_png(fig, path)


def write_report(result: dict, out: str | Path) -> dict[str, Path]:
    """results.json, results.md and auc_vs_k.png in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", result)
    md = out / "results.md"
    write_text(md, format_markdown(result) + "\n")
    written = {"json": out / "results.json", "markdown": md, "plot": plot_auc_vs_k(result, out / "auc_vs_k.png")}
    for key, setting in SETTINGS.items():
        if result.get(key):
            written[key] = plot_setting(result, key, out / setting.plot)
    return written


__all__ = ["DENSE", "Setting", "SETTINGS", "means", "setting_means", "versus_dense", "format_markdown", "setting_table",
           "ood_table", "plot_auc_vs_k", "plot_setting", "write_report"]
