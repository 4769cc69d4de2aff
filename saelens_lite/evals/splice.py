"""Downstream metrics: the model with the SAE's reconstruction spliced in at its hook.

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

Encoder models (BERT / MiniLM) have no LM head; the analogue is the sentence embedding that
sentence-transformers builds, the attention-masked mean of the last hidden state:
``pooled_cos_sae`` = mean over contexts of cos(pool_clean, pool_spliced), ``pooled_cos_zero``
the same with zero-ablation, ``pooled_cos_recovered = (cos_sae - cos_zero) / (1 - cos_zero)``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saelens_lite.hooks import resolve_hooks, splice

log = logging.getLogger(__name__)

EXCLUDE_CHOICES = ("special", "bos", "none")


def ignore_token_ids(tokenizer, exclude: str = "special") -> set[int]:
    """Token ids whose positions keep their clean activation and are left out of the means."""
    if exclude not in EXCLUDE_CHOICES:
        raise ValueError(f"exclude={exclude!r}: choose one of {list(EXCLUDE_CHOICES)}")
    if exclude == "none":
        return set()
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    ids = {bos}
    if exclude == "special":
        ids |= {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.sep_token_id}
    return {int(i) for i in ids if i is not None}


def eval_contexts(tokenizer, dataset: str, context_size: int, n_contexts: int, *, skip: int = 0,
                  text_column: str = "text") -> list[np.ndarray]:
    """``n_contexts`` full-length packed contexts of ``dataset``, after the first ``skip`` (e.g. the
    contexts an activation cache was harvested from, so the CE eval is held out). Falls back to
    the start of the corpus, with a warning, when it is too short for that."""
    from saelens_lite.corpus import iter_documents, pack_contexts

    def full(start: int) -> list[np.ndarray]:
        ctxs = pack_contexts(iter_documents(dataset, text_column=text_column), tokenizer, context_size)
        ctxs = (c for c in ctxs if len(c) == context_size)
        return list(itertools.islice(ctxs, start, start + n_contexts))

    out = full(skip)
    if len(out) < n_contexts and skip:
        log.warning("dataset %s has fewer than %d contexts after the %d cached ones; evaluating the "
                    "downstream loss on contexts the SAE was trained on", dataset, n_contexts, skip)
        out = full(0)
    if not out:
        raise ValueError(f"dataset={dataset!r} gives no context of {context_size} tokens")
    if len(out) < n_contexts:
        log.warning("dataset %s gives only %d contexts of %d tokens", dataset, len(out), context_size)
    return out


def is_causal_lm(model) -> bool:
    get = getattr(model, "get_output_embeddings", None)
    return get is not None and get() is not None


class _Replace:
    """The splice function: SAE reconstruction (or zeros) where ``keep_BS``, clean elsewhere."""

    def __init__(self, sae, mode: str):
        self.sae, self.mode = sae, mode
        self.keep_BS: Tensor | None = None

    def __call__(self, act_BSD: Tensor) -> Tensor:
        if self.mode == "zero":
            return torch.zeros_like(act_BSD)
        D = act_BSD.shape[-1]
        if D != self.sae.cfg.d_in:
            raise ValueError(f"the SAE reads width d_in={self.sae.cfg.d_in} but the hook gives {D}")
        x_hat = self.sae.decode(self.sae.encode(act_BSD.reshape(-1, D).float()))
        x_hat_BSD = x_hat.reshape(act_BSD.shape).to(act_BSD.dtype)
        return torch.where(self.keep_BS[..., None], x_hat_BSD, act_BSD)


def _batches(contexts: list[np.ndarray], size: int) -> Iterator[Tensor]:
    for i in range(0, len(contexts), size):
        yield torch.as_tensor(np.stack(contexts[i:i + size]), dtype=torch.long)


def _kl_BS(logp_clean: Tensor, logits_new: Tensor) -> Tensor:
    logp_new = F.log_softmax(logits_new.double(), dim=-1)
    return (logp_clean.exp() * (logp_clean - logp_new)).sum(-1)


@torch.no_grad()
def downstream_metrics(sae, lm, hook: str, contexts: Iterable[np.ndarray], *, batch_size: int = 4,
                       exclude: str = "special", progress: bool = True) -> dict[str, float]:
    """CE / KL (causal LMs) or pooled-embedding cosine (encoders) with ``sae`` spliced at ``hook``.
    ``lm`` is a :class:`~saelens_lite.models.LoadedModel`. Every splice is removed on exit."""
    from tqdm.auto import tqdm

    model = lm.model
    (point,) = resolve_hooks(model, [hook])
    device = next(model.parameters()).device
    ignore = torch.tensor(sorted(ignore_token_ids(lm.tokenizer, exclude)), dtype=torch.long)
    contexts = list(contexts)
    causal = is_causal_lm(model)
    sae_fn, zero_fn = _Replace(sae, "sae"), _Replace(sae, "zero")
    sums = dict.fromkeys(("ce_clean", "ce_sae", "ce_zero", "n_ce", "kl_sae", "kl_zero", "n_kl",
                          "cos_sae", "cos_zero", "n_ctx"), 0.0)
    bar = tqdm(total=len(contexts), unit="ctx", desc="eval: spliced model", disable=not progress,
               dynamic_ncols=True)
    try:
        for ids_BS in _batches(contexts, batch_size):
            ids_BS = ids_BS.to(device)
            keep_BS = ~torch.isin(ids_BS, ignore.to(device))
            sae_fn.keep_BS = keep_BS
            if causal:
                _causal_batch(model, point, ids_BS, keep_BS, sae_fn, zero_fn, sums)
            else:
                _encoder_batch(model, point, ids_BS, sae_fn, zero_fn, sums)
            bar.update(ids_BS.shape[0])
    finally:
        bar.close()
    if causal:
        n_ce, n_kl = max(sums["n_ce"], 1), max(sums["n_kl"], 1)
        ce_clean, ce_sae, ce_zero = sums["ce_clean"] / n_ce, sums["ce_sae"] / n_ce, sums["ce_zero"] / n_ce
        kl_sae, kl_zero = sums["kl_sae"] / n_kl, sums["kl_zero"] / n_kl
        return {
            "ce_loss_clean": ce_clean, "ce_loss_sae": ce_sae, "ce_loss_zero": ce_zero,
            "ce_loss_delta": ce_sae - ce_clean,
            "ce_loss_recovered": (ce_zero - ce_sae) / (ce_zero - ce_clean) if ce_zero != ce_clean else float("nan"),
            "kl_div": kl_sae, "kl_div_zero": kl_zero,
            "kl_div_score": (kl_zero - kl_sae) / kl_zero if kl_zero else float("nan"),
            "downstream_tokens": int(sums["n_ce"]),
        }
    n = max(sums["n_ctx"], 1)
    cos_sae, cos_zero = sums["cos_sae"] / n, sums["cos_zero"] / n
    return {
        "pooled_cos_sae": cos_sae, "pooled_cos_zero": cos_zero,
        "pooled_cos_recovered": (cos_sae - cos_zero) / (1 - cos_zero) if cos_zero != 1 else float("nan"),
        "downstream_contexts": int(sums["n_ctx"]),
    }


def _causal_batch(model, point, ids_BS, keep_BS, sae_fn, zero_fn, sums) -> None:
    targets = ids_BS[:, 1:].reshape(-1)
    ce_mask = keep_BS[:, :-1].reshape(-1)

    def ce(logits_BSV: Tensor) -> float:
        V = logits_BSV.shape[-1]
        loss = F.cross_entropy(logits_BSV[:, :-1].reshape(-1, V).double(), targets, reduction="none")
        return float(loss[ce_mask].sum())

    logits = model(input_ids=ids_BS).logits
    logp_clean = F.log_softmax(logits.double(), dim=-1)
    sums["ce_clean"] += ce(logits)
    for name, fn in (("sae", sae_fn), ("zero", zero_fn)):
        with splice(model, point, fn):
            new = model(input_ids=ids_BS).logits
        sums[f"ce_{name}"] += ce(new)
        sums[f"kl_{name}"] += float(_kl_BS(logp_clean, new)[keep_BS].sum())
    sums["n_ce"] += int(ce_mask.sum())
    sums["n_kl"] += int(keep_BS.sum())


def _encoder_batch(model, point, ids_BS, sae_fn, zero_fn, sums) -> None:
    attn_BS = torch.ones_like(ids_BS)

    def pooled() -> Tensor:  # sentence-transformers mean pooling
        h_BSD = model(input_ids=ids_BS, attention_mask=attn_BS)[0].double()
        m = attn_BS[..., None].double()
        return (h_BSD * m).sum(1) / m.sum(1).clamp_min(1e-9)

    clean_BD = pooled()
    for name, fn in (("sae", sae_fn), ("zero", zero_fn)):
        with splice(model, point, fn):
            new_BD = pooled()
        sums[f"cos_{name}"] += float(F.cosine_similarity(clean_BD, new_BD, dim=-1).sum())
    sums["n_ctx"] += ids_BS.shape[0]


__all__ = ["downstream_metrics", "eval_contexts", "ignore_token_ids", "is_causal_lm", "EXCLUDE_CHOICES"]
