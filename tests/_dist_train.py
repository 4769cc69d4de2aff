"""Worker for tests/test_distributed.py, run by ``torchrun``: train each job of a JSON list
``[{"config": {...TrainConfig fields}, "data": "x.npy"}]`` in turn. Records the rows each rank
trains on at its first step in ``<out_dir>/rank<r>_first_batch.json``."""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from saelens_lite import distributed
from saelens_lite.training import TrainConfig, train, trainer

_step = trainer._train_step


def _recording_step(hook, st, x_BD, step, config, *args):
    path = Path(config.out_dir) / f"rank{distributed.info().rank}_first_batch.json"
    if step == 0 and not path.exists():
        path.write_text(json.dumps({"rows": x_BD.shape[0], "first_row": x_BD[0].tolist()}))
    return _step(hook, st, x_BD, step, config, *args)


if __name__ == "__main__":
    trainer._train_step = _recording_step
    for job in json.loads(open(sys.argv[1]).read()):
        train(TrainConfig(**job["config"]), torch.from_numpy(np.load(job["data"])))
