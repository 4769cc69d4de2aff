"""The driver of a comparison: train, evaluate, plot, and write ``results.json`` / ``results.md``."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from saelens_lite.compare.config import CompareConfig
from saelens_lite.compare.data import load_activations, load_images
from saelens_lite.compare.metrics import ce_metrics, evaluate_model
from saelens_lite.compare.plots import write_plots
from saelens_lite.compare.train import train_all

COLUMNS = ["latents", "l0", "mse", "fvu", "dead_fraction", "selectivity", "probe_acc", "auroc",
           "auroc_elbo", "ce_loss_recovered", "train_s"]


def format_table(rows: dict) -> str:
    """Markdown table of the result rows (missing metrics as '-')."""
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows.values())]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else
                         str(v) if isinstance(v, int) else f"{v:.4g}" if c != "train_s" else f"{v:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare(out_dir, *, activations=None, hook: str | None = None, images: str | None = None,
            config: CompareConfig | None = None) -> dict:
    """Train and evaluate every type on ``activations`` (a cache folder / ActivationCache) or
    ``images`` ("digits" | "mnist"); write ``results.json``, ``results.md`` and the PNG plots to
    ``out_dir``. Returns {"config", "data", "rows": {name: metrics}}."""
    if (activations is None) == (images is None):
        raise ValueError("compare: give exactly one of activations= or images=")
    cfg = config or CompareConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    data = (load_images(images, held_out_class=cfg.held_out_class, seed=cfg.seed) if images
            else load_activations(activations, hook))
    models = train_all(data, cfg, out)
    rows = {name: evaluate_model(m, data, cfg) | {"train_s": secs} for name, (m, secs) in models.items()}
    if data.kind == "activations" and cfg.ce_contexts and data.cache.meta.get("model"):
        for name, ce in ce_metrics(models, data, cfg).items():
            rows[name]["ce_loss_recovered"] = ce.get("ce_loss_recovered")
            rows[name]["ce_loss_sae"] = ce.get("ce_loss_sae")
            rows[name]["ce_loss_clean"] = ce.get("ce_loss_clean")
    plots = write_plots(models, data, rows, out, cfg)
    result = {"config": dataclasses.asdict(cfg), "data": {"kind": data.kind, "name": data.name,
              "hook": data.hook, "d_in": int(data.x_train.shape[1]), "n_train": int(len(data.x_train)),
              "n_test": int(len(data.x_test))}, "rows": rows, "plots": plots}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=float))
    (out / "results.md").write_text(format_table(rows))
    return result

