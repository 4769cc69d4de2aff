"""Write a static feature-dashboard site: ``build_dashboard(sae, cache, out)``.

Layout of ``out``::

    index.html                 the single-page app (copied from the repository's dashboards/)
    assets/app.js, style.css   front-end, no network access
    data/meta.js               saeMeta({...}): SAE, model, hook, sizes, notes
    data/index.js              saeIndex({...}): one column per statistic over all F features
    data/f/00000.js ...        saeShard(i, {...}): features [i*256, (i+1)*256), their examples,
                               histogram, logit effects, neighbours, and the token strings they use
    data/training_curves.png   the SAE's training curves, when its folder or run folder has them
                               (see saelens_lite.training.curves); the index shows them
    features/                  the feature statistics the pages render, as saelens_lite.features.store
                               saves them (interventions read their max activations from here)

With ``explanations=`` (saelens-lite explain's JSONL), the index also has ``expl`` (the text per
feature) and ``scores`` (each scorer's AUROC per feature), each shard ``expl`` (feature ->
explanation, explainer, scores beside the shuffled baseline) and meta ``explanations`` (the
source, the explainers and the scorers); without them the files are as before.

Data files are JSON-P (a function call around JSON) so the site works from ``file://``, where
``fetch`` is blocked, and when served. Token text is untrusted: the JSON is ASCII-only with
``<``, ``>``, ``&`` and U+2028/2029 escaped, so no token can close the script, and the page puts
text into the DOM with ``textContent`` only.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from saelens_lite.dashboards.config import DashboardConfig
from saelens_lite.dashboards.explanations import (
    Explanations,
    check_densities,
    index_columns,
    load_explanations,
    meta_entry,
    shard_entry,
)
from saelens_lite.features.examples import TokenStrings, example_windows
from saelens_lite.features.logits import logit_effects, nearest_features
from saelens_lite.features.stats import compute_feature_stats, resolve_hook
from saelens_lite.features.store import SITE_SUBDIR, SavedFeatures, load_features, save_features
from saelens_lite.training.curves import CURVES_NAME
from saelens_lite.util.atomic import atomic_open, write_text

log = logging.getLogger(__name__)

def _assets_dir() -> Path:
    """Front-end sources: the repository's ``dashboards/`` (a checkout or editable install), else
    the copy a wheel installs under ``<prefix>/share/saelens_lite/dashboards``."""
    repo = Path(__file__).resolve().parents[2] / "dashboards"
    if (repo / "index.html").is_file():
        return repo
    return Path(sys.prefix) / "share" / "saelens_lite" / "dashboards"


#: Where the front-end sources are read from.
ASSETS_DIR = _assets_dir()
SITE_FORMAT = 1


def js_json(obj) -> str:
    """JSON safe to embed in a <script>: ASCII only (so U+2028/2029 are escaped) and no raw
    ``<``, ``>`` or ``&`` (they only occur inside strings, where \\u escapes mean the same)."""
    s = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _round_sig(x: np.ndarray, digits: int = 4) -> np.ndarray:
    """Round to ``digits`` significant digits (short JSON, precise enough to read)."""
    x = np.nan_to_num(np.asarray(x, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    mag = np.floor(np.log10(np.where(x == 0, 1.0, np.abs(x))))
    scale = 10.0 ** (digits - 1 - mag)
    return np.round(x * scale) / scale


_ZERO_FLOAT = re.compile(r"(?<=[\[,])0\.0(?=[,\]])")


def _features_json(feats: list) -> str:
    """JSON of feature records (numbers and ids only, no free text), with 0.0 written as 0:
    most window slots are zero, so this trims the shards by a third."""
    return _ZERO_FLOAT.sub("0", json.dumps(feats, separators=(",", ":"), allow_nan=False))


def _examples(windows: tuple, j: int, sl: slice, before: int) -> list:
    """[[token ids], [acts], centre index] for examples ``sl`` of feature ``j``. ``windows``:
    nested lists (tokens, acts, lo, hi, ok) per (feature, example); slots outside [lo, hi), the
    example's context, are dropped; examples that do not exist (ok False) are skipped."""
    toks, acts, los, his, oks = (w[j][sl] for w in windows)
    return [[t[lo:hi], a[lo:hi], before - lo] for t, a, lo, hi, ok in zip(toks, acts, los, his, oks) if ok]


