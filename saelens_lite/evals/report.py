"""Evaluation outputs: ``metrics.json``, ``summary.md``, the feature-density histogram PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

# (key, label, format) in the order of the summary; missing keys are skipped.
_ROWS = (
    ("l0", "L0 (active latents / token)", "{:.2f}"),
    ("fvu", "FVU", "{:.4f}"),
    ("fvu_typical", "FVU without outlier-norm tokens (> 5x median)", "{:.4f}"),
    ("outlier_tokens", "outlier-norm tokens left out of it", "{:d}"),
    ("explained_variance", "explained variance", "{:.4f}"),
    ("mse", "MSE (per element)", "{:.4g}"),
    ("cosine_sim", "cosine similarity", "{:.4f}"),
    ("l2_ratio", "L2 ratio ||x_hat|| / ||x||", "{:.4f}"),
    ("dead_fraction", "dead latents", "{:.2%}"),
    ("dense_fraction", "dense latents", "{:.2%}"),
    ("ce_loss_clean", "CE loss, clean", "{:.4f}"),
    ("ce_loss_sae", "CE loss, SAE spliced", "{:.4f}"),
    ("ce_loss_zero", "CE loss, zero-ablated", "{:.4f}"),
    ("ce_loss_recovered", "CE loss recovered", "{:.4f}"),
    ("kl_div", "KL(clean || spliced), nats", "{:.4f}"),
    ("kl_div_score", "KL score (1 - KL_sae / KL_zero)", "{:.4f}"),
    ("pooled_cos_sae", "pooled embedding cos, spliced", "{:.4f}"),
    ("pooled_cos_zero", "pooled embedding cos, zero-ablated", "{:.4f}"),
    ("pooled_cos_recovered", "pooled embedding cos recovered", "{:.4f}"),
)


def _fmt(fmt: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return fmt.format(v)


def format_summary(metrics: dict) -> str:
    """A short markdown summary: what was evaluated, then a two-column metric table."""
    head = [f"SAE {metrics.get('architecture', '?')} d_in={metrics.get('d_in', '?')} "
            f"d_sae={metrics.get('d_sae', '?')} at `{metrics.get('hook', '?')}`"
            + (f" of {metrics['model']}" if metrics.get("model") else "")]
    head.append(f"{metrics.get('n_tokens', 0):,} cached tokens"
                + (f", {metrics['downstream_tokens']:,} tokens for the spliced-model loss"
                   if metrics.get("downstream_tokens") else ""))
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {label} | {_fmt(fmt, metrics[key])} |" for key, label, fmt in _ROWS if key in metrics]
    return "\n".join(head) + "\n\n" + "\n".join(lines) + "\n"


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    return v


def density_histogram(density_F: np.ndarray, path: str | Path, *, title: str = "") -> Path:
    """log10 feature-density histogram (dead latents, p = 0, drawn at -10 and counted in the legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    density_F = np.asarray(density_F, dtype=np.float64)
    dead = int((density_F == 0).sum())
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(np.log10(density_F + 1e-10), bins=60, color="tab:blue")
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("latents")
    ax.set_title(title or "feature density")
    ax.text(0.02, 0.95, f"{dead} dead (at -10) of {len(density_F)}", transform=ax.transAxes, va="top")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(metrics: dict, out_dir: str | Path, density_F: np.ndarray | None = None) -> dict[str, Path]:
    """Write ``metrics.json``, ``summary.md`` and (with densities) ``feature_density.{npy,png}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "metrics.json", "markdown": out / "summary.md"}
    paths["json"].write_text(json.dumps({k: _jsonable(v) for k, v in metrics.items()}, indent=2) + "\n")
    paths["markdown"].write_text(format_summary(metrics))
    if density_F is not None:
        paths["density"] = out / "feature_density.npy"
        np.save(paths["density"], np.asarray(density_F, dtype=np.float64))
        paths["histogram"] = density_histogram(density_F, out / "feature_density.png",
                                               title=f"feature density, {metrics.get('hook', '')}")
    return paths


__all__ = ["format_summary", "write_report", "density_histogram"]
