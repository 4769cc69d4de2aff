"""Evaluation outputs: ``metrics.json``, ``summary.md``, the feature-density histogram PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

# (key, label, format) in the order of the summary; missing keys are skipped.
_RECON_ROWS = (
    ("n_tokens", "tokens scored", "{:,d}"),
    ("l0", "L0 (active latents / token)", "{:.2f}"),
    ("fvu", "FVU", "{:.4f}"),
    ("fvu_typical", "FVU without outlier-norm tokens (> 5x median)", "{:.4f}"),
    ("outlier_tokens", "outlier-norm tokens left out of it", "{:d}"),
    ("explained_variance", "explained variance", "{:.4f}"),
    ("mse", "MSE (per element)", "{:.4g}"),
    ("cosine_sim", "cosine similarity", "{:.4f}"),
    ("l2_ratio", "L2 ratio ||x_hat|| / ||x||", "{:.4f}"),
    ("dead_fraction", "dead latents (never fired on these tokens)", "{:.2%}"),
    ("dense_fraction", "dense latents", "{:.2%}"),
)
_DOWNSTREAM_ROWS = (
    ("ce_loss_clean", "CE loss, clean", "{:.4f}"),
    ("ce_loss_sae", "CE loss, SAE spliced", "{:.4f}"),
    ("ce_loss_zero", "CE loss, zero-ablated", "{:.4f}"),
    ("ce_loss_mean", "CE loss, mean-ablated", "{:.4f}"),
    ("ce_loss_recovered", "CE loss recovered vs zero ablation (SAELens, SAEBench)", "{:.4f}"),
    ("ce_loss_recovered_mean", "CE loss recovered vs mean ablation (stricter)", "{:.4f}"),
    ("kl_div", "KL(clean || spliced), nats", "{:.4f}"),
    ("kl_div_score", "KL score (1 - KL_sae / KL_zero)", "{:.4f}"),
    ("kl_div_score_mean", "KL score vs mean ablation", "{:.4f}"),
    ("pooled_cos_sae", "pooled embedding cos, spliced", "{:.4f}"),
    ("pooled_cos_zero", "pooled embedding cos, zero-ablated", "{:.4f}"),
    ("pooled_cos_mean", "pooled embedding cos, mean-ablated", "{:.4f}"),
    ("pooled_cos_recovered", "pooled embedding cos recovered (vs zero)", "{:.4f}"),
    ("pooled_cos_recovered_mean", "pooled embedding cos recovered (vs mean)", "{:.4f}"),
)


def _fmt(fmt: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return fmt.format(v)


def format_summary(metrics: dict) -> str:
    """Markdown: what was evaluated and where each number was measured, the reconstruction
    table (held-out beside in-sample when both exist) and the spliced-model table."""
    what = f"SAE {metrics.get('architecture', '?')}" + (
        f", {metrics['transcoder']}," if metrics.get("transcoder") else "")
    head = [f"{what} d_in={metrics.get('d_in', '?')} "
            f"d_sae={metrics.get('d_sae', '?')} at `{metrics.get('hook', '?')}`"
            + (f" of {metrics['model']}" if metrics.get("model") else "")
            + f"; tokens left out: {metrics.get('exclude', '?')}"]
    split = metrics.get("reconstruction_split", "?")
    head.append(f"- reconstruction ({split}): {metrics.get('reconstruction_source', '?')}")
    both = "in_sample_fvu" in metrics
    if both:
        head.append(f"- in-sample column: {metrics.get('in_sample_source', '?')}")
    if metrics.get("downstream_source"):
        head.append(f"- spliced-model loss: {metrics.get('downstream_tokens', metrics.get('downstream_contexts'))} "
                    f"{'tokens' if 'downstream_tokens' in metrics else 'contexts'} of "
                    f"{metrics['downstream_source']}; mean ablation uses the mean of the "
                    f"{metrics.get('mean_ablation_source', '?')}")
    if both:
        lines = [f"| metric | {split} | in-sample |", "|---|---|---|"]
        lines += [f"| {label} | {_fmt(fmt, metrics.get(key))} | {_fmt(fmt, metrics.get('in_sample_' + key))} |"
                  for key, label, fmt in _RECON_ROWS if key in metrics]
    else:
        lines = [f"| metric | {split} |", "|---|---|"]
        lines += [f"| {label} | {_fmt(fmt, metrics[key])} |" for key, label, fmt in _RECON_ROWS if key in metrics]
    down = [f"| {label} | {_fmt(fmt, metrics[key])} |" for key, label, fmt in _DOWNSTREAM_ROWS
            if metrics.get(key) is not None]
    out = "\n".join(head) + "\n\n" + "\n".join(lines) + "\n"
    if down:
        out += "\n| spliced model | value |\n|---|---|\n" + "\n".join(down) + "\n"
    return out


def headline(metrics: dict) -> str:
    """One line that a reader can quote, with where the FVU was measured."""
    parts = [f"FVU {_fmt('{:.4f}', metrics.get('fvu'))} ({metrics.get('reconstruction_split', '?')}, "
             f"{metrics.get('n_tokens', 0):,} tokens)"]
    if metrics.get("in_sample_fvu") is not None:
        parts.append(f"in-sample FVU {metrics['in_sample_fvu']:.4f} ({metrics['in_sample_n_tokens']:,} tokens)")
    parts.append(f"L0 {_fmt('{:.1f}', metrics.get('l0'))}")
    parts.append(f"dead {_fmt('{:.2%}', metrics.get('dead_fraction'))}")
    if metrics.get("ce_loss_recovered") is not None:
        parts.append(f"CE recovered {metrics['ce_loss_recovered']:.4f} vs zero / "
                     f"{_fmt('{:.4f}', metrics.get('ce_loss_recovered_mean'))} vs mean ablation "
                     f"({metrics.get('downstream_tokens', 0):,} tokens, {metrics.get('reconstruction_split', '?')})")
    return "  ".join(parts)


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
        where = "in-sample rows" if "in_sample_n_tokens" in metrics else metrics.get("reconstruction_split", "")
        paths["histogram"] = density_histogram(density_F, out / "feature_density.png",
                                               title=f"feature density, {metrics.get('hook', '')} ({where})")
    return paths


__all__ = ["format_summary", "headline", "write_report", "density_histogram"]