def prepare_site(out: Path) -> None:
    """Create ``out`` or clear an earlier site there (a finished one, or one whose build failed
    after this step: index.html and assets/app.js; its graph pages in ``graphs/`` are kept);
    refuse to clobber other folders."""
    is_site = ((out / "data" / "meta.js").is_file() or ((out / "index.html").is_file()
                                                         and (out / "assets" / "app.js").is_file())
               or (out.is_dir() and {p.name for p in out.iterdir()} == {"graphs"}
                   and (out / "graphs" / "index.html").is_file()))  # graph pages only (.graphs)
    if out.exists() and any(out.iterdir()) and not is_site:
        raise FileExistsError(f"{out} exists, is not empty and is not a dashboard site; choose a new folder")
    for sub in ("data", "assets", SITE_SUBDIR):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "data" / "f").mkdir(parents=True, exist_ok=True)
    (out / "assets").mkdir(parents=True, exist_ok=True)
    if not (ASSETS_DIR / "index.html").is_file():
        raise FileNotFoundError(f"front-end assets not found in {ASSETS_DIR}")
    shutil.copyfile(ASSETS_DIR / "index.html", out / "index.html")
    for name in ("app.js", "style.css"):
        shutil.copyfile(ASSETS_DIR / name, out / "assets" / name)


def find_training_curves(sae_dir: str | os.PathLike) -> Path | None:
    """The training-curves PNG of the run an SAE folder comes from: ``SAE_DIR/training_curves.png``,
    else that of its run folder (the parent, when it holds the run's ``metrics.jsonl``)."""
    sae_dir = Path(sae_dir)
    for folder in (sae_dir, sae_dir.parent):
        png = folder / CURVES_NAME
        if png.is_file() and (folder == sae_dir or (folder / "metrics.jsonl").is_file()):
            return png
    return None


def copy_training_curves(png: str | os.PathLike, out: Path) -> str:
    """Copy ``png`` into the site (``util.atomic``: temp name, then rename); returns its path
    relative to the site."""
    rel = f"data/{CURVES_NAME}"
    with open(png, "rb") as src, atomic_open(out / rel) as dst:
        shutil.copyfileobj(src, dst)
    return rel


