"""Worker for tests/training/test_distributed.py, run by ``torchrun``: harvest ``HarvestConfig(**json)``
(argv[1]) into the folder argv[2]."""

import json
import os
import sys

from saelens_lite.cache.harvest import HarvestConfig, harvest
from saelens_lite.util import distributed

if __name__ == "__main__":
    harvest(HarvestConfig(**json.loads(open(sys.argv[1]).read())), sys.argv[2], progress=False)
    distributed.barrier()
    distributed.shutdown()
    # end without interpreter finalisation or C++ static destructors (see _dist_train.py)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
