"""Evaluate SAEs: reconstruction / sparsity metrics over an activation cache, the spliced-model
loss (CE loss recovered, KL), and a ground-truth benchmark on synthetic superposition data.

``evaluate(sae, cache)`` -> a flat dict of metrics (see ``metrics`` and ``splice`` for the exact
definitions); ``format_summary(metrics)`` -> markdown; ``write_report`` -> JSON + markdown + PNG.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from saelens_lite.evals.metrics import ReconstructionStats, reconstruction_stats
from saelens_lite.evals.report import density_histogram, format_summary, write_report
from saelens_lite.evals.splice import EXCLUDE_CHOICES, downstream_metrics, eval_contexts

log = logging.getLogger(__name__)


def _open_data(cache_or_path, hook: str | None, sae):
    """(array-like (N, D), hook name, cache or None) from a cache, its folder or an (N, D) array."""
    from saelens_lite.cache import ActivationCache

    if isinstance(cache_or_path, (str, Path)) and Path(cache_or_path).is_dir():
        cache_or_path = ActivationCache(cache_or_path)
    if isinstance(cache_or_path, ActivationCache):
        cache = cache_or_path
        names = cache.hook_names
        hook = hook or (sae.cfg.hook_name if getattr(sae.cfg, "hook_name", "") in names else None)
        if hook is None:
            if len(names) != 1:
                raise ValueError(f"hook: the SAE's hook {getattr(sae.cfg, 'hook_name', '')!r} is not in the "
                                 f"cache; pass one of {names}")
            hook = names[0]
        return cache.activations(hook), hook, cache
    if isinstance(cache_or_path, (str, Path)):
        from saelens_lite.training.data import load_array_file

        arrays = load_array_file(cache_or_path)
        cache_or_path = next(iter(arrays.values()))
    if isinstance(cache_or_path, (np.ndarray, torch.Tensor)):
        return cache_or_path, hook or getattr(sae.cfg, "hook_name", "") or "activations", None
    raise TypeError(f"cache_or_path: expected an ActivationCache, a folder or an (N, D) array, "
                    f"got {type(cache_or_path).__name__}")


def evaluate(
    sae,
    cache_or_path,
    *,
    model=None,
    dataset: str | None = None,
    hook: str | None = None,
    n_tokens: int | None = 200_000,
    batch_size: int = 1024,
    downstream: bool = True,
    ce_contexts: int = 16,
    context_size: int | None = None,
    model_batch_size: int = 4,
    exclude: str = "special",
    dead_threshold: float = 0.0,
    dense_threshold: float = 0.1,
    device: str | torch.device = "cpu",
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate ``sae`` (an SAE, or its saved folder) and return a flat dict of metrics.

    Reconstruction metrics (``l0 mse fvu explained_variance cosine_sim l2_ratio dead_fraction
    dense_fraction``; :mod:`saelens_lite.evals.metrics`) stream the first ``n_tokens`` rows (None:
    all) of ``cache_or_path`` (an ActivationCache, its folder, an (N, D) array or file) in batches
    of ``batch_size``. With ``downstream``, ``model`` (alias / path / LoadedModel; default: the
    cache's model) runs ``ce_contexts`` packed contexts of ``dataset`` (default: the cache's
    corpus, after the contexts the cache holds) with the SAE spliced in at its hook, giving
    ``ce_loss_{clean,sae,zero} ce_loss_recovered kl_div kl_div_score`` for causal LMs or
    ``pooled_cos_*`` for encoders (:mod:`saelens_lite.evals.splice`; ``exclude`` picks the tokens
    left clean and out of the means, SAEBench's default is "special"). Downstream keys are None
    when no model is known. ``out_dir`` also writes metrics.json, summary.md and the density
    histogram.
    """
    from saelens_lite.saes import SAE

    if isinstance(sae, (str, Path)):
        sae = SAE.load(sae, device=device)
    if exclude not in EXCLUDE_CHOICES:
        raise ValueError(f"exclude={exclude!r}: choose one of {list(EXCLUDE_CHOICES)}")
    data, hook, cache = _open_data(cache_or_path, hook, sae)
    if data.shape[1] != sae.cfg.d_in:
        raise ValueError(f"hook {hook!r} has width {data.shape[1]} but the SAE reads d_in={sae.cfg.d_in}")
    was_training = getattr(sae, "training", False)
    if hasattr(sae, "eval"):
        sae.eval()
    try:
        stats = reconstruction_stats(sae, data, n_tokens=n_tokens, batch_size=batch_size, device=device,
                                     progress=progress)
        metrics = {"architecture": getattr(sae, "architecture", "") or getattr(sae.cfg, "architecture", ""),
                   "hook": hook, "d_in": int(sae.cfg.d_in), "k": getattr(sae.cfg, "k", None)}
        metrics |= stats.result(dead_threshold=dead_threshold, dense_threshold=dense_threshold)
        metrics |= dict.fromkeys(("ce_loss_clean", "ce_loss_sae", "ce_loss_zero", "ce_loss_recovered",
                                  "kl_div", "kl_div_score"))
        meta = cache.meta if cache is not None else {}
        model = model if model is not None else meta.get("model")
        if downstream and model is not None:
            last = cache.manifest.get("last_committed") if cache is not None else None
            metrics |= _downstream(sae, model, hook, meta, last, dataset=dataset, context_size=context_size,
                                   ce_contexts=ce_contexts, model_batch_size=model_batch_size,
                                   exclude=exclude, device=device, progress=progress)
        elif downstream:
            log.warning("no model given and none recorded with the activations: skipping the "
                        "spliced-model metrics")
    finally:
        if was_training:
            sae.train()
    if out_dir is not None:
        write_report(metrics, out_dir, stats.feature_density)
    return metrics


def _downstream(sae, model, hook, meta, last_committed, *, dataset, context_size, ce_contexts,
                model_batch_size, exclude, device, progress) -> dict:
    from saelens_lite.models import LoadedModel, load_model

    lm = model if isinstance(model, LoadedModel) else load_model(model, device=device)
    corpus = dataset or meta.get("corpus") or "builtin:pydocs"
    S = context_size or meta.get("context_size") or 128
    # Hold out the contexts the cache (and so, usually, the SAE's training) used: the writer
    # records the (context, position) of its last row.
    skip = 0
    if corpus == meta.get("corpus") and S == meta.get("context_size") and last_committed:
        skip = int(last_committed[0]) + 1
    contexts = eval_contexts(lm.tokenizer, corpus, S, ce_contexts, skip=skip,
                             text_column=meta.get("text_column", "text"))
    out = downstream_metrics(sae, lm, hook, contexts, batch_size=model_batch_size, exclude=exclude,
                             progress=progress)
    return {"model": lm.name, "dataset": corpus, "exclude": exclude} | out


__all__ = ["evaluate", "format_summary", "write_report", "density_histogram", "ReconstructionStats",
           "reconstruction_stats", "downstream_metrics", "eval_contexts"]
