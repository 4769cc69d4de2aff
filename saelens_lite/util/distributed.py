"""torch.distributed helpers: who am I, set up from ``torchrun``'s environment, all-reduce.

``torchrun`` (or Slurm + ``torchrun``) sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
:func:`setup` reads them and initialises the default process group once (``nccl`` when the
device is CUDA, ``gloo`` on CPU), pinning each process to ``cuda:LOCAL_RANK``. Without those
variables everything here is a no-op for a single process (rank 0 of 1), so library code calls
these helpers unconditionally.

Data parallelism in the trainer is explicit rather than ``DistributedDataParallel``: the SAEs
have custom autograd kernels, decoder-norm hooks around the optimiser step and buffers updated
in the forward (the BatchTopK threshold), so after ``backward`` the gradients are averaged with
:func:`all_reduce_grads_`, and after the step the floating buffers with
:func:`average_buffers_`. Every rank then holds the same weights. A loss term that is a
non-linear function S of a batch mean m (JumpReLU's target-L0 penalty) reads the global m
through :func:`batch_mean` and back-propagates S'(m_global) dm_local / dtheta on each rank, so
that the mean over ranks is the global batch's gradient S'(m_global) dm_global / dtheta.

Distributing hooks instead (``TrainConfig.distribute_hooks``, like EleutherAI sparsify's
``--distribute_modules``): :func:`assign_hooks` gives rank r the hooks ``hooks[r::W]``, each
trained on the whole global batch with no reductions at all; the ranks meet only to agree on
the resume point (:func:`all_gather_object`, :func:`agree`), at checkpoints and at log steps.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import datetime
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from saelens_lite.util.devices import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    """Global rank in [0, world_size)."""
    world_size: int = 1
    """Number of processes."""
    local_rank: int = 0
    """Rank on this node (picks the GPU)."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes shared files and logs metrics."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank / world / local rank from the ``torchrun`` environment (1 process when unset)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    return DistInfo(rank, world, local)


def info() -> DistInfo:
    """The initialised process group's rank and size, else the environment's."""
    if dist.is_available() and dist.is_initialized():
        env = env_info()
        return DistInfo(dist.get_rank(), dist.get_world_size(), env.local_rank)
    return env_info()


def device_for(device: str, local_rank: int) -> torch.device:
    """``auto``: ``cuda:LOCAL_RANK`` when CUDA is present, else CPU. A bare ``cuda`` becomes
    ``cuda:LOCAL_RANK`` too, so one command line serves every rank."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def setup(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Initialise the default process group from the environment when ``WORLD_SIZE > 1`` (once
    per process; an already initialised group is reused) and return (info, device)."""
    env = env_info()
    if not env.distributed:
        return env, resolve_device(device)
    dev = device_for(device, env.local_rank)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kw = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **kw)
        atexit.register(shutdown)
        log.info("rank %d/%d: %s process group on %s", env.rank, env.world_size, backend, dev)
    return info(), dev


def shutdown() -> None:
    """Tear the default process group down (also run at exit); a no-op without one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_(t: torch.Tensor, op: str = "mean") -> torch.Tensor:
    """In place over all ranks: ``mean``, ``sum``, ``max`` or ``min``. Bool tensors are reduced
    as integers (``max`` = any, ``min`` = all)."""
    if not _active():
        return t
    ops = {
        "mean": dist.ReduceOp.SUM,
        "sum": dist.ReduceOp.SUM,
        "max": dist.ReduceOp.MAX,
        "min": dist.ReduceOp.MIN,
    }
    if op not in ops:
        raise ValueError(f"op={op!r}: choose one of {sorted(ops)}")
    if t.dtype == torch.bool:
        if op in ("mean", "sum"):
            raise ValueError(f"op={op!r} is not defined for a bool tensor; use max or min")
        u = t.to(torch.uint8)
        dist.all_reduce(u, ops[op])
        t.copy_(u.bool())
        return t
    dist.all_reduce(t, ops[op])
    if op == "mean":
        t.div_(dist.get_world_size())
    return t


def all_reduce_grads_(params: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over ranks. A parameter without a gradient on some rank counts as a
    zero gradient there; one that has no gradient on any rank keeps ``grad = None`` (so Adam
    skips it exactly as in a single process)."""
    if not _active():
        return
    params = [p for p in params if p.requires_grad]
    has = torch.tensor(
        [p.grad is not None for p in params],
        dtype=torch.uint8,
        device=params[0].device if params else "cpu",
    )
    dist.all_reduce(has, dist.ReduceOp.MAX)
    for p, h in zip(params, has.tolist()):
        if not h:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        all_reduce_(p.grad, "mean")


