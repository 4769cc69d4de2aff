"""Data loading in a background thread, so that it overlaps the SAE step."""

from __future__ import annotations

import logging
import queue
import threading

log = logging.getLogger(__name__)


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

    def _put(self, entry) -> bool:
        """Queue ``entry`` unless closed meanwhile; whether it was queued."""
        while not self._stop.is_set():
            try:
                self._q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it) -> None:
        try:
            for item in it:
                if not self._put(("ok", item)):
                    return
        except BaseException as e:  # handed to the training thread
            self._put(("err", e))
            return
        self._put(("err", RuntimeError("data source ended; sources must be endless")))

    def __next__(self):
        kind, item = self._q.get()
        if kind == "err":
            raise item
        return item

    def close(self) -> None:
        """Stop and wait for the thread: it ends once the batch it is making is done. A daemon
        thread left inside a torch op when the interpreter exits aborts the process ("terminate
        called without an active exception"), so this waits for it, warning every minute."""
        self._stop.set()
        waited = 0
        while self._thread.is_alive():
            self._thread.join(timeout=60)
            waited += 60
            if self._thread.is_alive():
                log.warning("the data thread has not stopped after %d s (a slow batch?); waiting", waited)


__all__ = ["Prefetcher"]
