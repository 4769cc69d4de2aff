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
from saelens_lite.lm.load import is_causal_lm
from saelens_lite.lm.losses import kl_from_reference, log_probs, next_token_ce
from saelens_lite.lm.splice import Site, ablated, splice
from saelens_lite.lm.tokens import DEFAULT_EXCLUDE, EXCLUDE_CHOICES, excluded_token_ids, keep_mask


def _batches(contexts: list[np.ndarray], size: int) -> Iterator[Tensor]:
    for i in range(0, len(contexts), size):
        yield torch.as_tensor(np.stack(contexts[i:i + size]), dtype=torch.long)


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


@torch.no_grad()
def downstream_metrics(sae, lm, hook: str, contexts: Iterable[np.ndarray], *, batch_size: int = 4,
                       exclude: str = DEFAULT_EXCLUDE, mean_D: Tensor | np.ndarray | None = None,
                       source_hook: str | None = None, progress: bool = True) -> dict[str, float]:
    """CE / KL (causal LMs) or pooled-embedding cosine (encoders) with ``sae`` spliced at ``hook``.
    ``lm`` is a :class:`~saelens_lite.lm.load.LoadedModel`. With ``mean_D`` (the hook's mean
    activation) the mean-ablated model is a second reference: ``*_mean`` keys. With
    ``source_hook`` ``sae`` is a transcoder reading that hook (module docstring). Every splice
    is removed on exit."""
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
    sums: dict[str, float] = collections.defaultdict(float)
    bar = tqdm(total=len(contexts), unit="ctx", desc="eval: spliced model", disable=not progress,
               dynamic_ncols=True)
    try:
        for ids_BS in _batches(contexts, batch_size):
            ids_BS = ids_BS.to(device)
            if causal:
                _causal_batch(model, ids_BS, keep_mask(ids_BS, excluded), refs, sums)
            else:
                _encoder_batch(model, ids_BS, refs, sums)
            bar.update(ids_BS.shape[0])
    finally:
        bar.close()
    return _causal_result(sums, refs) if causal else _encoder_result(sums, refs)


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


def _causal_batch(model, ids_BS, keep_BS, refs, sums) -> None:
    ce_mask = keep_BS[:, :-1]

    def ce(logits_BSV: Tensor) -> float:
        return float(next_token_ce(logits_BSV, ids_BS, torch.float64)[ce_mask].sum())

    logits = model(input_ids=ids_BS).logits
    logp_clean = log_probs(logits, torch.float64)
    sums["ce_clean"] += ce(logits)
    for name, ref in refs.items():
        with ref():
            new = model(input_ids=ids_BS).logits
        sums[f"ce_{name}"] += ce(new)
        sums[f"kl_{name}"] += float(kl_from_reference(logp_clean, new)[keep_BS].sum())
    sums["n_ce"] += int(ce_mask.sum())
    sums["n_kl"] += int(keep_BS.sum())


def _encoder_batch(model, ids_BS, refs, sums) -> None:
    attn_BS = torch.ones_like(ids_BS)

    def pooled() -> Tensor:  # sentence-transformers mean pooling
        h_BSD = model(input_ids=ids_BS, attention_mask=attn_BS)[0].double()
        m = attn_BS[..., None].double()
        return (h_BSD * m).sum(1) / m.sum(1).clamp_min(1e-9)

    clean_BD = pooled()
    for name, ref in refs.items():
        with ref():
            new_BD = pooled()
        sums[f"cos_{name}"] += float(F.cosine_similarity(clean_BD, new_BD, dim=-1).sum())
    sums["n_ctx"] += ids_BS.shape[0]


__all__ = ["downstream_metrics", "EXCLUDE_CHOICES"]
