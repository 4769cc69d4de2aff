"""Where a run resumes: the checkpoint to continue from, or None for a fresh run.

Resume is exact: the checkpoint holds everything step ``s`` reads (weights, Adam state, counters,
RNG states) and the data source restarts at batch ``s``. A checkpoint is refused when it cannot
continue this run: another world size, a config change that would change the weights
(``TrainConfig.resume_mismatch``), other hooks or widths. Without ``resume`` a folder holding
checkpoints is refused rather than overwritten.

Distributed hooks: each rank holds its own checkpoints (``checkpoints/rank_RRRRR/step_*.pt``,
see :mod:`saelens_lite.training.checkpoint`); resume continues from the newest step every rank
holds and refuses another world size or a switch between the two modes (data parallel and
distributed hooks), on every rank alike.
"""

from __future__ import annotations

import logging
from pathlib import Path

from saelens_lite.training.checkpoint import (
    checkpoint_dir,
    checkpoint_ranks,
    checkpoint_step,
    has_checkpoints,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
)
from saelens_lite.training.config import TrainConfig
from saelens_lite.training.data import DataSource
from saelens_lite.util import distributed

log = logging.getLogger(__name__)


def per_rank_hint(run_dir: Path) -> str | None:
    """An error for a run that is not distributing hooks but finds per-rank checkpoints."""
    ranks = checkpoint_ranks(run_dir)
    if not ranks:
        return None
    path = latest_checkpoint(run_dir, ranks[0])
    world = load_checkpoint(path).get("world_size", len(ranks))
    return (f"resume: {run_dir} holds the per-rank checkpoints of a distribute_hooks run on {world} "
            f"processes ({path.parent.parent}/rank_*); resume it under torchrun with {world} "
            "processes and distribute_hooks=True (--distribute-hooks)")


def check_checkpoint(config: TrainConfig, ckpt: dict, path: Path, world_size: int,
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
        saved = TrainConfig.from_dict(ckpt["config"]).value_of(f)
        return (f"resume: {f}={config.value_of(f)!r} differs from the checkpoint's "
                f"{f}={saved!r}{more}; it would change the weights")
    if sorted(ckpt["hooks"]) != sorted(hooks):
        return f"resume: hooks {hooks} differ from the checkpoint's {sorted(ckpt['hooks'])}"
    for h in hooks:
        w = ckpt["hooks"][h]["sae"]["W_dec"].shape[1]
        if w != widths[h]:
            return f"hook {h!r}: the data has width {widths[h]}, the checkpoint {w}"
    return None


def resume_point(config: TrainConfig, run_dir: Path, source: DataSource, hooks: list[str],
                  world_size: int = 1) -> dict | None:
    """The checkpoint to resume from (None: fresh run) for the input ``hooks``; refuses a
    config, data or world-size mismatch, and the per-rank checkpoints of a distributed-hooks run."""
    path = latest_checkpoint(run_dir)
    if not config.resume:
        if has_checkpoints(run_dir):
            raise ValueError(f"out_dir={str(run_dir)!r}: holds checkpoints of an earlier run; pass "
                             "resume=True to continue it or choose another out_dir")
        return None
    if path is None:
        hint = per_rank_hint(run_dir)
        if hint:
            raise ValueError(hint)
        log.warning("resume=True but %s holds no checkpoint; starting from scratch", run_dir)
        return None
    ckpt = load_checkpoint(path)
    error = check_checkpoint(config, ckpt, path, world_size, hooks, source.widths)
    if error:
        raise ValueError(error)
    return ckpt


def resume_point_by_hook(config: TrainConfig, run_dir: Path, source: DataSource,
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
        error = check_checkpoint(config, ckpt, path, W, [h for h in all_hooks if h in source.widths],
                                  source.widths)  # this rank's hooks: the source reads only them
        if error is None and list(ckpt.get("all_hooks", all_hooks)) != list(all_hooks):
            error = f"resume: hooks {all_hooks} differ from the checkpoint's {ckpt['all_hooks']}"
        if error is None and step is None:
            error = (f"resume: no checkpoint step is held by every rank (steps per rank: {steps}) "
                     f"in {checkpoint_dir(run_dir)}")
    distributed.agree(error)
    prune_checkpoints(run_dir, config.keep_checkpoints, r, after=step)
    return ckpt


__all__ = ["resume_point", "resume_point_by_hook", "check_checkpoint", "per_rank_hint"]
