"""Subprocess for the kill -9 resume test: a harvest slowed down per batch so it can be killed
between shard commits. Usage: python _harvest_worker.py OUT CORPUS SLEEP_SECONDS"""

import sys
import time

import saelens_lite.cache.harvest as h

out, corpus, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
_capture_rows = h.capture_rows


def slow_capture_rows(*args, **kwargs):
    for rows in _capture_rows(*args, **kwargs):
        time.sleep(delay)
        yield rows


h.capture_rows = slow_capture_rows
cfg = h.HarvestConfig(model="tiny-llama", hooks=["blocks.1.hook_resid_post", "blocks.2.hook_mlp_out"],
                      dataset=corpus, context_size=16, tokens=600, batch_size=3, shard_tokens=64, device="cpu")
h.harvest(cfg, out, progress=False)
