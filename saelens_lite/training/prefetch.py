"""Data loading in a background thread, so that it overlaps the SAE step."""

from __future__ import annotations

import queue
import threading


class Prefetcher:
    """Reads the next batches in a background thread so data loading overlaps the SAE step.
    Order is kept, and the sources draw only from their own seeded generators, so the batches
    (and the global RNG state) are those of a plain loop."""

    DEPTH = 2
    """Batches queued ahead. At most DEPTH + 3 batches are referenced at once (one being made,
    DEPTH queued, one being trained on, the previous one until its name is rebound), so a
    source may recycle DEPTH + 4 output buffers."""

    def __init__(self, it, depth: int = DEPTH):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(it,), daemon=True, name="sae-data")
        self._thread.start()

    def _run(self, it) -> None:
        try:
            for item in it:
                while not self._stop.is_set():
                    try:
                        self._q.put(("ok", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as e:  # handed to the training thread
            self._q.put(("err", e))
            return
        self._q.put(("err", RuntimeError("data source ended; sources must be endless")))

    def __next__(self):
        kind, item = self._q.get()
        if kind == "err":
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


__all__ = ["Prefetcher"]
