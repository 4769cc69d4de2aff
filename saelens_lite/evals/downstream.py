"""Downstream metrics: the model with the SAE's reconstruction spliced in at its hook.

The splice and the zero / mean ablations are those of :mod:`saelens_lite.lm.splice` (the one
splice, shared with the interventions); this module scores them. The evaluation contexts come
from :mod:`saelens_lite.evals.heldout`.

Shape legend: B contexts, S sequence, D model width, V vocabulary.

Causal LMs (definitions of SAEBench core ``get_downstream_reconstruction_metrics`` /
``get_recons_loss``, which follow SAELens ``evals.py``):

* three forwards per batch: clean, spliced (the hook's activation replaced by
  ``decode(encode(x))``) and zero-ablated (the activation replaced by 0 at every position);
* special tokens are *not* spliced: at positions whose input token is in the ignore set the
  clean activation is kept (SAEBench ``exclude_special_tokens_from_reconstruction=True`` with
  ``ignore_tokens = {bos, eos, pad}``; ``exclude="bos"`` keeps only BOS, ``"none"`` nothing).
  Zero-ablation ignores the mask and zeroes every position, as in SAEBench;
* ``ce_loss_*``: mean next-token cross-entropy over the positions t < S-1 whose input token
  is not ignored (the loss *predicted from* BOS is dropped, SAEBench's ``mask[:, :-1]``);
* ``kl_div``: mean over non-ignored positions of KL(p_clean || p_spliced) in nats,
  ``kl_div_zero`` the same for zero-ablation;
* ``ce_loss_recovered = (ce_zero - ce_sae) / (ce_zero - ce_clean)`` (SAEBench
  ``ce_loss_score``), ``kl_div_score = (kl_zero - kl_sae) / kl_zero``.

All means are token-weighted over every evaluated context (float64 sums).
:func:`downstream_by_context` also returns each context c's sums (``ce_clean[c]``,
``n_ce[c]``, ...), whose totals give the same means, so that one pass yields both the means and
their spread over contexts: with the contexts as the independent units, the CE gap's standard
error (:func:`ce_gap_se`) is ``sd_c(g_c) / sqrt(C)`` over the C per-context gaps
``g_c = (ce_sae[c] - ce_clean[c]) / n_ce[c]`` (a paired estimate: both losses on the same tokens).

Transcoders (``source_hook`` given, e.g. ``blocks.9.hook_mlp_in`` for a coder of
``blocks.9.hook_mlp_out``): the spliced activation at ``hook`` is the transcoder's output
``sae(x_src)`` of the source activation in the same forward (``lm.splice``: a ``Site`` reading
the source and writing ``hook``), i.e. the MLP is replaced by the transcoder; zero-ablation zeroes the MLP output, mean-ablation puts the
mean MLP output. Excluded positions keep the clean MLP output, as for SAEs.

Encoder models (BERT / MiniLM) have no LM head; the analogue is the sentence embedding that
sentence-transformers builds, the attention-masked mean of the last hidden state:
``pooled_cos_sae`` = mean over contexts of cos(pool_clean, pool_spliced), ``pooled_cos_zero``
the same with zero-ablation, ``pooled_cos_recovered = (cos_sae - cos_zero) / (1 - cos_zero)``.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saelens_lite.lm.hooks import resolve_hooks
from saelens_lite.lm.layout import is_causal_lm
from saelens_lite.lm.losses import kl_from_reference, log_probs, next_token_ce
from saelens_lite.lm.splice import Site, ablated, splice
from saelens_lite.lm.tokens import DEFAULT_EXCLUDE, EXCLUDE_CHOICES, excluded_token_ids, keep_mask


def _batches(contexts: list[np.ndarray], size: int) -> Iterator[Tensor]:
    for i in range(0, len(contexts), size):
        yield torch.as_tensor(np.stack(contexts[i:i + size]), dtype=torch.long)


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def downstream_metrics(sae, lm, hook: str, contexts: Iterable[np.ndarray], *, batch_size: int = 4,
                       exclude: str = DEFAULT_EXCLUDE, mean_D: Tensor | np.ndarray | None = None,
                       source_hook: str | None = None, progress: bool = True) -> dict[str, float]:
    """CE / KL (causal LMs) or pooled-embedding cosine (encoders) with ``sae`` spliced at ``hook``.
    ``lm`` is a :class:`~saelens_lite.lm.load.LoadedModel`. With ``mean_D`` (the hook's mean
    activation) the mean-ablated model is a second reference: ``*_mean`` keys. With
    ``source_hook`` ``sae`` is a transcoder reading that hook (module docstring). Every splice
    is removed on exit."""
    return downstream_by_context(sae, lm, hook, contexts, batch_size=batch_size, exclude=exclude,
                                 mean_D=mean_D, source_hook=source_hook, progress=progress)[0]


@torch.no_grad()
def downstream_by_context(sae, lm, hook: str, contexts: Iterable[np.ndarray], *, batch_size: int = 4,
                          exclude: str = DEFAULT_EXCLUDE, mean_D: Tensor | np.ndarray | None = None,
                          source_hook: str | None = None,
                          progress: bool = True) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(:func:`downstream_metrics`'s result, the per-context sums) from one pass over
    ``contexts``. The sums are float64 (C,) arrays in the contexts' order: causal LMs
    ``ce_clean``, ``ce_<ref>``, ``kl_<ref>`` (summed next-token CE / KL over the scored
    positions) and the counts ``n_ce``, ``n_kl``; encoders ``cos_<ref>`` and ``n_ctx`` (1 each);
    ``<ref>`` is ``sae``, ``zero`` and, with ``mean_D``, ``mean``. Summed over the contexts they
    give the result's means (``ce_loss_sae = sum(ce_sae) / sum(n_ce)``, ...)."""
    from tqdm.auto import tqdm

    model = lm.model
    resolve_hooks(model, [hook] + ([source_hook] if source_hook else []))  # a bad name fails first
    device = next(model.parameters()).device
    excluded = excluded_token_ids(lm.tokenizer, exclude)
    contexts = list(contexts)
    causal = is_causal_lm(model)
    if mean_D is not None:
        mean_D = torch.as_tensor(np.asarray(mean_D), dtype=torch.float32).to(device)
    refs = _references(model, Site(sae, source_hook or hook, hook), excluded, mean_D)
    rows: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    bar = tqdm(total=len(contexts), unit="ctx", desc="eval: spliced model", disable=not progress,
               dynamic_ncols=True)
    try:
        for ids_BS in _batches(contexts, batch_size):
            ids_BS = ids_BS.to(device)
            if causal:
                _causal_batch(model, ids_BS, keep_mask(ids_BS, excluded), refs, rows)
            else:
                _encoder_batch(model, ids_BS, refs, rows)
            bar.update(ids_BS.shape[0])
    finally:
        bar.close()
    per_context = {k: np.concatenate(v) for k, v in rows.items()}
    sums = collections.defaultdict(float, {k: float(v.sum()) for k, v in per_context.items()})
    return (_causal_result(sums, refs) if causal else _encoder_result(sums, refs)), per_context


