"""The training loop: one SAE per hook, all fed from one data stream.

Per step ``s`` (0-based) and hook::

    x_BD  = c * batch[hook]                       # c: fixed normalisation scale
    out   = sae.training_forward(x_BD, sparsity_scale=sparsity_scale_at(s), dead_mask_F)
    out.loss.backward(); sae.before_optimizer_step_(); clip; Adam(lr_at(s)); sae.after_optimizer_step_()

A transcoder (``config.target_hook``, :mod:`saelens_lite.training.targets`) also gets
``target_BD = c_y * batch[target_hook]``, the same rows with the target's own scale ``c_y``.

The SAE is known only through the registry interface (``saelens_lite.saes``). Dead latents:
a latent that has not fired for more than ``dead_window_tokens`` tokens is dead; the mask is
passed to ``training_forward`` (AuxK, Gao et al. 2024 Sec. A.2) and its mean is reported.

Resume is exact: the checkpoint holds everything step ``s`` reads (weights, Adam state, counters,
RNG states) and the data source restarts at batch ``s``, so a resumed run ends bit-identical to
an uninterrupted one wherever the kernels are deterministic (CPU: always; CUDA: relu/jumprelu yes,
the sparse TopK kernels are not: there two uninterrupted runs already differ in the last bits).

Data parallel (``torchrun``, see :mod:`saelens_lite.distributed`): the global batch is still
``batch_size``; rank r of W trains on rows ``[r B/W, (r+1) B/W)`` of each global batch. After
``backward`` the gradients are averaged over ranks (an explicit all-reduce instead of DDP, which
does not fit the custom kernels and decoder-norm hooks), the dead-latent "fired" masks are OR-ed,
and after the step floating buffers (the BatchTopK threshold) are averaged; metrics are averaged
at log steps. A loss non-linear in a batch mean (JumpReLU's target-L0 penalty) reads the global
mean through ``sae.batch_mean`` (set to :func:`saelens_lite.distributed.batch_mean`), so its
averaged gradient is the global one too. Every rank thus holds the same weights, and for
losses that are means over tokens (MSE, L1, the JumpReLU L0) a step equals a single-process
step on the same global batch up to float rounding. Terms computed over the batch as a whole are computed per rank slice: the
BatchTopK selection (top (B/W) k per rank) and the AuxK normaliser. Only rank 0 writes
config.json, metrics.jsonl, checkpoints and the SAEs; resume needs the same world size.

Distributed hooks (``config.distribute_hooks`` under ``torchrun``; EleutherAI sparsify's
``--distribute_modules``): rank r of W trains only ``hooks[r::W]`` (config order; fewer hooks
than ranks is an error), each on the whole global batch, and nothing is reduced: a hook's SAE
sees exactly the steps of a one-process run. The source is restricted to the rank's hooks
(``DataSource.select``: a cache reads only their shards, a model captures only them); every
source orders its rows independently of the hooks selected, so each rank sees the same batches.
Every rank builds every hook's SAE in config order and keeps its own, so each init draws the
global RNG where one process does; after init the steps draw nothing from it (except the
fast step's random choice of AuxK candidates when more latents are dead than candidates,
which interleaves over a process's hooks: only there can a hook's result depend on which other
hooks its process trains). Files, one writer each: rank 0 writes config.json and
metrics.jsonl (the ranks' records are gathered at log steps, so the file reads like a
one-process run's); each rank writes its own hooks' SAE folders and its own checkpoints
``checkpoints/rank_RRRRR/step_*.pt`` (its hooks, its RNG states; see
:mod:`saelens_lite.training.checkpoint`). Resume continues from the newest step every rank
holds and refuses another world size or a switch between the two modes. ``train`` returns this
rank's ``{hook: SAE}``. Without torchrun the flag changes nothing.

Fast step (``config.fast_step``, :mod:`saelens_lite.training.fast_step`): for TopK / BatchTopK /
Matryoshka the step above runs as closed-form sparse gradients and fused Adam instead of autograd; on CUDA
in one process it is captured once in a CUDA graph and replayed. The schedule then reaches the
graph through tensors updated in place before each replay (the lr, a 0-dim tensor read by fused
Adam; the dead mask, copied into the captured input), the clip runs inside the graph
(``clip_grad_norm_``, sync-free), and the outputs are read on the host only at log steps. Until
``dead_window_tokens`` have passed no latent can be dead, so the step gets no dead mask (and
skips the AuxK selection); the autograd path computes no AuxK term then either. Data parallel
under ``torchrun`` the fast step runs eagerly with the all-reduce between backward and Adam;
with distributed hooks each rank captures its graphs as one process does.

After the last step each SAE's ``finish_training_`` gets a fixed data sample (seed + 1, in
training units) to set what inference needs from data (BatchTopK: its threshold, see
saes.batchtopk), then the normalisation scale is folded in and the SAE is saved.

Rank 0 also redraws ``training_curves.png`` from ``metrics.jsonl`` at each checkpoint and when
the loop ends (:mod:`saelens_lite.training.curves`; a plotting failure only logs a warning).

Shapes: B batch, D width, F latents.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import queue
import random
import shutil
import threading
from pathlib import Path

import numpy as np
import torch

from saelens_lite import distributed
from saelens_lite._atomic import write_json
from saelens_lite.training import targets
from saelens_lite.training.checkpoint import (
    checkpoint_dir,
    checkpoint_ranks,
    checkpoint_step,
    has_checkpoints,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    set_rng_state,
)
from saelens_lite.training.config import TrainConfig, width_rule_lr
from saelens_lite.training.curves import refresh_training_curves
from saelens_lite.training.data import DataSource, open_source
from saelens_lite.training.logging import RunLogger
from saelens_lite.training.step import AutogradStep

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Schedules (pure functions of the step, so resume needs only the step)


def lr_at(step: int, config: TrainConfig, base_lr: float) -> float:
    """Learning rate of step ``step`` (0-based) out of ``T = config.steps``.

    warm-up: ``w = min(1, (step + 1) / W)`` with ``W = config.warmup`` (1 when ``W == 0``);
    decay over the last ``n = round(decay_fraction * T)`` steps, with ``p = (step - (T - n)) / n``:
    linear ``1 - p``, cosine ``(1 + cos(pi p)) / 2`` (1 before the decay starts or with
    ``decay="none"``). ``lr = base_lr * w * decay``.
    """
    T = config.steps
    w = min(1.0, (step + 1) / config.warmup) if config.warmup else 1.0
    n = round(config.decay_fraction * T)
    d = 1.0
    if config.decay != "none" and n > 0 and step >= T - n:
        p = (step - (T - n)) / n
        d = 1.0 - p if config.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
    return base_lr * w * d


def sparsity_scale_at(step: int, config: TrainConfig) -> float:
    """Multiplier of the sparsity coefficient: ``min(1, (step + 1) / sparsity_warmup_steps)``."""
    if not config.sparsity_warmup_steps:
        return 1.0
    return min(1.0, (step + 1) / config.sparsity_warmup_steps)


# ---------------------------------------------------------------------------------------------
# Dead latents


class DeadLatentTracker:
    """Tokens since each latent last fired.

    Two uses with two windows:

    - ``dead_mask()``, the latents AuxK and the dead-latent losses act on: silent for more than
      ``window`` tokens (Gao et al. 2024's 10M-token definition, as in sparsify);
    - ``dead_fraction()``, the logged metric: silent for more than
      ``min(window, tokens_seen // 2)`` tokens, so that a run shorter than ``window`` still
      reports latents that stopped firing (with the full window only, any run under 10M tokens
      would log 0 dead to the end).
    """

    def __init__(self, d_sae: int, window: int, device: torch.device | str = "cpu"):
        self.window = window
        self.tokens_seen = 0
        self.tokens_since_fired_F = torch.zeros(d_sae, dtype=torch.long, device=device)

    def update(self, fired_F: torch.Tensor, n_tokens: int) -> None:
        """``fired_F``: bool (F,), latents that fired at least once in the last ``n_tokens``."""
        self.tokens_seen += n_tokens
        self.tokens_since_fired_F += n_tokens
        self.tokens_since_fired_F.masked_fill_(fired_F.to(torch.bool), 0)  # no host sync

    def dead_mask(self) -> torch.Tensor:
        return self.tokens_since_fired_F > self.window

    def report_window(self) -> int:
        """The window of `dead_fraction`: ``min(window, tokens_seen // 2)``."""
        return min(self.window, self.tokens_seen // 2)

    def dead_fraction(self) -> float:
        return float((self.tokens_since_fired_F > self.report_window()).float().mean())


# ---------------------------------------------------------------------------------------------
# Building blocks


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA with ``dtype="auto"``; None (plain float32) otherwise."""
    if config.dtype == "bfloat16" or (config.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def build_sae(config: TrainConfig, d_in: int, hook: str = ""):
    """An untrained SAE of the configured architecture for inputs of width ``d_in``."""
    from saelens_lite.saes import SAE
    from saelens_lite.saes.config import config_class

    d_sae = config.d_sae(d_in)
    if config.k > d_sae:
        raise ValueError(f"k={config.k}: must be at most the number of latents d_sae={d_sae} "
                         f"(hook {hook!r} has width {d_in})")
    if "d_in" in config.sae_options and config.sae_options["d_in"] != d_in:
        raise ValueError(f"sae_options.d_in={config.sae_options['d_in']}: hook {hook!r} has width {d_in}")
    config.check_sae_options()
    cls = config_class(config.architecture)
    kwargs = {"architecture": config.architecture, "d_in": d_in, "d_sae": d_sae, "k": config.k,
              "b_dec_init": config.b_dec_init, "hook_name": hook, "model_name": config.model or ""}
    if config.target_hook:  # a transcoder (training.targets)
        kwargs.update(target_hook=config.target_hook, skip=config.skip)
    if config.sparsity_coeff is not None and cls.sparsity_field is not None:
        kwargs[cls.sparsity_field] = config.sparsity_coeff  # relu: l1_coeff, jumprelu: l0_coeff
    kwargs.update(config.sae_options)
    return SAE.from_config(cls(**kwargs))


def normalization_scale(x_ND: torch.Tensor) -> float:
    """c with E||c x|| = sqrt(D) on the sample (a fixed, dataset-level scale)."""
    mean_norm = float(x_ND.float().norm(dim=-1).mean())
    if not mean_norm > 0:
        raise ValueError("activations: the data sample has zero norm; cannot normalise")
    return math.sqrt(x_ND.shape[-1]) / mean_norm


def _safe_dirname(hook: str) -> str:
    return hook.replace("/", "_").replace("\\", "_")


def _param_groups(sae):
    """The SAE's parameters, or Adam parameter groups when ``sae.lr_scales()`` names any:
    the scaled parameters one group each (``lr_scale`` read by ``set_lr``), the rest one."""
    scales = sae.lr_scales()
    if not scales:
        return sae.parameters()
    named = dict(sae.named_parameters())
    rest = [p for n, p in named.items() if n not in scales]
    return [{"params": rest}] + [{"params": [named[n]], "lr_scale": s} for n, s in scales.items()]


def _lr_note(config: TrainConfig, st) -> str:
    """How a default lr relates to the long-run rule (config.width_rule_lr), for the log."""
    if not st.lr_is_default:
        return ""
    m = st.base_lr / width_rule_lr(st.sae.cfg.d_sae)
    return f" (default for {config.steps} steps: {m:.2g}x the long-run rule)"


def make_adam(params, lr, betas, device: torch.device, *, capturable: bool = False):
    """torch.optim.Adam, fused (one kernel over all parameters) where torch has it: CUDA and
    CPU. On a CPU the fused step is ~8x faster than the default foreach one (5.3M parameters,
    2 threads: 2.3 ms against 18 ms; ~12% of a D=576, F=4608 training step), and equal to it
    up to rounding (float32: identical in a 5-step check; docs/benchmarks.md)."""
    fused = True if device.type in ("cpu", "cuda") else None
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused, capturable=capturable)


class _HookState:
    """Everything trained for one hook. ``step``: its training step (training.step), the
    ``fast`` FastTrainStep where the config and architecture allow it (else None), or
    AutogradStep. ``data_parallel``: ranks share this hook's batches, so gradients,
    buffers, fired masks and metrics are reduced over them (False in one process and for
    distributed hooks, where this rank alone trains the hook on whole batches)."""

    def __init__(self, sae, config: TrainConfig, device: torch.device, data_parallel: bool = False,
                 amp: torch.dtype | None = None):
        self.sae = sae.to(device)
        self.data_parallel = data_parallel
        if data_parallel:  # global batch statistics for terms non-linear in them (JumpReLU)
            self.sae.batch_mean = distributed.batch_mean
        self.base_lr = config.lr_for(sae.cfg.d_sae)
        self.lr_is_default = config.lr is None
        self.fast = None
        betas = tuple(config.betas)
        if config.use_fast_step(device.type) and targets.fast_step_applies(config, sae):
            from saelens_lite.training.fast_step import FastTrainStep

            cuda = device.type == "cuda"
            graph = cuda and config.cuda_graphs and not data_parallel
            # on CUDA fused Adam reads a 0-dim tensor lr on the device (updated in place each
            # step, so a captured graph sees the schedule); on a CPU a float lr
            lr = torch.tensor(self.base_lr, dtype=torch.float32, device=device) if cuda else self.base_lr
            self.opt = make_adam(self.sae.parameters(), lr, betas, device, capturable=graph)
            hook = (lambda: distributed.all_reduce_grads_(self.sae.parameters())) if data_parallel else None
            self.fast = FastTrainStep(self.sae, self.opt, compute_dtype=amp, cuda_graph=graph,
                                      grad_clip=config.grad_clip, grad_hook=hook,
                                      select=config.topk_select)
            self.step = self.fast
        else:
            self.opt = make_adam(_param_groups(self.sae), self.base_lr, betas, device)
            # data parallel: the mean over ranks is the gradient of the global batch
            hook = (lambda: distributed.all_reduce_grads_(self.sae.parameters())) if data_parallel else None
            self.step = AutogradStep(self.sae, self.opt, grad_clip=config.grad_clip, grad_hook=hook,
                                     autocast_dtype=amp)
        self.dead = DeadLatentTracker(self.sae.W_dec.shape[0], config.dead_window_tokens, device)
        self.scale = 1.0
        self.target_scale = 1.0  # a transcoder's target (training.targets); 1 for SAEs

    def set_lr(self, lr: float) -> None:
        for g in self.opt.param_groups:
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].fill_(lr)  # in place: a captured step reads this tensor
            else:
                g["lr"] = lr * g.get("lr_scale", 1.0)

    def state_dict(self) -> dict:
        return {"sae": self.sae.state_dict(), "opt": self.opt.state_dict(),
                "sae_training": {k: v.cpu() for k, v in self.sae.training_state().items()},
                "tokens_since_fired": self.dead.tokens_since_fired_F.cpu(),
                "tokens_seen": self.dead.tokens_seen, "scale": self.scale, "base_lr": self.base_lr,
                "target_scale": self.target_scale}

    def load_state_dict(self, d: dict) -> None:
        self.sae.load_state_dict(d["sae"])
        self.sae.load_training_state_(d.get("sae_training", {}))  # older checkpoints: none
        # Keep this run's optimiser settings (the lr tensor a captured step reads, fused /
        # capturable, which also place Adam's step counters): a checkpoint stores the state.
        opt_sd = copy.copy(d["opt"])
        mine = ("lr", "fused", "capturable", "foreach", "differentiable")
        opt_sd["param_groups"] = [{**g, **{k: cur[k] for k in mine if k in cur}}
                                  for g, cur in zip(d["opt"]["param_groups"], self.opt.param_groups)]
        self.opt.load_state_dict(opt_sd)
        self.dead.tokens_since_fired_F.copy_(d["tokens_since_fired"])
        # older checkpoints lack the count: the longest silence is a lower bound (it only moves
        # the logged dead fraction's window)
        self.dead.tokens_seen = int(d.get("tokens_seen", d["tokens_since_fired"].max()))
        self.scale = d["scale"]
        self.target_scale = d.get("target_scale", 1.0)
        if self.lr_is_default:
            # a run resumes at the lr it started with, even when a later version's default
            # differs; checkpoints without it predate the short-run factor (1x Gao et al.)
            self.base_lr = d.get("base_lr", width_rule_lr(self.sae.cfg.d_sae))


# ---------------------------------------------------------------------------------------------


def train(config: TrainConfig, data=None):
    """Train one SAE per hook of ``data`` and save each to ``out_dir/<hook>/``.

    ``data``: an ActivationCache or its folder, an ``.npy`` / ``.safetensors`` file of (N, D),
    a tensor / array (N, D), a ``{hook: tensor}`` dict, a :class:`DataSource`, or None (use
    ``config.activations`` or stream from ``config.model``). Returns the trained SAE, or a
    ``{hook: SAE}`` dict when there are several hooks; under torchrun with
    ``config.distribute_hooks``, always a dict holding this rank's hooks only. Every check on
    the config and the data runs before the first step.
    """
    dinfo, device = distributed.setup(config.device)
    by_hook = config.distribute_hooks and dinfo.distributed  # else: data parallel (or 1 process)
    data_parallel = dinfo.distributed and not by_hook
    # this rank's rows of a global batch: all of them when hooks are distributed
    rows = distributed.rank_slice(config.batch_size, dinfo) if data_parallel else slice(None)
    source = open_source(data, config)
    all_hooks, all_widths = targets.input_hooks(config, source.hooks), dict(source.widths)
    hooks = distributed.assign_hooks(all_hooks, dinfo) if by_hook else all_hooks
    if by_hook:  # read (a cache) or capture (a model) only this rank's hooks (and the target)
        source.select(targets.with_target(config, hooks))
    amp = autocast_dtype(config, device)
    run_dir = Path(config.out_dir)

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    # Every rank builds every hook's SAE in config order (on the CPU, keeping only its own), so
    # each init draws from the global RNG exactly where a one-process run draws it.
    states = {}
    for h in all_hooks:
        sae = build_sae(config, all_widths[h], h)
        if h in hooks:
            states[h] = _HookState(sae, config, device, data_parallel, amp)
        del sae

    if by_hook:
        ckpt = _resume_point_by_hook(config, run_dir, source, all_hooks, dinfo)
    else:
        ckpt = _resume_point(config, run_dir, source, dinfo.world_size)
    if ckpt is not None:
        for h, st in states.items():
            st.load_state_dict(ckpt["hooks"][h])
        set_rng_state(ckpt["rng"])
        start = ckpt["step"]
        log.info("resuming %s at step %d (%d tokens)", run_dir, start, start * config.batch_size)
    else:
        start = 0
        sample = source.sample(config.init_sample_tokens, seed=config.seed)
        for h, st in states.items():
            x_ND = sample[h].to(device, torch.float32)
            st.scale = normalization_scale(x_ND) if config.normalize_activations else 1.0
            if not config.target_hook:
                st.sae.init_from_data_(x_ND * st.scale)  # b_dec per cfg.b_dec_init
                continue
            y_ND = sample[config.target_hook].to(device, torch.float32)
            st.target_scale = normalization_scale(y_ND) if config.normalize_activations else 1.0
            st.sae.init_from_data_(x_ND * st.scale, y_ND * st.target_scale)  # b_dec from targets
        if data_parallel:  # every rank computed the same init; make that exact
            scales = distributed.broadcast_object({h: (st.scale, st.target_scale) for h, st in states.items()})
            for h, st in states.items():
                st.scale, st.target_scale = scales[h]
                distributed.broadcast_module_(st.sae)
        if by_hook:  # every rank writes files (out_dir need not be on a shared filesystem)
            run_dir.mkdir(parents=True, exist_ok=True)
        if dinfo.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / "config.json", {**config.to_dict(), "format_version": FORMAT_VERSION,
                                                  "widths": all_widths, "n_tokens": source.n_tokens})
        distributed.barrier()

    total = config.steps
    B = config.batch_size
    for h, st in states.items():
        log.info("%s: %s d_in=%d d_sae=%d %s, lr=%.3g%s, scale=%.4g", h, targets.describe(config),
                 source.widths[h], st.sae.cfg.d_sae, config.architecture, st.base_lr, _lr_note(config, st),
                 st.scale)
    fast = next(iter(states.values())).fast
    log.info("training %d steps x %d tokens on %s%s%s (%s)%s", total, B, device,
             " with bf16 autocast" if amp is not None else "",
             "" if fast is None else " with the fast step" + (" in a CUDA graph" if fast.use_graph else ""),
             f"{total * B / source.n_tokens:.2f} passes over the data" if source.n_tokens else "streaming",
             f", rank {dinfo.rank} of {dinfo.world_size}" if dinfo.distributed else "")
    if by_hook:
        log.info("rank %d of %d trains hooks %s of %d", dinfo.rank, dinfo.world_size, hooks, len(all_hooks))
    logger = RunLogger(run_dir, config, total_steps=total, start_step=start, enabled=dinfo.is_main)
    # a source may recycle output buffers (see _Prefetcher); user sources may lack the option
    reuse = {"reuse": _Prefetcher.DEPTH + 4} if "reuse" in inspect.signature(source.batches).parameters else {}
    batches = _Prefetcher(source.batches(B, seed=config.seed, start_batch=start, **reuse))
    try:
        for step in range(start, total):
            batch = next(batches)
            y = batch[config.target_hook][rows] if config.target_hook else None
            records = [_train_step(h, st, batch[h][rows], step, config, device, B, y)
                       for h, st in states.items()]
            logger.step()
            done = step + 1
            if done % config.log_every == 0 or done == total:
                recs = [_record(h, r, states[h], done, B) for h, r in zip(hooks, records)]
                if by_hook:  # every rank gets every hook's record, in config order
                    order = {h: i for i, h in enumerate(all_hooks)}
                    recs = sorted((r for part in distributed.all_gather_object(recs) for r in part),
                                  key=lambda r: order[r["hook"]])
                logger.log(recs)
                bad = [r["hook"] for r in recs if not math.isfinite(r["loss"])]
                if bad:
                    raise FloatingPointError(f"loss of {bad} is not finite at step {done}; lower lr "
                                             f"(now {config.lr}) or check the data")
            if (config.checkpoint_every and done < total
                    and (done * B) // config.checkpoint_every > (step * B) // config.checkpoint_every):
                state = {"config": config.to_dict(), "hooks": {h: st.state_dict() for h, st in states.items()},
                         "tokens": done * B, "data": source.state(), "format_version": FORMAT_VERSION,
                         "world_size": dinfo.world_size, "distribute_hooks": by_hook}
                if by_hook:
                    # write, wait until every rank has step ``done``, then prune: some step is
                    # always complete on every rank (see training.checkpoint)
                    save_checkpoint(run_dir, done, {**state, "rank": dinfo.rank, "all_hooks": all_hooks},
                                    keep=None, rank=dinfo.rank)
                    distributed.barrier()
                    prune_checkpoints(run_dir, config.keep_checkpoints, dinfo.rank)
                elif dinfo.is_main:
                    save_checkpoint(run_dir, done, state, keep=config.keep_checkpoints)
                if dinfo.is_main:
                    refresh_training_curves(run_dir)
    finally:
        batches.close()
        logger.close()
        if dinfo.is_main:  # also after a failure (a loss gone NaN): the curves show how it went
            refresh_training_curves(run_dir)

    for h, st in states.items():  # select="pruned": rows past the repair capacity (rare)
        n = int(st.fast.inexact_rows_total) if st.fast is not None else 0
        if n:
            log.warning("%s: %d token rows of this run (since its start or resume) had a top-k "
                        "that may have missed a latent (topk_select='pruned', more saturated "
                        "rows in a batch than its repair capacity); topk_select='fused' or "
                        "'torch' is exact", h, n)  # fmt: skip
    # data-dependent inference settings (the BatchTopK threshold) from a fixed sample, so a
    # resumed run ends the same; every data-parallel rank draws the same sample
    from saelens_lite.saes import SAE

    finish = [h for h, st in states.items() if type(st.sae).finish_training_ is not SAE.finish_training_]
    tail = source.sample(config.init_sample_tokens, seed=config.seed + 1) if finish else {}
    saes = {}
    for h, st in states.items():
        sae = copy.deepcopy(st.sae).eval()
        if h in finish:
            sae.finish_training_(tail[h].to(device, torch.float32) * st.scale)
        if config.target_hook:  # raw x in, raw y out
            sae.fold_input_scale_(st.scale, target_scale=st.target_scale)
        elif st.scale != 1.0:
            sae.fold_input_scale_(st.scale)
        if dinfo.is_main or by_hook:  # distributed hooks: each rank saves its own
            out = run_dir / _safe_dirname(h)
            if out.exists():
                shutil.rmtree(out)
            sae.save(out)
        saes[h] = sae
    distributed.barrier()  # every rank returns once the SAEs are on disk
    if by_hook:
        log.info("rank %d saved %s to %s", dinfo.rank, ", ".join(hooks), run_dir)
        return saes
    if dinfo.is_main:
        log.info("saved %s to %s", ", ".join(hooks), run_dir)
    return saes[hooks[0]] if len(hooks) == 1 else saes


def _per_rank_hint(run_dir: Path) -> str | None:
    """An error for a run that is not distributing hooks but finds per-rank checkpoints."""
    ranks = checkpoint_ranks(run_dir)
    if not ranks:
        return None
    path = latest_checkpoint(run_dir, ranks[0])
    world = load_checkpoint(path).get("world_size", len(ranks))
    return (f"resume: {run_dir} holds the per-rank checkpoints of a distribute_hooks run on {world} "
            f"processes ({path.parent.parent}/rank_*); resume it under torchrun with {world} "
            "processes and distribute_hooks=True (--distribute-hooks)")


def _check_checkpoint(config: TrainConfig, ckpt: dict, path: Path, world_size: int,
                      hooks: list[str], widths: dict[str, int]) -> str | None:
    """What makes ``ckpt`` unusable for this run (None: nothing): another world size, a
    config change that would change the weights, other hooks or widths."""
    saved_world = ckpt.get("world_size", 1)
    if saved_world != world_size:
        return (f"resume: {path} was written by a run on {saved_world} process(es), this run "
                f"has WORLD_SIZE={world_size}; resume with the same number of processes "
                f"(torchrun --nproc_per_node ... x --nnodes ... = {saved_world})")
    diff = config.resume_mismatch(ckpt["config"])
    if diff:
        f, more = diff[0], f" (also differing: {diff[1:]})" if len(diff) > 1 else ""
        return (f"resume: {f}={getattr(config, f)!r} differs from the checkpoint's "
                f"{f}={ckpt['config'].get(f)!r}{more}; it would change the weights")
    if sorted(ckpt["hooks"]) != sorted(hooks):
        return f"resume: hooks {hooks} differ from the checkpoint's {sorted(ckpt['hooks'])}"
    for h in hooks:
        w = ckpt["hooks"][h]["sae"]["W_dec"].shape[1]
        if w != widths[h]:
            return f"hook {h!r}: the data has width {widths[h]}, the checkpoint {w}"
    return None


def _resume_point(config: TrainConfig, run_dir: Path, source: DataSource,
                  world_size: int = 1) -> dict | None:
    """The checkpoint to resume from (None: fresh run); refuses a config, data or world-size
    mismatch, and the per-rank checkpoints of a distributed-hooks run."""
    path = latest_checkpoint(run_dir)
    if not config.resume:
        if has_checkpoints(run_dir):
            raise ValueError(f"out_dir={str(run_dir)!r}: holds checkpoints of an earlier run; pass "
                             "resume=True to continue it or choose another out_dir")
        return None
    if path is None:
        hint = _per_rank_hint(run_dir)
        if hint:
            raise ValueError(hint)
        log.warning("resume=True but %s holds no checkpoint; starting from scratch", run_dir)
        return None
    ckpt = load_checkpoint(path)
    error = _check_checkpoint(config, ckpt, path, world_size, targets.input_hooks(config, source.hooks),
                              source.widths)
    if error:
        raise ValueError(error)
    return ckpt


def _resume_point_by_hook(config: TrainConfig, run_dir: Path, source: DataSource,
                          all_hooks: list[str], dinfo: distributed.DistInfo) -> dict | None:
    """This rank's checkpoint to resume a distributed-hooks run from (None: fresh run).

    Each rank lists its own files; the run resumes from the newest step every rank holds (a
    crash between two ranks' writes leaves the newer step on some ranks only), and each rank
    drops its files past that step. Refuses, on every rank alike: checkpoints of a
    data-parallel run, another world size, a config change, other hooks."""
    r, W = dinfo.rank, dinfo.world_size
    if not config.resume:
        distributed.agree(f"out_dir={str(run_dir)!r}: holds checkpoints of an earlier run; pass "
                          "resume=True to continue it or choose another out_dir"
                          if has_checkpoints(run_dir) else None)
        return None
    steps = distributed.all_gather_object([checkpoint_step(p) for p in list_checkpoints(run_dir, r)])
    if not any(steps):
        path = latest_checkpoint(run_dir)
        distributed.agree(None if path is None else
                          f"resume: {run_dir} holds the checkpoints of a run on "
                          f"{load_checkpoint(path).get('world_size', 1)} process(es) without "
                          f"distribute_hooks ({path}); resume it the way it ran")
        log.warning("resume=True but %s holds no checkpoint; starting from scratch", run_dir)
        return None
    common = set(steps[0]).intersection(*steps[1:])
    step = max(common) if common else None
    path = (checkpoint_dir(run_dir, r) / f"step_{step:09d}.pt" if step is not None
            else latest_checkpoint(run_dir, r))
    error, ckpt = None, None
    if path is None:
        error = (f"resume: rank {r} of WORLD_SIZE={W} has no checkpoint in {checkpoint_dir(run_dir, r)}; "
                 f"the run's checkpoints cover ranks {checkpoint_ranks(run_dir)}: resume with the "
                 "same number of processes")
    else:
        ckpt = load_checkpoint(path)
        error = _check_checkpoint(config, ckpt, path, W, targets.input_hooks(config, source.hooks),
                                  source.widths)
        if error is None and list(ckpt.get("all_hooks", all_hooks)) != list(all_hooks):
            error = f"resume: hooks {all_hooks} differ from the checkpoint's {ckpt['all_hooks']}"
        if error is None and step is None:
            error = (f"resume: no checkpoint step is held by every rank (steps per rank: {steps}) "
                     f"in {checkpoint_dir(run_dir)}")
    distributed.agree(error)
    prune_checkpoints(run_dir, config.keep_checkpoints, r, after=step)
    return ckpt


class _Prefetcher:
    """Reads the next batches in a background thread so data loading overlaps the SAE step.
    Order is kept, and the sources draw only from their own seeded generators, so the batches
    (and the global RNG state) are those of a plain loop."""

    DEPTH = 2
    """Batches queued ahead. At most DEPTH + 3 batches are referenced at once (one being made,
    DEPTH queued, one being trained on, the previous one until its name is rebound), so a
    source may recycle DEPTH + 4 output buffers."""

    def __init__(self, it, depth: int = DEPTH):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(it,), daemon=True, name="sae-data")
        self._thread.start()

    def _run(self, it) -> None:
        try:
            for item in it:
                while not self._stop.is_set():
                    try:
                        self._q.put(("ok", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as e:  # handed to the training thread
            self._q.put(("err", e))
            return
        self._q.put(("err", RuntimeError("data source ended; sources must be endless")))

    def __next__(self):
        kind, item = self._q.get()
        if kind == "err":
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _train_step(hook: str, st: _HookState, x_BD: torch.Tensor, step: int, config: TrainConfig,
                device: torch.device, global_batch: int, y_BD: torch.Tensor | None = None):
    """One step on inputs ``x_BD``; ``y_BD``: a transcoder's targets (None: reconstruct x)."""
    sae = st.sae
    sae.train()
    # in the source's dtype across (a 16-bit cache: half the bytes), then upcast on the device
    x_BD = x_BD.to(device, non_blocking=True).to(torch.float32) * st.scale
    target = {}
    if y_BD is not None:
        target["target_BD"] = y_BD.to(device, non_blocking=True).to(torch.float32) * st.target_scale
    lr = lr_at(step, config, st.base_lr)
    sp = sparsity_scale_at(step, config)
    st.set_lr(lr)  # in place for the fast step: a captured graph reads the tensor
    dead = st.dead.dead_mask()
    if st.fast is not None and step * global_batch <= st.dead.window:
        dead = None  # no latent can be dead yet: no mask, so the fast step skips AuxK selection
    out = st.step(x_BD, dead, sparsity_scale=sp, **target)
    _reduce_step(st, out)
    st.dead.update(out.fired_F, global_batch)
    return out, lr, sp


def _reduce_step(st: _HookState, out) -> None:
    """Data parallel: average the floating buffers and OR the fired masks over ranks (in place
    in ``out.fired_F``); nothing otherwise."""
    if st.data_parallel:
        distributed.average_buffers_(st.sae)
        distributed.all_reduce_(out.fired_F, "max")


def _record(hook: str, r, st: _HookState, done: int, B: int) -> dict:
    """One metrics record; data parallel, loss terms, l0 and fvu are averaged over ranks (means
    of equal-sized slices, so loss, mse and l0 equal their global-batch values; fvu is the ranks'
    mean)."""
    out, lr, sp = r
    losses = out.losses
    names = list(losses)
    vals = torch.stack([torch.as_tensor(v).detach().float().reshape(()).to(out.loss.device)
                        for v in [out.loss, out.l0, out.fvu, *(losses[n] for n in names)]])
    if st.data_parallel:
        vals = distributed.all_reduce_(vals, "mean")
    vals = vals.tolist()
    rec = {"hook": hook, "step": done, "tokens": done * B, "loss": vals[0]}
    rec.update(zip(names, vals[3:]))
    rec.update(l0=vals[1], fvu=vals[2], dead_fraction=st.dead.dead_fraction(),
               lr=lr, sparsity_scale=sp)
    return rec


__all__ = ["train", "lr_at", "sparsity_scale_at", "DeadLatentTracker", "build_sae",
           "normalization_scale", "autocast_dtype"]
