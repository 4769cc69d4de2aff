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

Transcoders (``source_hook`` given, e.g. ``blocks.9.hook_mlp_in`` for a coder of
``blocks.9.hook_mlp_out``): the spliced activation at ``hook`` is the transcoder's output
``sae(x_src)`` of the source activation in the same forward (``hooks.splice_from``), i.e. the
MLP is replaced by the transcoder; zero-ablation zeroes the MLP output, mean-ablation puts the
mean MLP output. Excluded positions keep the clean MLP output, as for SAEs.

Encoder models (BERT / MiniLM) have no LM head; the analogue is the sentence embedding that
sentence-transformers builds, the attention-masked mean of the last hidden state:
``pooled_cos_sae`` = mean over contexts of cos(pool_clean, pool_spliced), ``pooled_cos_zero``
the same with zero-ablation, ``pooled_cos_recovered = (cos_sae - cos_zero) / (1 - cos_zero)``.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saelens_lite.lm.hooks import resolve_hooks, splice, splice_from
from saelens_lite.lm.tokens import DEFAULT_EXCLUDE, EXCLUDE_CHOICES, excluded_token_ids, keep_mask

log = logging.getLogger(__name__)


@dataclass
class EvalContexts:
    """Packed contexts for an evaluation, and where they come from."""

    contexts: list[np.ndarray]
    dataset: str
    first: int
    """Index of the first one among the corpus's full-length packed contexts."""
    heldout: bool | None
    """False when they overlap the contexts an activation cache holds (the corpus ran out);
    None when no cache was given, so the overlap with the SAE's training data is unknown."""

    @property
    def split(self) -> str:
        return {True: "held-out", False: "in-sample", None: "unknown"}[self.heldout]

    def describe(self, n: int | None = None) -> str:
        """Where the first ``n`` (None: all) of these contexts come from."""
        n = len(self.contexts) if n is None else min(n, len(self.contexts))
        where = {True: "held out: after the cache's contexts", False: "IN-SAMPLE: the cache's own contexts",
                 None: "no cache given: overlap with the training data unknown"}[self.heldout]
        return f"contexts {self.first}-{self.first + n - 1} of {self.dataset} ({where})"


def heldout_contexts(tokenizer, dataset: str, context_size: int, n_contexts: int, *, skip: int = 0,
                     text_column: str = "text") -> EvalContexts:
    """Up to ``n_contexts`` full-length packed contexts of ``dataset`` after the first ``skip``
    (the contexts an activation cache was harvested from, so the evaluation is held out). When
    the corpus has fewer left, uses those with a warning; when it has none left, falls back to
    its start and says (``heldout=False``) that these are the SAE's training contexts."""
    from saelens_lite.corpus.text import iter_documents, pack_contexts

    def full(start: int) -> list[np.ndarray]:
        ctxs = pack_contexts(iter_documents(dataset, text_column=text_column), tokenizer, context_size)
        ctxs = (c for c in ctxs if len(c) == context_size)
        return list(itertools.islice(ctxs, start, start + n_contexts))

    out, first, heldout = full(skip), skip, True
    if not out and skip:
        log.warning("dataset %s has no context left after the %d cached ones: evaluating on the "
                    "cache's own contexts (in-sample); pass another dataset for a held-out figure",
                    dataset, skip)
        out, first, heldout = full(0), 0, False
    if not out:
        raise ValueError(f"dataset={dataset!r} gives no context of {context_size} tokens")
    if len(out) < n_contexts:
        log.warning("dataset %s gives only %d contexts of %d tokens%s (asked for %d)", dataset, len(out),
                    context_size, f" after the {skip} cached ones" if heldout and skip else "", n_contexts)
    return EvalContexts(out, dataset, first, heldout)


def eval_contexts(tokenizer, dataset: str, context_size: int, n_contexts: int, *, skip: int = 0,
                  text_column: str = "text") -> list[np.ndarray]:
    """The contexts of :func:`heldout_contexts`, as a list."""
    return heldout_contexts(tokenizer, dataset, context_size, n_contexts, skip=skip,
                            text_column=text_column).contexts


def is_causal_lm(model) -> bool:
    get = getattr(model, "get_output_embeddings", None)
    return get is not None and get() is not None


