"""Worker for tests/training/test_distributed.py, run by ``torchrun``: harvest ``HarvestConfig(**json)``
(argv[1]) into the folder argv[2]."""

import json
import sys

from _dist_train import leave  # this folder is sys.path[0] when run as a script

from saelens_lite.cache.harvest import HarvestConfig, harvest

if __name__ == "__main__":
    harvest(HarvestConfig(**json.loads(open(sys.argv[1]).read())), sys.argv[2], progress=False)
    leave()
