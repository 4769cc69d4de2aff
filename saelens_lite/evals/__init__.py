"""Evaluate SAEs: reconstruction / sparsity metrics over an activation cache, the spliced-model
loss (CE loss recovered, KL), and a ground-truth benchmark on synthetic superposition data.

A transcoder (``sae.cfg.target_hook`` set, e.g. ``blocks.9.hook_mlp_in -> blocks.9.hook_mlp_out``)
is scored on its target: FVU etc. of the MLP output from the input rows of the same tokens, and
the spliced model has the MLP replaced by the transcoder (``downstream``, through ``lm.splice``).

``evaluate(sae, cache)`` -> a flat dict of metrics (see ``metrics`` and ``downstream`` for the exact
definitions); ``format_summary(metrics)`` -> markdown; ``write_report`` -> JSON + markdown + PNG.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from saelens_lite.evals.downstream import downstream_metrics
from saelens_lite.evals.heldout import (
    EvalContexts,
    contexts_for_tokens,
    eval_contexts,
    heldout_contexts,
    heldout_rows,
    heldout_rows_of,
)
from saelens_lite.evals.metrics import ReconstructionStats, reconstruction_stats
from saelens_lite.evals.report import density_histogram, format_summary, write_report
from saelens_lite.lm.hooks import is_mlp_pair, warn_if_other_hook
from saelens_lite.lm.tokens import DEFAULT_EXCLUDE, check_exclude, excluded_token_ids, keep_mask

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


def _target_data(sae, hook: str, cache):
    """A transcoder's (target hook, its rows in the cache) or None for an SAE; both hooks of
    the same cache, so row n of each is the same token."""
    target = getattr(sae.cfg, "target_hook", "") or ""
    if not target:
        return None
    if cache is None:
        raise ValueError(f"transcoder {hook} -> {target}: evaluate it on an activation cache that holds "
                         "both hooks (harvest --hooks with both), not on a bare array")
    if target not in cache.hook_names:
        raise ValueError(f"transcoder {hook} -> {target}: the cache {cache.path} lacks the target hook "
                         f"{target!r} (it holds {cache.hook_names}); harvest both into one cache")
    return target, cache.activations(target)


def transcoder_label(hook: str, target: str) -> str:
    """``transcoder A -> B (replaces the MLP)`` when A, B are one block's MLP input and output."""
    how = "replaces the MLP" if is_mlp_pair(hook, target) else f"output spliced at {target}"
    return f"transcoder {hook} -> {target} ({how})"


