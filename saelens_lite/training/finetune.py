"""End-to-end fine-tuning: train a trained SAE (or transcoder) on the frozen model's output.

The SAE is spliced into the model at its hook (a transcoder: its output from the source hook
replaces the target hook's activation) and its parameters are trained on what the model then
predicts. Per step, on ``B`` contexts of ``S`` tokens streamed from the corpus::

    logits_clean = model(ids)                        # no_grad: the reference
    logits       = model(ids | act <- x_hat)         # the splice, gradients into the SAE only
    kl   = mean_{b,t kept} sum_v p_clean log(p_clean / p_spliced)
    ce   = mean_{b,t<S-1 kept} -log p_spliced(ids[b, t+1])
    fvu  = sum ||y - x_hat||^2 / sum ||y - mean(y)||^2   (the batch's kept rows; y the target)
    loss = kl | ce | kl + mse_coeff * fvu                (config.loss)
    loss.backward(); sae.before_optimizer_step_(); clip; Adam; sae.after_optimizer_step_()

"kept" positions are those whose input token the one token rule (:mod:`saelens_lite.lm.tokens`)
does not exclude; excluded positions keep their clean activation, as in the evaluation
(:mod:`saelens_lite.evals.downstream`, whose ``kl_div`` and ``ce_loss_sae`` are these means). The
FVU's denominator is detached, so it is the trainer's FVU with the batch's variance as a fixed
weight. The model's parameters never get a gradient (``requires_grad_(False)``); the gradient
flows through the layers after the hook into the SAE.

The SAE runs through its training interface, ``training_forward`` (the x_hat it returns is
differentiable in every parameter, e.g. TopK's selected pre-activations; its own loss terms are
not used), on inputs in its training units: the saved SAE folds its input scale ``c`` in
(``SAE.fold_input_scale_``), so it is unfolded first, with ``c`` = 1 / the decoder's median row
norm (exact for unit-norm decoders, whose rows the post-step hook keeps at norm 1), and folded
back before saving. For an L1 ReLU or JumpReLU SAE the loss holds no sparsity term: watch the
logged L0.

Anchors: EleutherAI sparsify's ``--finetune`` with ``--loss_fn kl|ce`` (KL to the clean
next-token distribution, or CE); Karvonen 2025 ("Revisiting end-to-end sparse autoencoder
training", arXiv 2503.17272): a KL + MSE fine-tune on the last 25M tokens closes 20-50% of
the CE-loss gap; Chen, Engels & Tegmark 2025 (LoRA on the model around a frozen SAE) close
30-55%. Measured here: docs/finetune.md.

Resume is exact, as in the trainer (:mod:`saelens_lite.training.checkpoint`): a checkpoint
holds the SAE, the Adam state, the dead-latent counter, the scales and the RNG states, and the
contexts restart at step ``s``'s (the stream is in corpus order, ``B`` contexts a step).

Shapes: B contexts, S sequence, D width, V vocabulary, N kept tokens, F latents.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from saelens_lite.lm.layout import is_causal_lm
from saelens_lite.lm.losses import kl_from_reference, log_probs, next_token_ce
from saelens_lite.training.checkpoint import (
    has_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from saelens_lite.training.dead_latents import DeadLatentTracker
from saelens_lite.training.finetune_config import LOSSES, FinetuneConfig
from saelens_lite.training.hook_state import make_adam, param_groups
from saelens_lite.training.logging import RunLogger
from saelens_lite.training.schedules import lr_at
from saelens_lite.training.step import optimizer_step_
from saelens_lite.util.atomic import write_json
from saelens_lite.util.devices import resolve_device

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class FinetuneRun:
    """What a fine-tune holds: the frozen model, the SAE in training units and its optimiser."""

    config: FinetuneConfig
    lm: object
    sae: torch.nn.Module
    opt: torch.optim.Optimizer
    hook: str
    """The hook whose activation is replaced (a transcoder's target hook)."""
    source_hook: str | None
    """A transcoder's input hook (None: an SAE, which reads ``hook``)."""
    scale: float
    """Input scale c: the SAE reads c * x."""
    target_scale: float
    """Output scale: the activation is x_hat / target_scale (= scale for an SAE)."""
    excluded: set[int]
    contexts: list[np.ndarray] | None
    """The cycled contexts when ``config.contexts`` limits them (None: stream the corpus)."""
    dead: DeadLatentTracker
    run_dir: Path


def finetune(config: FinetuneConfig, *, lm=None):
    """Fine-tune ``config.sae`` on the frozen model's output (module docstring) and save it to
    ``out_dir/<hook>/``; returns the fine-tuned SAE (eval mode, raw activations in and out).
    ``lm``: a loaded :class:`~saelens_lite.lm.load.LoadedModel` (None: load ``config.model``)."""
    run = _open_run(config, lm)
    model = run.lm.model
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)  # frozen: gradients reach the SAE only
    try:
        start = _start_step(run)
        log.info("fine-tuning %s at %s on %s: loss=%s, %d steps x %d contexts x %d tokens, lr=%.3g",
                 config.sae, run.hook, type(model).__name__, config.loss, config.steps,
                 config.batch_contexts, config.context_size, config.lr)
        _loop(run, start)
    finally:  # a caller's model keeps its flags
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    return _finish(run)