class _Replace:
    """The splice function. ``sae``: the SAE's reconstruction where ``keep_BS``, clean
    elsewhere (a transcoder: its output from the source activation ``src_BSD``); ``mean``: the
    mean activation ``mean_D`` where ``keep_BS``; ``zero``: zeros at every position (SAEBench)."""

    def __init__(self, sae, mode: str, mean_D: Tensor | None = None):
        self.sae, self.mode, self.mean_D = sae, mode, mean_D
        self.keep_BS: Tensor | None = None

    def __call__(self, act_BSD: Tensor, src_BSD: Tensor | None = None) -> Tensor:
        if self.mode == "zero":
            return torch.zeros_like(act_BSD)
        read_BSD = act_BSD if src_BSD is None else src_BSD
        D = read_BSD.shape[-1]
        if D != self.sae.cfg.d_in:
            raise ValueError(f"the SAE reads width d_in={self.sae.cfg.d_in} but the hook gives {D}")
        if self.mode == "mean":
            new_BSD = self.mean_D.to(act_BSD).expand_as(act_BSD)
        elif src_BSD is None:
            x_hat = self.sae.decode(self.sae.encode(act_BSD.reshape(-1, D).float()))
            new_BSD = x_hat.reshape(act_BSD.shape).to(act_BSD.dtype)
        else:  # a transcoder's forward (with its skip connection, if any)
            new_BSD = self.sae(src_BSD.reshape(-1, D).float()).reshape(act_BSD.shape).to(act_BSD.dtype)
        return torch.where(self.keep_BS[..., None], new_BSD, act_BSD)


def _batches(contexts: list[np.ndarray], size: int) -> Iterator[Tensor]:
    for i in range(0, len(contexts), size):
        yield torch.as_tensor(np.stack(contexts[i:i + size]), dtype=torch.long)


def _kl_BS(logp_clean: Tensor, logits_new: Tensor) -> Tensor:
    logp_new = F.log_softmax(logits_new.double(), dim=-1)
    return (logp_clean.exp() * (logp_clean - logp_new)).sum(-1)


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
    spliced = _splicer(model, hook, source_hook)
    device = next(model.parameters()).device
    excluded = excluded_token_ids(lm.tokenizer, exclude)
    contexts = list(contexts)
    causal = is_causal_lm(model)
    fns = {"sae": _Replace(sae, "sae"), "zero": _Replace(sae, "zero")}
    if mean_D is not None:
        fns["mean"] = _Replace(sae, "mean", torch.as_tensor(np.asarray(mean_D), dtype=torch.float32).to(device))
    sums: dict[str, float] = collections.defaultdict(float)
    bar = tqdm(total=len(contexts), unit="ctx", desc="eval: spliced model", disable=not progress,
               dynamic_ncols=True)
    try:
        for ids_BS in _batches(contexts, batch_size):
            ids_BS = ids_BS.to(device)
            keep_BS = keep_mask(ids_BS, excluded)
            for fn in fns.values():
                fn.keep_BS = keep_BS
            if causal:
                _causal_batch(model, spliced, ids_BS, keep_BS, fns, sums)
            else:
                _encoder_batch(model, spliced, ids_BS, fns, sums)
            bar.update(ids_BS.shape[0])
    finally:
        bar.close()
    return _causal_result(sums, fns) if causal else _encoder_result(sums, fns)


def _splicer(model, hook: str, source_hook: str | None):
    """fn -> the context manager splicing ``fn`` at ``hook`` (a transcoder: ``fn(act, src)``
    with the activation ``src`` of ``source_hook``)."""
    (point,) = resolve_hooks(model, [hook])
    if source_hook is None:
        return functools.partial(splice, model, point)
    (src,) = resolve_hooks(model, [source_hook])
    return lambda fn: splice_from(model, src, point, lambda src_BSD, act_BSD: fn(act_BSD, src_BSD))


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


def _causal_batch(model, spliced, ids_BS, keep_BS, fns, sums) -> None:
    targets = ids_BS[:, 1:].reshape(-1)
    ce_mask = keep_BS[:, :-1].reshape(-1)

    def ce(logits_BSV: Tensor) -> float:
        V = logits_BSV.shape[-1]
        loss = F.cross_entropy(logits_BSV[:, :-1].reshape(-1, V).double(), targets, reduction="none")
        return float(loss[ce_mask].sum())

    logits = model(input_ids=ids_BS).logits
    logp_clean = F.log_softmax(logits.double(), dim=-1)
    sums["ce_clean"] += ce(logits)
    for name, fn in fns.items():
        with spliced(fn):
            new = model(input_ids=ids_BS).logits
        sums[f"ce_{name}"] += ce(new)
        sums[f"kl_{name}"] += float(_kl_BS(logp_clean, new)[keep_BS].sum())
    sums["n_ce"] += int(ce_mask.sum())
    sums["n_kl"] += int(keep_BS.sum())


def _encoder_batch(model, spliced, ids_BS, fns, sums) -> None:
    attn_BS = torch.ones_like(ids_BS)

    def pooled() -> Tensor:  # sentence-transformers mean pooling
        h_BSD = model(input_ids=ids_BS, attention_mask=attn_BS)[0].double()
        m = attn_BS[..., None].double()
        return (h_BSD * m).sum(1) / m.sum(1).clamp_min(1e-9)

    clean_BD = pooled()
    for name, fn in fns.items():
        with spliced(fn):
            new_BD = pooled()
        sums[f"cos_{name}"] += float(F.cosine_similarity(clean_BD, new_BD, dim=-1).sum())
    sums["n_ctx"] += ids_BS.shape[0]


__all__ = ["downstream_metrics", "eval_contexts", "heldout_contexts", "EvalContexts", "is_causal_lm",
           "EXCLUDE_CHOICES"]
