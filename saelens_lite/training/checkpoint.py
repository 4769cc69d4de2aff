"""Atomic, resumable training checkpoints.

A checkpoint is one ``torch.save`` file ``RUN_DIR/checkpoints/step_XXXXXXXXX.pt`` holding
everything the next step depends on: per hook the SAE weights, the Adam state, the dead-latent
counters and the normalisation scale; plus the step (= batch index of the data stream, so the
source skips exactly there), the tokens seen, the torch / numpy / python (and CUDA) RNG states
and the config. It is written to a temp file, fsynced and renamed (``os.replace``), so a crash
at any instant (even ``kill -9``) leaves the previous checkpoint intact. The newest
``keep`` checkpoints are kept.

Runs with ``distribute_hooks`` under torchrun write one file per rank and step instead,
``RUN_DIR/checkpoints/rank_RRRRR/step_XXXXXXXXX.pt``, holding that rank's hooks and RNG states.
Every rank writes step s, then all meet at a barrier, and only then does each prune its older
files: whatever instant a crash hits, some step is complete on every rank, and the trainer
resumes from the newest such step (:func:`list_checkpoints` with ``rank``).
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import numpy as np
import torch

from saelens_lite.util.atomic import atomic_open, fsync_dir

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d{9})\.pt$")
_RANK_DIR = re.compile(r"^rank_(\d{5})$")


def checkpoint_dir(run_dir: str | Path, rank: int | None = None) -> Path:
    """``RUN_DIR/checkpoints``, or rank ``rank``'s folder in it (distributed hooks)."""
    d = Path(run_dir) / "checkpoints"
    return d if rank is None else d / f"rank_{rank:05d}"


def list_checkpoints(run_dir: str | Path, rank: int | None = None) -> list[Path]:
    """Complete checkpoints in ``run_dir`` (of rank ``rank`` of a distributed-hooks run when
    given), oldest first."""
    d = checkpoint_dir(run_dir, rank)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def latest_checkpoint(run_dir: str | Path, rank: int | None = None) -> Path | None:
    ckpts = list_checkpoints(run_dir, rank)
    return ckpts[-1] if ckpts else None


def checkpoint_step(path: str | Path) -> int:
    """The step in a checkpoint's file name."""
    m = _NAME.match(Path(path).name)
    if m is None:
        raise ValueError(f"{str(path)!r} is not a checkpoint file name (step_XXXXXXXXX.pt)")
    return int(m.group(1))


def checkpoint_ranks(run_dir: str | Path) -> list[int]:
    """Ranks with at least one per-rank checkpoint (a distributed-hooks run), ascending."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _RANK_DIR.match(p.name))
                  and list_checkpoints(run_dir, int(m.group(1))))


def has_checkpoints(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds any checkpoint, of either layout."""
    return bool(list_checkpoints(run_dir) or checkpoint_ranks(run_dir))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, step: int, state: dict, *, keep: int | None = 2,
                    rank: int | None = None) -> Path:
    """Atomically write ``state`` (plus the RNG states) as the checkpoint of ``step`` (in rank
    ``rank``'s folder when given) and drop all but the newest ``keep`` (None: drop none; see
    :func:`prune_checkpoints`)."""
    d = checkpoint_dir(run_dir, rank)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:09d}.pt"
    with atomic_open(path) as f:
        torch.save({**state, "step": step, "rng": rng_state()}, f)
    if keep is not None:
        prune_checkpoints(run_dir, keep, rank)
    log.debug("checkpoint %s", path)
    return path


def prune_checkpoints(run_dir: str | Path, keep: int, rank: int | None = None, *,
                      after: int | None = None) -> None:
    """Drop all but the newest ``keep`` checkpoints (of rank ``rank`` when given); with
    ``after``, first drop those of steps past it (left by a crashed run that is resumed
    from an earlier step, they belong to a timeline that no longer exists)."""
    d = checkpoint_dir(run_dir, rank)
    ckpts = list_checkpoints(run_dir, rank)
    if after is not None:
        for p in [p for p in ckpts if checkpoint_step(p) > after]:
            p.unlink(missing_ok=True)
        ckpts = [p for p in ckpts if checkpoint_step(p) <= after]
    for old in ckpts[:-keep]:
        old.unlink(missing_ok=True)
    if d.is_dir():
        fsync_dir(d)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint (its RNG states are restored by the caller via :func:`set_rng_state`)."""
    return torch.load(path, map_location="cpu", weights_only=False)


__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints",
           "rng_state", "set_rng_state", "checkpoint_dir", "checkpoint_step", "checkpoint_ranks",
           "has_checkpoints", "prune_checkpoints"]