# ------------------------------------------------------------------ set-up
def _open_run(config: FinetuneConfig, lm) -> FinetuneRun:
    """Set-up: the SAE (unfolded to training units), the frozen model, Adam, the contexts."""
    from saelens_lite.lm.load import load_model
    from saelens_lite.lm.tokens import excluded_token_ids
    from saelens_lite.saes import SAE

    sae = SAE.load(config.sae)
    model_name = config.model or sae.cfg.model_name
    if lm is None and not model_name:
        raise ValueError(f"model=None: the SAE {config.sae} names no model (cfg.json model_name); pass model=")
    device = resolve_device(config.device) if lm is None else next(lm.model.parameters()).device
    lm = lm if lm is not None else load_model(model_name, device=device)
    lm.model.eval()
    if not is_causal_lm(lm.model):
        raise ValueError(f"model={lm.name!r}: has no LM head; fine-tuning needs next-token logits")
    torch.manual_seed(config.seed)
    sae = sae.to(device).train()
    scale, target_scale = _unfold_scales_(sae)
    hook, source = (sae.cfg.target_hook, sae.cfg.hook_name) if sae.is_transcoder else (sae.cfg.hook_name, None)
    if not hook:
        raise ValueError(f"sae={config.sae!r}: its cfg.json names no hook_name; cannot splice it")
    opt = make_adam(param_groups(sae), config.lr, tuple(config.betas), device)  # the trainer's groups
    n_ctx = _context_limit(config)
    contexts = None if n_ctx is None else list(itertools.islice(_corpus_contexts(config, lm.tokenizer), n_ctx))
    if contexts is not None and not contexts:
        raise ValueError(f"dataset={config.dataset!r}: gives no context of {config.context_size} tokens")
    return FinetuneRun(config, lm, sae, opt, hook, source, scale, target_scale,
                       excluded_token_ids(lm.tokenizer, config.exclude), contexts,
                       DeadLatentTracker(sae.cfg.d_sae, 10**12, device), Path(config.out_dir))


@torch.no_grad()
def _unfold_scales_(sae) -> tuple[float, float]:
    """Put a saved (scale-folded) SAE back in training units: c = 1 / median decoder row norm
    (unit rows are then unit norm, as the post-step hook keeps them; free rows get median norm
    1: cfg.decoder_norm), the inverse of
    ``fold_input_scale_(c)``; a transcoder gets the same c for its input (any c gives the same
    function; this one keeps the lr's units). Returns (scale, target_scale)."""
    c = 1.0 / float(sae.W_dec.norm(dim=1).median())
    if sae.is_transcoder:
        sae.fold_input_scale_(1.0 / c, target_scale=1.0 / c)
    else:
        sae.fold_input_scale_(1.0 / c)
    return c, c


def _context_limit(config: FinetuneConfig) -> int | None:
    """``config.contexts``, or the number of contexts ``config.activations`` was harvested from
    (checking that its corpus and context size are this run's)."""
    if config.activations is None:
        return config.contexts
    from saelens_lite.cache import ActivationCache

    cache = ActivationCache(config.activations)
    meta = cache.meta
    for name, mine in (("corpus", config.dataset), ("context_size", config.context_size)):
        if meta.get(name) != mine:
            field = "dataset" if name == "corpus" else name
            raise ValueError(f"{field}={mine!r}: the activation cache {config.activations} was harvested "
                             f"with {name}={meta.get(name)!r}; pass the same to fine-tune on its contexts")
    last = cache.manifest.get("last_committed")
    n = int(last[0]) + 1 if last else 0
    if not n:
        raise ValueError(f"activations={config.activations!r}: the cache holds no committed context")
    return n if config.contexts is None else min(n, config.contexts)


def _corpus_contexts(config: FinetuneConfig, tokenizer) -> Iterator[np.ndarray]:
    """The corpus's full-length packed contexts, in order (as the evaluation counts them)."""
    from saelens_lite.corpus.text import iter_documents, pack_contexts

    docs = iter_documents(config.dataset, text_column=config.text_column)
    return (c for c in pack_contexts(docs, tokenizer, config.context_size) if len(c) == config.context_size)