@torch.no_grad()
def batch_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a per-rank batch statistic, as a new detached tensor (``t`` is left
    as it is). The ranks' slices of a global batch have equal sizes, so the mean over ranks of
    a per-token mean is its global-batch value. The trainer makes it the `current_batch_mean`
    of a data-parallel step for loss terms that are non-linear in such a statistic."""
    return all_reduce_(t.detach().clone(), "mean")


_BATCH_MEAN: contextvars.ContextVar[Callable[[torch.Tensor], torch.Tensor] | None] = \
    contextvars.ContextVar("saelens_lite_batch_mean", default=None)


@contextlib.contextmanager
def batch_statistics(mean: Callable[[torch.Tensor], torch.Tensor] | None = batch_mean) -> Iterator[None]:
    """Inside, `current_batch_mean()` is ``mean`` (None: the local batch is the whole batch).
    The trainer enters it around each data-parallel step: which batch a statistic is taken
    over is the trainer's policy, not a property of the SAE."""
    token = _BATCH_MEAN.set(mean)
    try:
        yield
    finally:
        _BATCH_MEAN.reset(token)


def current_batch_mean() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The mean over ranks of a per-rank batch statistic inside a data-parallel step; None
    elsewhere (one process, or distributed hooks: each rank holds whole batches)."""
    return _BATCH_MEAN.get()


@torch.no_grad()
def average_buffers_(module: torch.nn.Module) -> None:
    """Average every floating-point buffer (e.g. the BatchTopK threshold) over ranks."""
    for b in module.buffers():
        if b.is_floating_point():
            all_reduce_(b, "mean")


@torch.no_grad()
def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank."""
    if not _active():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s picklable ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` in one process)."""
    if not _active():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def agree(error: str | None) -> None:
    """Raise ``ValueError`` on every rank when any rank passes an error message (the lowest
    rank's message), so a check that fails on one rank cannot leave the others waiting in the
    next collective."""
    errors = [e for e in all_gather_object(error) if e is not None]
    if errors:
        raise ValueError(errors[0])


def assign_hooks(hooks: list[str], dinfo: DistInfo) -> list[str]:
    """The hooks rank r of W trains when hooks are distributed: ``hooks[r::W]`` (round robin in
    the given order, so ranks differ by at most one hook). Every rank needs at least one hook:
    fewer hooks than processes is an error naming both numbers (an idle rank would hold a GPU
    for nothing)."""
    if len(hooks) < dinfo.world_size:
        raise ValueError(
            f"distribute_hooks: {len(hooks)} hook(s) {list(hooks)} for WORLD_SIZE={dinfo.world_size} "
            f"processes; each process trains at least one hook, so start at most {len(hooks)} "
            "process(es) or train data parallel (without distribute_hooks)"
        )
    return list(hooks[dinfo.rank::dinfo.world_size])


def rank_slice(n: int, dinfo: DistInfo) -> slice:
    """Rows ``[r n / W, (r + 1) n / W)`` of a global batch of ``n`` rows (``n % W == 0``)."""
    if n % dinfo.world_size:
        raise ValueError(
            f"batch_size={n}: must be divisible by the number of processes "
            f"WORLD_SIZE={dinfo.world_size}"
        )
    per = n // dinfo.world_size
    return slice(dinfo.rank * per, (dinfo.rank + 1) * per)


__all__ = [
    "DistInfo",
    "env_info",
    "info",
    "setup", "shutdown",
    "device_for",
    "barrier",
    "all_reduce_",
    "all_reduce_grads_",
    "batch_mean",
    "batch_statistics",
    "current_batch_mean",
    "average_buffers_",
    "broadcast_module_",
    "broadcast_object",
    "all_gather_object",
    "agree",
    "assign_hooks",
    "rank_slice",
]