def ce_gap_by_context(per_context: dict[str, np.ndarray]) -> np.ndarray:
    """(C,) g_c = (ce_sae[c] - ce_clean[c]) / n_ce[c]: each context's CE gap, its scored tokens
    weighted equally (a context with no scored token gets 0)."""
    return (per_context["ce_sae"] - per_context["ce_clean"]) / np.maximum(per_context["n_ce"], 1)


def ce_gap_se(per_context: dict[str, np.ndarray]) -> float:
    """sd_c(g_c) / sqrt(C) over the C contexts' gaps :func:`ce_gap_by_context` (sample sd, n - 1
    in the denominator; 0 for one context): the standard error of the mean per-context gap with
    the contexts as the independent units."""
    g_C = ce_gap_by_context(per_context)
    return float(g_C.std(ddof=1) / np.sqrt(len(g_C))) if len(g_C) > 1 else 0.0


def _references(model, site: Site, excluded: set[int], mean_D: Tensor | None) -> dict[str, Callable]:
    """{name: () -> context manager}: the coder spliced without its error term (``sae``), the
    zero ablation of the written hook (``zero``) and, with ``mean_D``, its mean ablation."""
    refs = {"sae": lambda: splice(model, [site], excluded=excluded, keep_error=False),
            "zero": lambda: ablated(model, site.target)}
    if mean_D is not None:
        refs["mean"] = lambda: ablated(model, site.target, mean_D, excluded=excluded)
    return refs


