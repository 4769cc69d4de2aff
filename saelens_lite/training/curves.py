"""Training curves as a PNG that needs no W&B: loss, FVU, L0 and dead fraction against tokens.

``plot_training_curves(run_dir)`` reads the run's ``metrics.jsonl`` (see
:class:`saelens_lite.training.logging.RunLogger` for its records) and returns a matplotlib
``Figure`` with four panels; ``write_training_curves(run_dir)`` saves it atomically as
``run_dir/training_curves.png``. The trainer calls :func:`refresh_training_curves` at each
checkpoint and when training ends; that one logs a warning instead of raising.

One PNG per run, one line per hook: it sits beside ``metrics.jsonl``, which holds every hook,
and exists from the first checkpoint on (the hook folders are only written when training ends);
hooks of one run share the token axis, so lines on the same axes compare them directly.

The FVU is the training batches' own (in-sample): ``sum (x - x_hat)^2 / sum (x - mean_B x)^2``
over each logged batch, before the SAE's update on it; a held-out FVU comes from
``saelens-lite eval``. The loss is in the units the SAE trains in (activations scaled to unit
mean squared norm when ``normalize_activations``).

The figure is built on matplotlib's object API with the Agg canvas, not ``pyplot``: no global
backend switch in the caller's process, and no figure registry to leak into.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from pathlib import Path

from saelens_lite.saes import REGISTRY
from saelens_lite.training.logging import read_metrics
from saelens_lite.util.atomic import write_bytes

log = logging.getLogger(__name__)

CURVES_NAME = "training_curves.png"
"""File name of the curves, in the run folder."""

# (record key, panel title, y label, y scale): log y where the values can span decades
PANELS = (
    ("loss", "Loss", "training loss (normalised units)", "log"),
    ("fvu", "FVU (in-sample, training batches)", "FVU (fraction of variance unexplained)", "log"),
    ("l0", "L0", "L0 (active latents per token)", "linear"),
    ("dead_fraction", "Dead latents", "dead latents (% of latents)", "linear"),
)


def _by_hook(records: list[dict]) -> dict[str, list[dict]]:
    """Records grouped by hook (first-seen order), each sorted by tokens."""
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(r.get("hook", ""), []).append(r)
    return {h: sorted(rs, key=lambda r: r["tokens"]) for h, rs in out.items()}


def _title(config: dict, hooks: list[str]) -> str:
    """``topk SAE, k=32 · blocks.3.hook_resid_post`` (k only where the architecture reads it).
    The SAE's fields are under ``sae`` (flat in a config.json written before issue 24)."""
    sae = config.get("sae", config)
    arch = sae.get("architecture")
    head = f"{arch} SAE" if arch else "SAE"
    if arch in REGISTRY and REGISTRY[arch].uses_k and "k" in sae:
        head += f", k={sae['k']}"
    where = ", ".join(hooks) if len(hooks) <= 3 else f"{len(hooks)} hooks"
    if sae.get("target_hook"):  # a transcoder: what it reads -> what it reconstructs
        head = head.replace("SAE", "transcoder" + (" with skip" if sae.get("skip") else ""), 1)
        where += f" -> {sae['target_hook']}"
    model = f" of {config['model']}" if config.get("model") else ""
    return f"{head} · {where}{model}"


def _style_y(ax, key: str, yscale: str, top: float) -> None:
    """Log y with plain tick labels (0.3, not 3x10^-1) where asked and the values are positive and
    span at least 4x (a narrower range reads better on a linear axis, whose ticks label it); a
    linear axis from 0, so a flat TopK L0 reads as flat and a zero dead fraction sits on the axis."""
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    lines = [y for line in ax.get_lines() for y in line.get_ydata() if math.isfinite(y)]  # not a NaN loss
    if yscale == "log" and lines and min(lines) > 0 and max(lines) >= 4 * min(lines):
        ax.set_yscale("log")
        # minor ticks (2..9 x 10^n): all labelled within a decade, only 2 and 5 beyond one
        few = math.log10(max(lines) / min(lines)) > 1

        def minor(v, _):
            lead = round(v / 10 ** math.floor(math.log10(v)))
            return "" if few and lead not in (2, 5) else f"{v:g}"

        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(minor))
    elif key == "dead_fraction":
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
        ax.set_ylim(0, max(0.05, min(1.0, 1.1 * top)))
    else:  # from 0 (or below, for a negative loss)
        ax.set_ylim(1.1 * min([0.0, *lines]), 1.1 * top if top > 0 else 1.0)