def _batches(run: FinetuneRun, start: int) -> Iterator[Tensor]:
    """(B, S) token ids of steps ``start``, ``start + 1``, ...: the contexts in order, cycled."""
    config = run.config
    if run.contexts is not None:
        stream = itertools.cycle(run.contexts)
    else:
        def passes():
            while True:
                empty = True
                for c in _corpus_contexts(config, run.lm.tokenizer):
                    empty = False
                    yield c
                if empty:
                    raise ValueError(f"dataset={config.dataset!r}: gives no context of {config.context_size} tokens")
        stream = passes()
    B = config.batch_contexts
    stream = itertools.islice(stream, start * B, None)
    while True:
        yield torch.as_tensor(np.stack(list(itertools.islice(stream, B))), dtype=torch.long)


# ------------------------------------------------------------------ resume
def _start_step(run: FinetuneRun) -> int:
    """Resume from the newest checkpoint (refusing one of another config), or start at 0 and
    write ``config.json``."""
    config, run_dir = run.config, run.run_dir
    path = latest_checkpoint(run_dir)
    if not config.resume:
        if has_checkpoints(run_dir):
            raise ValueError(f"out_dir={str(run_dir)!r}: holds checkpoints of an earlier run; pass "
                             "resume=True to continue it or choose another out_dir")
        path = None
    elif path is None:
        log.warning("resume=True but %s holds no checkpoint; starting from scratch", run_dir)
    if path is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", {**config.to_dict(), "format_version": FORMAT_VERSION})
        return 0
    ckpt = load_checkpoint(path)
    diff = config.resume_mismatch(ckpt["config"])
    if diff:
        f = diff[0]
        raise ValueError(f"resume: {f}={getattr(config, f)!r} differs from the checkpoint's "
                         f"{f}={ckpt['config'].get(f)!r}; it would change the weights")
    run.sae.load_state_dict(ckpt["sae"])
    run.sae.load_training_state_(ckpt["sae_training"])
    run.opt.load_state_dict(ckpt["opt"])
    run.dead.tokens_since_fired_F.copy_(ckpt["tokens_since_fired"])
    run.dead.tokens_seen = ckpt["tokens_seen"]
    run.scale, run.target_scale = ckpt["scale"], ckpt["target_scale"]
    set_rng_state(ckpt["rng"])
    log.info("resuming %s at step %d (%d tokens)", run_dir, ckpt["step"], ckpt["step"] * config.batch_tokens)
    return ckpt["step"]


def _checkpoint(run: FinetuneRun, done: int) -> None:
    state = {"config": run.config.to_dict(), "sae": run.sae.state_dict(), "opt": run.opt.state_dict(),
             "sae_training": {k: v.cpu() for k, v in run.sae.training_state().items()},
             "tokens_since_fired": run.dead.tokens_since_fired_F.cpu(), "tokens_seen": run.dead.tokens_seen,
             "scale": run.scale, "target_scale": run.target_scale, "format_version": FORMAT_VERSION}
    save_checkpoint(run.run_dir, done, state, keep=run.config.keep_checkpoints)


# ------------------------------------------------------------------ the loop
def _loop(run: FinetuneRun, start: int) -> None:
    """Steps ``start`` to ``config.steps``: a step, a metrics record at log steps, a checkpoint
    when due."""
    config = run.config
    total = config.steps
    logger = RunLogger(run.run_dir, config, total_steps=total, start_step=start, desc="finetune")
    batches = _batches(run, start)
    try:
        for step in range(start, total):
            rec = finetune_step(run, next(batches), lr_at(step, config, config.lr))
            logger.step()
            done = step + 1
            if done % config.log_every == 0 or done == total:
                logger.log([{"hook": run.hook, "step": done, "tokens": done * config.batch_tokens, **rec,
                             "dead_fraction": run.dead.dead_fraction()}])
                if not np.isfinite(rec["loss"]):
                    raise FloatingPointError(f"loss is not finite at step {done}; lower lr (now {config.lr})")
            every = config.checkpoint_every
            B = config.batch_tokens
            if every and done < total and (done * B) // every > (step * B) // every:
                _checkpoint(run, done)
    finally:
        logger.close()


def finetune_step(run: FinetuneRun, ids_BS: Tensor, lr: float) -> dict[str, float]:
    """One step on the contexts ``ids_BS`` at learning rate ``lr``; returns its metrics."""
    from saelens_lite.lm.tokens import keep_mask

    model, sae, config = run.lm.model, run.sae, run.config
    ids_BS = ids_BS.to(next(model.parameters()).device)
    keep_BS = keep_mask(ids_BS, run.excluded)
    with torch.no_grad():
        logits_clean = model(input_ids=ids_BS).logits
    fwd = _SpliceForward(run, keep_BS)
    with _spliced(model, run.hook, run.source_hook, fwd):
        logits = model(input_ids=ids_BS).logits
    terms = downstream_losses(logits_clean, logits, ids_BS, keep_BS)
    out = fwd.out
    y_ND = fwd.target_ND
    fvu = out.mse * y_ND.shape[0] / (y_ND - y_ND.mean(0)).pow(2).sum().clamp_min(1e-12)
    loss = {"kl": terms["kl"], "ce": terms["ce"], "mse+kl": terms["kl"] + config.mse_coeff * fvu}[config.loss]
    for g in run.opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    optimizer_step_(sae, run.opt, sae.parameters(), grad_clip=config.grad_clip)
    run.dead.update(out.fired_F, int(keep_BS.sum()))
    return {"loss": float(loss.detach()), "kl": float(terms["kl"].detach()), "ce": float(terms["ce"].detach()),
            "fvu": float(fvu.detach()),
            "l0": float(out.l0), "lr": lr}


