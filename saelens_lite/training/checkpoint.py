"""Atomic, resumable training checkpoints.

A checkpoint is one ``torch.save`` file ``RUN_DIR/checkpoints/step_XXXXXXXXX.pt`` holding
everything the next step depends on: per hook the SAE weights, the Adam state, the dead-latent
counters and the normalisation scale; plus the step (= batch index of the data stream, so the
source skips exactly there), the tokens seen, the torch / numpy / python (and CUDA) RNG states
and the config. It is written to a temp file, fsynced and renamed (``os.replace``), so a crash
at any instant (even ``kill -9``) leaves the previous checkpoint intact. The newest
``keep`` checkpoints are kept.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from saelens_lite._atomic import TMP_SUFFIX, fsync_dir

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d{9})\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``run_dir``, oldest first."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


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


def save_checkpoint(run_dir: str | Path, step: int, state: dict, *, keep: int = 2) -> Path:
    """Atomically write ``state`` (plus the RNG states) as the checkpoint of ``step`` and drop
    all but the newest ``keep``."""
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:09d}.pt"
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        torch.save({**state, "step": step, "rng": rng_state()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(d)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    fsync_dir(d)
    log.debug("checkpoint %s", path)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint (its RNG states are restored by the caller via :func:`set_rng_state`)."""
    return torch.load(path, map_location="cpu", weights_only=False)


__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints",
           "rng_state", "set_rng_state", "checkpoint_dir"]