def _dead_title(config: dict) -> str:
    window = config.get("dead_window_tokens")
    if window is None:
        return "Dead latents"
    return f"Dead latents (silent for min({window:,}, tokens/2) tokens)"


def plot_training_curves(run_dir: str | os.PathLike, *, metrics: str | os.PathLike | None = None):
    """A 2x2 ``Figure`` of loss, FVU, L0 and dead fraction (y) against tokens trained (x), one
    line per hook; the title names the architecture (and k), the hooks, and says the FVU is
    in-sample. ``metrics`` overrides ``run_dir/metrics.jsonl``; ``run_dir/config.json``, when
    present, supplies the architecture and k. Raises ``ValueError`` when there is no record."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    run_dir = Path(run_dir)
    by_hook = _by_hook(read_metrics(metrics or run_dir / "metrics.jsonl"))
    if not by_hook:
        raise ValueError(f"{metrics or run_dir / 'metrics.jsonl'} holds no metric record yet")
    cfg_path = run_dir / "config.json"
    config = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    fig = Figure(figsize=(11, 7.5), dpi=100)
    # fixed margins: constrained layout would take 2/3 of the drawing time
    fig.subplots_adjust(left=0.075, right=0.985, bottom=0.07, top=0.87, wspace=0.22, hspace=0.2)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, (key, name, ylabel, yscale) in zip(axes, PANELS):
        top = 0.0
        for hook, recs in by_hook.items():
            xs = [r["tokens"] for r in recs if r.get(key) is not None]
            ys = [r[key] for r in recs if r.get(key) is not None]
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=hook, clip_on=False, zorder=3)
            top = max([top, *(y for y in ys if math.isfinite(y))])
        _style_y(ax, key, yscale, top)
        ax.set_title(name if key != "dead_fraction" else _dead_title(config), fontsize=11)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    for ax in axes[2:]:
        ax.set_xlabel("tokens trained")
    if len(by_hook) > 1:
        axes[0].legend(title="hook", fontsize=8)
    last = max(r["tokens"] for recs in by_hook.values() for r in recs)
    fig.suptitle(f"{_title(config, list(by_hook))}\ntraining curves up to {last:,} tokens "
                 "(FVU measured on the training batches themselves: in-sample)", fontsize=12)
    return fig


def write_training_curves(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Plot ``run_dir``'s curves and write them atomically (temp file, fsync, rename) to ``out``
    (default ``run_dir/training_curves.png``); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = plot_training_curves(run_dir)
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    path = Path(out) if out is not None else Path(run_dir) / CURVES_NAME
    write_bytes(path, buf.getvalue())
    return path


def refresh_training_curves(run_dir: str | os.PathLike) -> Path | None:
    """:func:`write_training_curves`, for the trainer: a failure (no record yet, matplotlib
    missing, a full disk) logs a warning and returns None, never interrupting training. Before
    the first record (a run that failed at once) there is nothing to draw: None, no warning."""
    metrics = Path(run_dir) / "metrics.jsonl"
    if not metrics.is_file() or metrics.stat().st_size == 0:
        return None
    try:
        return write_training_curves(run_dir)
    except Exception as e:  # noqa: BLE001 - a plot must never stop a training run
        log.warning("training curves of %s not written: %s: %s", run_dir, type(e).__name__, e)
        return None


__all__ = ["plot_training_curves", "write_training_curves", "refresh_training_curves", "CURVES_NAME"]
