"""The training loop: one SAE per hook, all fed from one data stream.

Per step ``s`` (0-based) and hook::

    x_BD  = c * batch[hook]                       # c: fixed normalisation scale
    out   = sae.training_forward(x_BD, sparsity_scale=sparsity_scale_at(s), dead_mask_F)
    out.loss.backward(); sae.before_optimizer_step_(); clip; Adam(lr_at(s)); sae.after_optimizer_step_()

A transcoder (``config.sae.target_hook``, :mod:`saelens_lite.training.targets`) also gets
``target_BD = c_y * batch[target]``, the same rows of its target hook with the target's own
scale ``c_y``. With patterns (``hooks=["blocks.*.hook_mlp_in"]``, ``target_hook=
"blocks.*.hook_mlp_out"``) every pair is a hook of the same loop: one batch, so one model
forward per batch when streaming, feeds every coder. Each hook's SAE is initialised right after
``torch.manual_seed(seed)`` (``run_setup.build_states``) and sees the same batches as alone, so
a pair trained among others equals its one-pair run (no step draws from a shared RNG, except
the fast step's rare random AuxK candidates; see below).

The SAE is known only through the registry interface (``saelens_lite.saes``). Dead latents:
a latent that has not fired for more than ``dead_window_tokens`` tokens is dead; the mask is
passed to ``training_forward`` (AuxK, Gao et al. 2024 Sec. A.2) and its mean is reported.

Resume is exact: the checkpoint holds everything step ``s`` reads (weights, Adam state, counters,
RNG states) and the data source restarts at batch ``s``, so a resumed run ends bit-identical to
an uninterrupted one wherever the kernels are deterministic (CPU: always; CUDA: relu/jumprelu yes,
the sparse TopK kernels are not: there two uninterrupted runs already differ in the last bits).

Data parallel (``torchrun``, see :mod:`saelens_lite.util.distributed`): the global batch is still
``batch_size``; rank r of W trains on rows ``[r B/W, (r+1) B/W)`` of each global batch. After
``backward`` the gradients are averaged over ranks (an explicit all-reduce instead of DDP, which
does not fit the custom kernels and decoder-norm hooks), the dead-latent "fired" masks are OR-ed,
and after the step floating buffers (the BatchTopK threshold) are averaged; metrics are averaged
at log steps. A loss non-linear in a batch mean (JumpReLU's target-L0 penalty) reads the global
mean through ``util.distributed.current_batch_mean`` (the step enters ``batch_statistics``), so its
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

This module holds :func:`train` as a sequence of named phases (set-up, the loop, record,
checkpoint, finish) and the per-step glue (step, reductions, metrics record); the pieces it runs
live beside it: the set-up (the run, the hook states, a fresh run's init) in
:mod:`~saelens_lite.training.run_setup`, the schedules in
:mod:`~saelens_lite.training.schedules`, the dead-latent counter in
:mod:`~saelens_lite.training.dead_latents`, a hook's SAE, Adam and step in
:mod:`~saelens_lite.training.hook_state`, the choice of checkpoint to resume from in
:mod:`~saelens_lite.training.resume` and the background data thread in
:mod:`~saelens_lite.training.prefetch`.

Shapes: B batch, D width, F latents.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import shutil
from collections.abc import Callable

import torch

from saelens_lite.training import targets
from saelens_lite.training.checkpoint import prune_checkpoints, save_checkpoint, set_rng_state
from saelens_lite.training.config import TrainConfig
from saelens_lite.training.curves import refresh_training_curves
from saelens_lite.training.dead_latents import DeadLatentTracker
from saelens_lite.training.diagnostics import preact_quantiles, supports_preact_quantiles
from saelens_lite.training.hook_state import (
    HookState,
    autocast_dtype,
    build_sae,
    clip_rows,
    lr_note,
    make_adam,
    normalization_scale,
)
from saelens_lite.training.logging import RunLogger
from saelens_lite.training.prefetch import Prefetcher
from saelens_lite.training.resume import resume_point, resume_point_by_hook
from saelens_lite.training.run_setup import TrainRun, build_states, init_from_data, open_run
from saelens_lite.training.schedules import lr_at, sparsity_scale_at
from saelens_lite.util import distributed
from saelens_lite.util.atomic import write_json

log = logging.getLogger(__name__)

OnBatch = Callable[[int, dict[str, torch.Tensor]], None]
"""``on_batch(step, {hook: x_BD})``: see :func:`train`."""

FORMAT_VERSION = 1

def train(config: TrainConfig, data=None, *, on_batch: OnBatch | None = None):
    """Train one SAE per hook of ``data`` and save each to ``out_dir/<hook>/``.

    ``data``: an ActivationCache or its folder, an ``.npy`` / ``.safetensors`` file of (N, D),
    a tensor / array (N, D), a ``{hook: tensor}`` dict, a :class:`DataSource`, or None (use
    ``config.activations`` or stream from ``config.model``). Returns the trained SAE, or a
    ``{hook: SAE}`` dict when there are several hooks; under torchrun with
    ``config.distribute_hooks``, always a dict holding this rank's hooks only. Every check on
    the config and the data runs before the first step.

    ``on_batch(step, {hook: x_BD})``: called before step ``step`` (0-based) with the raw input
    rows this process is about to train each of its hooks on (data parallel: this rank's slice
    of the global batch; distributed hooks: this rank's hooks only). The step reads these very
    tensors after the call, so a callback that writes into them changes the step (a data
    transform, or a fault injected in a test); it must not keep them past the call (the source
    may reuse the buffers).
    """
    run = open_run(config, data)
    states = build_states(run)
    start = _start_step(run, states)
    _log_plan(run, states)
    _train_loop(run, states, start, on_batch)
    _warn_inexact_rows(states)
    return _returned(run, _finish(run, states))


def _start_step(run: TrainRun, states: dict[str, HookState]) -> int:
    """Set-up: the step to start at. Resume from the newest usable checkpoint, or initialise
    from a data sample and write ``config.json`` (a fresh run starts at 0)."""
    if run.by_hook:
        ckpt = resume_point_by_hook(run.config, run.run_dir, run.source, run.all_hooks, run.dinfo)
    else:
        ckpt = resume_point(run.config, run.run_dir, run.source, run.all_hooks, run.dinfo.world_size)
    if ckpt is not None:
        for h, st in states.items():
            st.load_state_dict(ckpt["hooks"][h])
        set_rng_state(ckpt["rng"])
        start = ckpt["step"]
        log.info("resuming %s at step %d (%d tokens)", run.run_dir, start, start * run.config.batch_size)
        return start
    init_from_data(run, states)
    _write_run_config(run)
    return 0


def _write_run_config(run: TrainRun) -> None:
    """Create the run folder and (rank 0) write ``config.json``; every rank waits for it."""
    if run.by_hook:  # every rank writes files (out_dir need not be on a shared filesystem)
        run.run_dir.mkdir(parents=True, exist_ok=True)
    if run.dinfo.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run.run_dir / "config.json", {**run.config.to_dict(), "format_version": FORMAT_VERSION,
                                                 "widths": run.all_widths, "n_tokens": run.source.n_tokens})
    distributed.barrier()


def _log_plan(run: TrainRun, states: dict[str, HookState]) -> None:
    """Log what each hook trains and how long the run is."""
    config, dinfo, source = run.config, run.dinfo, run.source
    total, B = config.steps, config.batch_size
    for h, st in states.items():
        clip = "" if st.max_norm is None else f", rows clipped at norm {st.max_norm:.4g}"
        log.info("%s: %s d_in=%d d_sae=%d %s, lr=%.3g%s, scale=%.4g%s", h,
                 targets.describe(config, h, run.pairs.target(h)),
                 source.widths[h], st.sae.cfg.d_sae, config.sae.architecture, st.base_lr, lr_note(config, st),
                 st.scale, clip)
    fast = next(iter(states.values())).fast
    log.info("training %d steps x %d tokens on %s%s%s (%s)%s", total, B, run.device,
             " with bf16 autocast" if run.amp is not None else "",
             "" if fast is None else " with the fast step" + (" in a CUDA graph" if fast.use_graph else ""),
             f"{total * B / source.n_tokens:.2f} passes over the data" if source.n_tokens else "streaming",
             f", rank {dinfo.rank} of {dinfo.world_size}" if dinfo.distributed else "")
    if run.by_hook:
        log.info("rank %d of %d trains hooks %s of %d", dinfo.rank, dinfo.world_size, run.hooks,
                 len(run.all_hooks))


def _train_loop(run: TrainRun, states: dict[str, HookState], start: int, on_batch: OnBatch | None) -> None:
    """The loop: steps ``start`` to ``config.steps``, each a step per hook, a metrics record at
    log steps and a checkpoint when due. The curves are redrawn at the end, also after a failure."""
    config, source = run.config, run.source
    total, B = config.steps, config.batch_size
    logger = RunLogger(run.run_dir, config, total_steps=total, start_step=start, enabled=run.dinfo.is_main)
    # a source may recycle output buffers (see Prefetcher); user sources may lack the option
    reuse = {"reuse": Prefetcher.DEPTH + 4} if "reuse" in inspect.signature(source.batches).parameters else {}
    batches = Prefetcher(source.batches(B, seed=config.seed, start_batch=start, **reuse))
    try:
        for step in range(start, total):
            batch = next(batches)
            xs = {h: batch[h][run.rows] for h in states}
            if on_batch is not None:
                on_batch(step, xs)
            records = [_train_step(h, st, xs[h], step, config, run.device, B, _target_rows(run, batch, h))
                       for h, st in states.items()]
            logger.step()
            done = step + 1
            if _log_due(config, step):
                _log_records(run, states, records, done, logger)
            if _checkpoint_due(config, step):
                _checkpoint(run, states, done)
    finally:
        batches.close()
        logger.close()
        if run.dinfo.is_main:  # also after a failure (a loss gone NaN): the curves show how it went
            refresh_training_curves(run.run_dir)


def _log_records(run: TrainRun, states: dict[str, HookState], records: list, done: int,
                 logger: RunLogger) -> None:
    """Write the metrics of step ``done``; stop the run if a loss is not finite."""
    recs = [_record(h, r, states[h], done, run.config.batch_size) for h, r in zip(run.hooks, records)]
    if run.by_hook:  # every rank gets every hook's record, in config order
        order = {h: i for i, h in enumerate(run.all_hooks)}
        recs = sorted((r for part in distributed.all_gather_object(recs) for r in part),
                      key=lambda r: order[r["hook"]])
    logger.log(recs)
    bad = [r["hook"] for r in recs if not math.isfinite(r["loss"])]
    if bad:
        raise FloatingPointError(f"loss of {bad} is not finite at step {done}; lower lr "
                                 f"(now {run.config.lr}) or check the data")


def _log_due(config: TrainConfig, step: int) -> bool:
    """Whether step ``step`` (0-based) writes a metrics record: every ``log_every`` steps and the last."""
    done = step + 1
    return done % config.log_every == 0 or done == config.steps


def _checkpoint_due(config: TrainConfig, step: int) -> bool:
    """Whether step ``step`` (0-based) crossed a multiple of ``checkpoint_every`` tokens before
    the last step (the end of the run saves the SAEs instead)."""
    done, B = step + 1, config.batch_size
    return bool(config.checkpoint_every and done < config.steps
                and (done * B) // config.checkpoint_every > (step * B) // config.checkpoint_every)


def _checkpoint(run: TrainRun, states: dict[str, HookState], done: int) -> None:
    """Checkpoint: save everything step ``done`` reads (see training.checkpoint), prune old
    checkpoints and (rank 0) redraw the curves."""
    config, dinfo = run.config, run.dinfo
    state = {"config": config.to_dict(), "hooks": {h: st.state_dict() for h, st in states.items()},
             "tokens": done * config.batch_size, "data": run.source.state(), "format_version": FORMAT_VERSION,
             "world_size": dinfo.world_size, "distribute_hooks": run.by_hook}
    if run.by_hook:
        # write, wait until every rank has step ``done``, then prune: some step is
        # always complete on every rank (see training.checkpoint)
        save_checkpoint(run.run_dir, done, {**state, "rank": dinfo.rank, "all_hooks": run.all_hooks},
                        keep=None, rank=dinfo.rank)
        distributed.barrier()
        prune_checkpoints(run.run_dir, config.keep_checkpoints, dinfo.rank)
    elif dinfo.is_main:
        save_checkpoint(run.run_dir, done, state, keep=config.keep_checkpoints)
    if dinfo.is_main:
        refresh_training_curves(run.run_dir)


def _warn_inexact_rows(states: dict[str, HookState]) -> None:
    """select="pruned": warn about rows past the repair capacity (rare)."""
    for h, st in states.items():
        n = int(st.fast.inexact_rows_total) if st.fast is not None else 0
        if n:
            log.warning("%s: %d token rows of this run (since its start or resume) had a top-k "
                        "that may have missed a latent (topk_select='pruned', more saturated "
                        "rows in a batch than its repair capacity); topk_select='fused' or "
                        "'torch' is exact", h, n)  # fmt: skip


def _finish(run: TrainRun, states: dict[str, HookState]) -> dict:
    """Finish: each hook's inference SAE (data-dependent settings, scale folded in), saved to
    ``out_dir/<hook>/``; every rank returns once the SAEs are on disk."""
    # data-dependent inference settings (the BatchTopK threshold) from a fixed sample, so a
    # resumed run ends the same; every data-parallel rank draws the same sample
    from saelens_lite.saes import SAE

    config = run.config
    finish = [h for h, st in states.items() if type(st.sae).finish_training_ is not SAE.finish_training_]
    tail = run.source.sample(config.init_sample_tokens, seed=config.seed + 1) if finish else {}
    saes = {}
    for h, st in states.items():
        sae = _inference_sae(config, run.device, st, tail[h] if h in finish else None)
        if run.dinfo.is_main or run.by_hook:  # distributed hooks: each rank saves its own
            out = run.run_dir / _safe_dirname(h)
            if out.exists():
                shutil.rmtree(out)
            sae.save(out)
        saes[h] = sae
    distributed.barrier()  # every rank returns once the SAEs are on disk
    return saes


def _inference_sae(config: TrainConfig, device: torch.device, st: HookState, tail_ND: torch.Tensor | None):
    """A copy of the trained SAE in eval mode, finished on ``tail_ND`` (None: its class has no
    ``finish_training_``) and taking raw activations (the normalisation scales folded in)."""
    sae = copy.deepcopy(st.sae).eval()
    if tail_ND is not None:
        sae.finish_training_(tail_ND.to(device, torch.float32) * st.scale)
    if sae.is_transcoder:  # raw x in, raw y out
        sae.fold_input_scale_(st.scale, target_scale=st.target_scale)
    elif st.scale != 1.0:
        sae.fold_input_scale_(st.scale)
    return sae


def _target_rows(run: TrainRun, batch: dict, hook: str) -> torch.Tensor | None:
    """This rank's rows of ``hook``'s transcoder target in ``batch`` (None: an SAE)."""
    target = run.pairs.target(hook)
    return batch[target][run.rows] if target else None


def _returned(run: TrainRun, saes: dict):
    """What :func:`train` returns (see there), logging where the SAEs went."""
    if run.by_hook:
        log.info("rank %d saved %s to %s", run.dinfo.rank, ", ".join(run.hooks), run.run_dir)
        return saes
    if run.dinfo.is_main:
        log.info("saved %s to %s", ", ".join(run.hooks), run.run_dir)
    return saes[run.hooks[0]] if len(run.hooks) == 1 else saes


def _safe_dirname(hook: str) -> str:
    return hook.replace("/", "_").replace("\\", "_")


def _train_step(hook: str, st: HookState, x_BD: torch.Tensor, step: int, config: TrainConfig,
                device: torch.device, global_batch: int, y_BD: torch.Tensor | None = None):
    """One step on inputs ``x_BD``; ``y_BD``: a transcoder's targets (None: reconstruct x)."""
    sae = st.sae
    sae.train()
    # in the source's dtype across (a 16-bit cache: half the bytes), then upcast on the device
    x_BD = x_BD.to(device, non_blocking=True).to(torch.float32) * st.scale
    if st.max_norm is not None:  # config.outlier_norm_ratio (rank-selected SAEs: TopK)
        x_BD = clip_rows(x_BD, st.max_norm)
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
    diag = {}
    if _log_due(config, step) and supports_preact_quantiles(sae):
        # how far the dead latents are from firing (training.diagnostics; this rank's rows)
        diag = preact_quantiles(sae, x_BD, st.dead.reported_dead_mask())
    return out, lr, sp, diag


def _reduce_step(st: HookState, out) -> None:
    """Data parallel: average the floating buffers and OR the fired masks over ranks (in place
    in ``out.fired_F``); nothing otherwise."""
    if st.data_parallel:
        distributed.average_buffers_(st.sae)
        distributed.all_reduce_(out.fired_F, "max")


def _record(hook: str, r, st: HookState, done: int, B: int) -> dict:
    """One metrics record; data parallel, loss terms, l0 and fvu are averaged over ranks (means
    of equal-sized slices, so loss, mse and l0 equal their global-batch values; fvu is the ranks'
    mean); the pre-activation quantiles (training.diagnostics) are this rank's rows'."""
    out, lr, sp, diag = r
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
               lr=lr, sparsity_scale=sp, **diag)
    rare = st.dead.rare_mask()
    if rare is not None:  # config.dead_min_rate: the share of latents AuxK treats as dead for their rate
        rec["rare_fraction"] = float(rare.float().mean())
    return rec


__all__ = ["train", "lr_at", "sparsity_scale_at", "DeadLatentTracker", "build_sae",
           "normalization_scale", "autocast_dtype", "make_adam"]