def _causal_result(sums: dict, fns: dict) -> dict[str, float]:
    n_ce, n_kl = max(sums["n_ce"], 1), max(sums["n_kl"], 1)
    ce = {name: sums[f"ce_{name}"] / n_ce for name in ("clean", *fns)}
    kl = {name: sums[f"kl_{name}"] / n_kl for name in fns}
    out = {
        "ce_loss_clean": ce["clean"], "ce_loss_sae": ce["sae"], "ce_loss_zero": ce["zero"],
        "ce_loss_delta": ce["sae"] - ce["clean"],
        "ce_loss_recovered": _ratio(ce["zero"] - ce["sae"], ce["zero"] - ce["clean"]),
        "kl_div": kl["sae"], "kl_div_zero": kl["zero"],
        "kl_div_score": _ratio(kl["zero"] - kl["sae"], kl["zero"]),
        "downstream_tokens": int(sums["n_ce"]),
    }
    if "mean" in fns:
        out |= {"ce_loss_mean": ce["mean"], "kl_div_mean": kl["mean"],
                "ce_loss_recovered_mean": _ratio(ce["mean"] - ce["sae"], ce["mean"] - ce["clean"]),
                "kl_div_score_mean": _ratio(kl["mean"] - kl["sae"], kl["mean"])}
    return out


def _encoder_result(sums: dict, fns: dict) -> dict[str, float]:
    n = max(sums["n_ctx"], 1)
    cos = {name: sums[f"cos_{name}"] / n for name in fns}
    out = {
        "pooled_cos_sae": cos["sae"], "pooled_cos_zero": cos["zero"],
        "pooled_cos_recovered": _ratio(cos["sae"] - cos["zero"], 1 - cos["zero"]),
        "downstream_contexts": int(sums["n_ctx"]),
    }
    if "mean" in fns:
        out |= {"pooled_cos_mean": cos["mean"],
                "pooled_cos_recovered_mean": _ratio(cos["sae"] - cos["mean"], 1 - cos["mean"])}
    return out


def _add(rows: dict, key: str, v_BT: Tensor, mask_BT: Tensor) -> None:
    """rows[key] gets each context's masked total (B,), in float64."""
    rows[key].append(torch.where(mask_BT, v_BT, 0).sum(1).double().cpu().numpy())


def _causal_batch(model, ids_BS, keep_BS, refs, rows) -> None:
    ce_mask = keep_BS[:, :-1]
    logits = model(input_ids=ids_BS).logits
    logp_clean = log_probs(logits, torch.float64)
    _add(rows, "ce_clean", next_token_ce(logits, ids_BS, torch.float64), ce_mask)
    for name, ref in refs.items():
        with ref():
            new = model(input_ids=ids_BS).logits
        _add(rows, f"ce_{name}", next_token_ce(new, ids_BS, torch.float64), ce_mask)
        _add(rows, f"kl_{name}", kl_from_reference(logp_clean, new), keep_BS)
    _add(rows, "n_ce", ce_mask.double(), ce_mask)
    _add(rows, "n_kl", keep_BS.double(), keep_BS)


def _encoder_batch(model, ids_BS, refs, rows) -> None:
    attn_BS = torch.ones_like(ids_BS)

    def pooled() -> Tensor:  # sentence-transformers mean pooling
        h_BSD = model(input_ids=ids_BS, attention_mask=attn_BS)[0].double()
        m = attn_BS[..., None].double()
        return (h_BSD * m).sum(1) / m.sum(1).clamp_min(1e-9)

    clean_BD = pooled()
    for name, ref in refs.items():
        with ref():
            new_BD = pooled()
        rows[f"cos_{name}"].append(F.cosine_similarity(clean_BD, new_BD, dim=-1).double().cpu().numpy())
    rows["n_ctx"].append(np.ones(ids_BS.shape[0]))


__all__ = ["downstream_metrics", "downstream_by_context", "ce_gap_by_context", "ce_gap_se", "EXCLUDE_CHOICES"]