def write_site(out: Path, saved: SavedFeatures, table, cache, tokenizer, cfg: DashboardConfig, *,
               explanations: Explanations | None = None) -> None:
    """Write meta, index and feature shards: a rendering of ``saved`` (what
    :func:`~saelens_lite.features.store.save_features` wrote, its meta becoming the site's) with
    each example's context window from ``table`` and ``cache``. Windows are looked up shard by
    shard, so memory stays bounded by one shard's examples; numbers are rounded once per shard."""
    stats, F_ = saved.stats, len(saved.stats.count_F)
    n_shards = -(-F_ // cfg.shard_features)
    strings_of = TokenStrings(tokenizer)
    rounded = {"max": _round_sig(stats.max_F).tolist(), "mean": _round_sig(stats.mean_F).tolist(),
               "edges": _round_sig(stats.max_F[:, None] * np.arange(cfg.n_quantiles + 1) / cfg.n_quantiles).tolist()}
    top_tok_F: list[list[str]] = []
    for s in range(n_shards):
        a, b = s * cfg.shard_features, min((s + 1) * cfg.shard_features, F_)
        windows, centre, strings = _shard_windows(saved, table, cache, cfg, a, b, strings_of)
        feats = [_feature_entry(saved, windows, rounded, cfg, a, j) for j in range(b - a)]
        top_tok_F += [[strings[i] for i, _ in collections.Counter(i for i in c if i >= 0).most_common(3)]
                      for c in centre]
        expl = ""
        if explanations is not None:  # free text: through js_json, never _features_json
            here = {str(f): shard_entry(r) for f, r in explanations.records.items() if a <= f < b}
            expl = f',"expl":{js_json(here)}'
        text = (f'saeShard({s},{{"tok":{js_json({str(k): v for k, v in strings.items()})},'
                f'"features":{_features_json(feats)}{expl}}});\n')
        write_text(out / "data" / "f" / f"{s:05d}.js", text, encoding="ascii")
    _write_index_and_meta(out, saved, cfg, rounded, top_tok_F, explanations)


def _shard_windows(saved: SavedFeatures, table, cache, cfg: DashboardConfig, a: int, b: int, strings_of):
    """The context windows of features [a, b)'s top and quantile examples as nested lists
    (tokens, acts, lo, hi, ok: see :func:`_examples`), each feature's top-example centre tokens,
    and the strings of every token the shard shows."""
    stats, logits, before = saved.stats, saved.logits, cfg.window_before
    T = stats.top_rows_FT.shape[1]
    rows = np.concatenate([stats.top_rows_FT[a:b], stats.quant_rows_FQS[a:b].reshape(b - a, -1)], 1)
    feats_XE = np.broadcast_to(np.arange(a, b)[:, None], rows.shape)
    tok, act, valid = example_windows(table, cache, rows, feats_XE, before, cfg.window_after)
    used = [tok[valid]]
    if isinstance(logits, tuple):
        used += [logits.pos_ids_FL[a:b].ravel(), logits.neg_ids_FL[a:b].ravel()]
    W = valid.shape[-1]
    windows = (tok.tolist(), _round_sig(act).tolist(), valid.argmax(-1).tolist(),
               (W - valid[..., ::-1].argmax(-1)).tolist(), valid[..., before].tolist())
    centre = np.where(valid[:, :T, before], tok[:, :T, before], -1).tolist()
    return windows, centre, strings_of(np.concatenate(used))


def _feature_entry(saved: SavedFeatures, windows: tuple, rounded: dict, cfg: DashboardConfig, a: int,
                   j: int) -> dict:
    """Feature ``a + j``'s record in its shard (``j``: its place in the shard's windows)."""
    stats, logits, near, f = saved.stats, saved.logits, saved.neighbours, a + j
    T, (Q, S), before = stats.top_rows_FT.shape[1], stats.quant_rows_FQS.shape[1:], cfg.window_before
    edges = rounded["edges"][f]
    quant = [{"lo": edges[q], "hi": edges[q + 1], "n": int(stats.quant_counts_FQ[f, q]),
              "ex": _examples(windows, j, slice(T + q * S, T + (q + 1) * S), before)} for q in range(Q)]
    feat = {"i": f, "n": int(stats.count_F[f]), "max": rounded["max"][f], "mean": rounded["mean"][f],
            "hist": stats.hist_FH[f].tolist(), "top": _examples(windows, j, slice(0, T), before),
            "quant": quant[::-1]}
    if isinstance(logits, tuple):
        feat["pos"] = [logits.pos_ids_FL[f].tolist(), _round_sig(logits.pos_vals_FL[f]).tolist()]
        feat["neg"] = [logits.neg_ids_FL[f].tolist(), _round_sig(logits.neg_vals_FL[f]).tolist()]
    if near is not None:
        feat["near"] = [near.idx_FN[f].tolist(), _round_sig(near.cos_FN[f], 3).tolist()]
    return feat


def _write_index_and_meta(out: Path, saved: SavedFeatures, cfg: DashboardConfig, rounded: dict,
                          top_tok_F: list, explanations: Explanations | None) -> None:
    stats, F_ = saved.stats, len(saved.stats.count_F)
    meta = {k: v for k, v in saved.meta.items() if k != "config"}
    index = {"density": _round_sig(stats.density_F).tolist(), "max": rounded["max"], "mean": rounded["mean"],
             "top": top_tok_F}
    if explanations is not None:
        index.update(index_columns(explanations, F_))
        meta = {**meta, "explanations": meta_entry(explanations)}
    write_text(out / "data" / "index.js", f"saeIndex({js_json(index)});\n", encoding="ascii")
    meta = {**meta, "format": SITE_FORMAT, "n_features": F_, "n_tokens": stats.n_tokens,
            "shard_features": cfg.shard_features, "n_shards": -(-F_ // cfg.shard_features),
            "window_before": cfg.window_before, "n_bins": cfg.n_bins, "n_quantiles": cfg.n_quantiles,
            "logits_note": saved.logits if isinstance(saved.logits, str) else None}
    write_text(out / "data" / "meta.js", f"saeMeta({js_json(meta)});\n", encoding="ascii")


def weight_views(W_dec_FD, model, cfg: DashboardConfig):
    """(logit effects or a note or None, neighbours or None), as ``cfg`` asks."""
    logits = logit_effects(W_dec_FD, model, cfg.n_logits) if cfg.n_logits else None
    neighbours = (nearest_features(W_dec_FD, cfg.n_neighbours) if cfg.n_neighbours and W_dec_FD.shape[0] > 1
                  else None)
    return logits, neighbours


def site_meta(sae, cache, model, cfg: DashboardConfig) -> dict:
    """The SAE, model and cache a site describes (its meta.js, less the sizes write_site adds)."""
    return {"model": model.name, "family": model.family, "hook": resolve_hook(sae, cache, cfg.hook),
            "architecture": sae.architecture, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae,
            "k": getattr(sae.cfg, "k", None), "cache": cache.path.name,
            # a transcoder: activations from its input hook (above), logit effects through
            # its decoder, which writes the target hook (the MLP output) into the residual
            "target_hook": getattr(sae.cfg, "target_hook", "") or None,
            "context_size": cache.meta.get("context_size")}


def build_dashboard(sae, cache, out, *, model=None, config: DashboardConfig | None = None,
                    progress: bool = True, timings: dict | None = None,
                    training_curves: str | os.PathLike | None = None, explanations=None,
                    **overrides) -> Path:
    """Compute every feature's statistics and write the static site to ``out``; returns the path
    of its ``index.html`` (open it from disk, or ``saelens-lite serve out``).

    ``sae``: an SAE or a folder for ``SAE.load``; ``cache``: an ActivationCache or its folder;
    ``model``: a LoadedModel, a model name, or None to load the cache's model (for token strings
    and logit effects); ``timings``: a dict that receives the seconds of each stage;
    ``training_curves``: a PNG shown in the index's Training section (default: the one
    :func:`find_training_curves` finds beside an SAE folder; none for an SAE object);
    ``explanations``: the ``explanations.jsonl`` of ``saelens-lite explain`` (or a dict feature ->
    record), shown in the index and on the feature pages; a ValueError names the feature or the
    SAE when it was written for another SAE;
    ``overrides``: DashboardConfig fields (``n_top=10``...)."""
    from saelens_lite.cache import ActivationCache
    from saelens_lite.lm.load import LoadedModel, load_model
    from saelens_lite.saes import SAE
    from saelens_lite.saes.base import require_sparse_coder

    cfg = config or DashboardConfig()
    if overrides:
        cfg = DashboardConfig(**{**cfg.__dict__, **overrides})
    if training_curves is None and isinstance(sae, (str, os.PathLike)):
        training_curves = find_training_curves(sae)
    sae_path = sae if isinstance(sae, (str, os.PathLike)) else None
    sae = SAE.load(sae) if sae_path is not None else sae
    require_sparse_coder(sae, "a feature dashboard")
    sae = sae.eval()
    if explanations is not None:  # before any work, so a wrong file fails at once
        explanations = load_explanations(explanations, sae.cfg.d_sae, sae_path)
    cache = ActivationCache(cache) if isinstance(cache, (str, os.PathLike)) else cache
    if not isinstance(model, LoadedModel):
        name = model or cache.meta.get("model") or sae.cfg.model_name
        if not name:
            raise ValueError("the cache's meta names no model; pass model=")
        model = load_model(name)
    out = Path(out)
    prepare_site(out)
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    stats, table = compute_feature_stats(sae, cache, cfg, workdir=out, progress=progress)
    try:
        if explanations is not None:
            check_densities(explanations, stats.density_F, cache.path)
        timings["stats_s"] = time.perf_counter() - t0
        t = time.perf_counter()
        logits, neighbours = weight_views(sae.W_dec.detach(), model, cfg)
        timings["weights_s"] = time.perf_counter() - t
        t = time.perf_counter()
        meta = site_meta(sae, cache, model, cfg)
        meta["training_curves"] = copy_training_curves(training_curves, out) if training_curves else None
        save_features(out / SITE_SUBDIR, stats, logits=logits, neighbours=neighbours, config=cfg, meta=meta)
        write_site(out, load_features(out / SITE_SUBDIR, mmap=True), table, cache, model.tokenizer, cfg,
                   explanations=explanations)
        timings["write_s"] = time.perf_counter() - t
    finally:
        table.delete()
    log.info("dashboard for %d features written to %s (%s)", sae.cfg.d_sae, out,
             ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return out / "index.html"

__all__ = ["build_dashboard", "write_site", "prepare_site", "find_training_curves", "js_json", "ASSETS_DIR"]