def evaluate(
    sae,
    cache_or_path,
    *,
    model=None,
    dataset: str | None = None,
    hook: str | None = None,
    heldout_tokens: int | None = 16_384,
    n_tokens: int | None = 200_000,
    in_sample: bool = True,
    batch_size: int = 1024,
    downstream: bool = True,
    ce_contexts: int = 16,
    context_size: int | None = None,
    model_batch_size: int = 4,
    exclude: str = DEFAULT_EXCLUDE,
    dead_threshold: float = 0.0,
    dense_threshold: float = 0.1,
    device: str | torch.device = "cpu",
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate ``sae`` (an SAE, or its saved folder) and return a flat dict of metrics.

    Where each number is measured (``reconstruction_split`` / ``reconstruction_source`` say it):

    * Reconstruction metrics (``l0 mse fvu fvu_typical explained_variance cosine_sim l2_ratio
      dead_fraction dense_fraction``; :mod:`saelens_lite.evals.metrics`) are **held out** when a
      model is known (``model``, default: the cache's): the hook's activations on
      ``heldout_tokens`` tokens of the contexts after the cache's last one (same corpus and
      context size, so no cached row, and so no training row of an SAE trained on the cache).
      If the corpus has no context left they fall back to the cache's own contexts and say so
      (``reconstruction_split="in-sample"``).
    * ``in_sample_*``: the same metrics over the first ``n_tokens`` rows (None: all) of
      ``cache_or_path`` (an ActivationCache, its folder, an (N, D) array or file), the SAE's
      training data when it was trained on that cache. Without a model these are the only
      reconstruction metrics and take the unprefixed keys (split "in-sample", or "given rows"
      for an array, whose overlap with the training data is unknown).
    * With ``downstream``, the model runs the first ``ce_contexts`` held-out contexts with the
      SAE spliced in at its hook: ``ce_loss_{clean,sae,zero,mean} ce_loss_recovered
      ce_loss_recovered_mean kl_div kl_div_score ...`` for causal LMs, ``pooled_cos_*`` for
      encoders (:mod:`saelens_lite.evals.downstream`). The mean ablation uses the mean activation
      of the in-sample rows (else the held-out rows).

    ``exclude`` is the one token rule (:mod:`saelens_lite.lm.tokens`) for every metric: those
    tokens are left out of the reconstruction rows, kept clean in the spliced model and out of
    its means. ``hook`` defaults to the SAE's; another one of the same width is evaluated with a
    warning. ``out_dir`` also writes metrics.json, summary.md and the density histogram.
    """
    from saelens_lite.saes import SAE

    if isinstance(sae, (str, Path)):
        sae = SAE.load(sae, device=device)
    check_exclude(exclude)
    data, hook, cache = _open_data(cache_or_path, hook, sae)
    if data.shape[1] != sae.cfg.d_in:
        raise ValueError(f"hook {hook!r} has width {data.shape[1]} but the SAE reads d_in={sae.cfg.d_in}")
    warn_if_other_hook(sae, hook, "evaluated")
    target = _target_data(sae, hook, cache)
    meta = cache.meta if cache is not None else {}
    model = model if model is not None else meta.get("model")
    lm = _load_lm(model, device) if model is not None and (downstream or heldout_tokens) else None
    if lm is None and (downstream or heldout_tokens):
        log.warning("no model given and none recorded with the activations: the reconstruction "
                    "metrics are in-sample and the spliced-model metrics are skipped")
    was_training = getattr(sae, "training", False)
    if hasattr(sae, "eval"):
        sae.eval()
    try:
        metrics, density = _all_metrics(
            sae, data, hook, cache, lm, target=target, dataset=dataset, heldout_tokens=heldout_tokens, n_tokens=n_tokens,
            in_sample=in_sample, batch_size=batch_size, downstream=downstream, ce_contexts=ce_contexts,
            context_size=context_size, model_batch_size=model_batch_size, exclude=exclude,
            thresholds={"dead_threshold": dead_threshold, "dense_threshold": dense_threshold},
            device=device, progress=progress)
    finally:
        if was_training:
            sae.train()
    if out_dir is not None:
        write_report(metrics, out_dir, density)
    return metrics


def _load_lm(model, device):
    from saelens_lite.lm.load import LoadedModel, load_model

    return model if isinstance(model, LoadedModel) else load_model(model, device=device)


def _all_metrics(sae, data, hook, cache, lm, *, target, dataset, heldout_tokens, n_tokens, in_sample, batch_size,
                 downstream, ce_contexts, context_size, model_batch_size, exclude, thresholds, device,
                 progress) -> tuple[dict, np.ndarray | None]:
    metrics = {"architecture": getattr(sae, "architecture", "") or getattr(sae.cfg, "architecture", ""),
               "hook": hook, "d_in": int(sae.cfg.d_in), "d_sae": int(sae.cfg.d_sae),
               "k": getattr(sae.cfg, "k", None), "exclude": exclude}
    t_hook, t_data = target if target is not None else (None, None)
    if t_hook:
        skip = " with a linear skip connection" if getattr(sae.cfg, "skip", False) else ""
        metrics |= {"target_hook": t_hook, "transcoder": transcoder_label(hook, t_hook) + skip}
    ctx = None
    if lm is not None:
        n_ctx = max(ce_contexts if downstream else 0,
                    contexts_for_tokens(heldout_tokens, _context_size(cache, context_size)) if heldout_tokens else 0)
        ctx = _eval_contexts(lm, cache, dataset, context_size, n_ctx)
        metrics |= {"model": lm.name, "dataset": ctx.dataset}
    stats_in = None
    if in_sample or ctx is None or not heldout_tokens:
        keep_N = _cache_keep(cache, lm, exclude, n_tokens)
        stats_in = reconstruction_stats(sae, data, n_tokens=n_tokens, keep_N=keep_N, batch_size=batch_size,
                                        device=device, progress=progress, desc="eval: in-sample rows",
                                        targets=t_data)
    stats_out = None
    if ctx is not None and heldout_tokens:
        rows = heldout_rows_of(lm, [hook] + ([t_hook] if t_hook else []), ctx.contexts, n_tokens=heldout_tokens,
                               exclude=exclude, batch_size=model_batch_size, progress=progress)
        stats_out = reconstruction_stats(sae, rows[hook], batch_size=batch_size, device=device, progress=progress,
                                         desc="eval: held-out rows", targets=rows.get(t_hook))
    metrics |= _reconstruction_keys(stats_out, stats_in, ctx, cache, thresholds)
    metrics |= dict.fromkeys(("ce_loss_clean", "ce_loss_sae", "ce_loss_zero", "ce_loss_recovered",
                              "kl_div", "kl_div_score"))
    if downstream and ctx is not None:
        mean_D = (stats_in or stats_out).every.mean_D
        out = downstream_metrics(sae, lm, t_hook or hook, ctx.contexts[:ce_contexts], batch_size=model_batch_size,
                                 exclude=exclude, mean_D=mean_D, source_hook=hook if t_hook else None,
                                 progress=progress)
        metrics |= out | {"downstream_source": ctx.describe(ce_contexts),
                          "mean_ablation_source": "in-sample rows" if stats_in is not None else "held-out rows"}
    density_stats = stats_in or stats_out
    return metrics, density_stats.feature_density if density_stats is not None else None


def _context_size(cache, context_size) -> int:
    return context_size or (cache.meta.get("context_size") if cache is not None else None) or 128


def _eval_contexts(lm, cache, dataset, context_size, n_ctx) -> EvalContexts:
    """Contexts after the cache's (held out) when they come from the cache's corpus and size."""
    meta = cache.meta if cache is not None else {}
    corpus = dataset or meta.get("corpus") or "builtin:pydocs"
    S = _context_size(cache, context_size)
    last = cache.manifest.get("last_committed") if cache is not None else None
    same = corpus == meta.get("corpus") and S == meta.get("context_size")
    skip = int(last[0]) + 1 if same and last else 0
    ctx = heldout_contexts(lm.tokenizer, corpus, S, max(n_ctx, 1), skip=skip,
                           text_column=meta.get("text_column", "text"))
    if cache is None:
        ctx.heldout = None  # no cache: overlap with the SAE's training data is unknown
    return ctx


def _cache_keep(cache, lm, exclude: str, n_tokens: int | None) -> np.ndarray | None:
    """The token rule on the cache's stored ids (a cache written with a narrower rule still
    gets the same rows left out as the held-out set)."""
    if cache is None:
        return None
    tok = lm.tokenizer if lm is not None else cache.meta.get("tokenizer", {})
    excluded = excluded_token_ids(tok, exclude)
    ids = cache.token_ids
    n = len(ids) if n_tokens is None else min(int(n_tokens), len(ids))
    keep = keep_mask(np.asarray(ids[:n]), excluded)
    return None if keep.all() else keep


def _reconstruction_keys(stats_out, stats_in, ctx, cache, thresholds) -> dict:
    if stats_out is not None:
        out = {"reconstruction_split": ctx.split,
               "reconstruction_source": f"{stats_out.n:,} tokens of {ctx.describe()}"}
        out |= stats_out.result(**thresholds)
        if stats_in is not None:
            out |= {f"in_sample_{k}": v for k, v in stats_in.result(**thresholds).items()}
            out["in_sample_source"] = _in_sample_source(cache, stats_in.n)
        return out
    split = "in-sample" if cache is not None else "given rows"
    return {"reconstruction_split": split, "reconstruction_source": _in_sample_source(cache, stats_in.n)} \
        | stats_in.result(**thresholds)


def _in_sample_source(cache, n: int) -> str:
    if cache is None:
        return f"{n:,} given rows (overlap with the training data unknown)"
    return f"{n:,} rows of the activation cache {cache.path} (the training data of an SAE trained on it)"


__all__ = ["evaluate", "format_summary", "write_report", "density_histogram", "ReconstructionStats",
           "reconstruction_stats", "downstream_metrics", "eval_contexts", "heldout_contexts", "heldout_rows"]
