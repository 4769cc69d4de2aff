"""Worker for tests/training/test_distributed.py, run by ``torchrun``: train each job of a JSON list
``[{"config": {...TrainConfig fields}, "data": DATA, "expect_error": REGEX}]`` in turn.

DATA: an ``.npy`` file (one hook), a ``{hook: ".npy"}`` dict or a cache folder. With
``expect_error`` the job must raise a ValueError matching it; the message goes to
``<out_dir>/rank<r>_error.txt`` and the worker goes on. Records, in ``<out_dir>``:
``rank<r>_first_batch.json`` (the rows of the first hook trained at step 0),
``rank<r>_trained.json`` (``{hook: rows}`` of every hook trained at step 0),
``rank<r>_returned.json`` (the hooks ``train`` returned, or ``"SAE"`` for a bare SAE) and
``rank<r>_shards.json`` (the cache shard files whose data the rank mapped)."""

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch

from saelens_lite import cache
from saelens_lite.training import TrainConfig, train
from saelens_lite.util import distributed

_shard = cache.ShardedArray.shard
_trained: dict[str, int] = {}
_shards: set[str] = set()


def _out(config, name: str) -> Path:
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out / f"rank{distributed.info().rank}_{name}"


def _recorder(config):
    """``train``'s ``on_batch`` callback: record the rows of step 0 this rank trains."""
    def on_batch(step, xs):
        if step != 0:
            return
        first = next(iter(xs.values()))
        _out(config, "first_batch.json").write_text(
            json.dumps({"rows": first.shape[0], "first_row": first[0].tolist()}))
        _trained.update({h: x_BD.shape[0] for h, x_BD in xs.items()})
        _out(config, "trained.json").write_text(json.dumps(_trained))
    return on_batch


def _recording_shard(self, s):
    _shards.add(str(self.paths[s]))
    return _shard(self, s)


def _data(spec):
    if isinstance(spec, dict):
        return {h: torch.from_numpy(np.load(p)) for h, p in spec.items()}
    if spec.endswith(".npy"):
        return torch.from_numpy(np.load(spec))
    return spec  # a cache folder


def run(job: dict) -> None:
    config = TrainConfig.from_dict(job["config"])
    _trained.clear()
    _shards.clear()
    try:
        result = train(config, _data(job["data"]), on_batch=_recorder(config))
    except ValueError as e:
        if "expect_error" not in job or not re.search(job["expect_error"], str(e)):
            raise
        _out(config, "error.txt").write_text(str(e))
        return
    if "expect_error" in job:
        raise AssertionError(f"expected a ValueError matching {job['expect_error']!r}")
    _out(config, "returned.json").write_text(
        json.dumps(sorted(result) if isinstance(result, dict) else "SAE"))
    _out(config, "shards.json").write_text(json.dumps(sorted(_shards)))


def leave() -> None:
    """End a worker: leave together, tear the process group down, then exit with os._exit: no
    interpreter finalisation and no C++ static destructors. Rank 0 of a launch has twice (a
    fresh-clone CI run in session 16, a loaded `make test` in session 18) aborted with
    "terminate called without an active exception" after every job had run: the fault
    handler showed no Python frame on the main thread, so the script had finished and the
    abort came from teardown (a C++ std::thread destroyed while joinable; which one was not
    found, and 300 relaunches did not repeat it). Removing the exit-time process-group
    teardown and joining the data thread (both done) did not stop it."""
    distributed.barrier()
    distributed.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    cache.ShardedArray.shard = _recording_shard
    for job in json.loads(open(sys.argv[1]).read()):
        run(job)
    leave()