def downstream_losses(logits_clean_BSV: Tensor, logits_BSV: Tensor, ids_BS: Tensor,
                      keep_BS: Tensor) -> dict[str, Tensor]:
    """{"kl": mean over kept positions of KL(p_clean || p), "ce": mean next-token CE over kept
    positions t < S-1}, differentiable in ``logits_BSV`` (:mod:`saelens_lite.lm.losses`, in float32)."""
    kl = kl_from_reference(log_probs(logits_clean_BSV), logits_BSV)[keep_BS].mean()
    ce = next_token_ce(logits_BSV, ids_BS)[keep_BS[:, :-1]].mean()
    return {"kl": kl, "ce": ce}


class _SpliceForward:
    """The splice function: at kept positions the activation becomes the SAE's x_hat of the
    (source) activation, through ``training_forward`` in training units; records the output."""

    def __init__(self, run: FinetuneRun, keep_BS: Tensor):
        self.run, self.keep_BS = run, keep_BS
        self.out = None
        self.target_ND: Tensor | None = None

    def __call__(self, act_BSD: Tensor, src_BSD: Tensor | None = None) -> Tensor:
        run, keep = self.run, self.keep_BS
        x_ND = (act_BSD if src_BSD is None else src_BSD)[keep].float() * run.scale
        kw = {}
        if src_BSD is not None:
            kw["target_BD"] = act_BSD[keep].float() * run.target_scale
        self.out = run.sae.training_forward(x_ND, **kw)
        self.target_ND = kw.get("target_BD", x_ND)
        new_BSD = act_BSD.clone()
        new_BSD[keep] = (self.out.x_hat_BD / run.target_scale).to(act_BSD.dtype)
        return new_BSD


def _spliced(model, hook: str, source_hook: str | None, fn) -> contextlib.AbstractContextManager:
    """The one call into the model (saelens_lite.lm.hooks.replace / replace_from, the primitive
    under lm.splice, which encodes without gradients through the top-k choice; not
    under no_grad, so the SAE gets gradients): ``fn(act)`` replaces ``hook``'s activation, or
    ``fn(act, src)`` with ``source_hook``'s activation of the same forward (a transcoder)."""
    from saelens_lite.lm.hooks import replace, replace_from

    if source_hook is None:
        return replace(model, hook, fn)
    return replace_from(model, source_hook, hook, lambda src_BSD, act_BSD: fn(act_BSD, src_BSD))


# ------------------------------------------------------------------ finish
def _raw_units(sae, scale: float, target_scale: float):
    """A copy of ``sae`` (training units) in eval mode taking and giving raw activations."""
    import copy

    sae = copy.deepcopy(sae).eval()
    if sae.is_transcoder:
        sae.fold_input_scale_(scale, target_scale=target_scale)
    else:
        sae.fold_input_scale_(scale)
    return sae


def sae_from_checkpoint(path: str | Path):
    """The SAE of a fine-tune checkpoint (``out_dir/checkpoints/step_*.pt``), in raw units like
    the SAE ``finetune`` saves at the end: the weights after that checkpoint's step."""
    from saelens_lite.saes import SAE

    ckpt = load_checkpoint(path)
    sae = SAE.load(ckpt["config"]["sae"])
    sae.load_state_dict(ckpt["sae"])
    sae.load_training_state_(ckpt["sae_training"])
    return _raw_units(sae, ckpt["scale"], ckpt["target_scale"])


def _finish(run: FinetuneRun):
    """The fine-tuned SAE in raw units (the scales folded back), saved to ``out_dir/<hook>/``."""
    import shutil

    sae = _raw_units(run.sae, run.scale, run.target_scale)
    out = run.run_dir / sae.cfg.hook_name.replace("/", "_").replace("\\", "_")
    if out.exists():
        shutil.rmtree(out)
    sae.save(out)
    log.info("saved the fine-tuned SAE to %s", out)
    return sae


__all__ = ["finetune", "sae_from_checkpoint", "FinetuneConfig", "FinetuneRun", "finetune_step", "downstream_losses", "LOSSES"]
