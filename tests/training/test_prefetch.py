"""training.prefetch.Prefetcher: order, errors, and a close() that leaves no thread behind."""

import threading
import time

import pytest

from saelens_lite.training.prefetch import Prefetcher


def test_batches_come_in_order_and_a_source_error_reaches_the_consumer():
    def source():
        yield from range(5)
        raise KeyError("bad shard")

    p = Prefetcher(source())
    assert [next(p) for _ in range(5)] == list(range(5))
    with pytest.raises(KeyError, match="bad shard"):
        next(p)
    p.close()
    assert not p._thread.is_alive()


def test_an_ended_source_is_an_error():
    p = Prefetcher(iter([1]))
    assert next(p) == 1
    with pytest.raises(RuntimeError, match="sources must be endless"):
        next(p)
    p.close()


def test_close_waits_for_the_batch_in_progress():
    started, release = threading.Event(), threading.Event()

    def source():
        yield 0
        started.set()
        release.wait()  # a slow batch (a torch op in a real source)
        yield 1
        yield 2

    p = Prefetcher(source(), depth=1)
    assert next(p) == 0
    assert started.wait(5)
    threading.Timer(0.5, release.set).start()
    t0 = time.monotonic()
    p.close()
    assert time.monotonic() - t0 >= 0.4  # it waited for the batch, not just signalled
    assert not p._thread.is_alive()


def test_close_stops_a_thread_whose_error_found_the_queue_full():
    """The consumer stopped reading (its step failed) while the source failed too: the thread
    must not stay blocked on a full queue."""
    def source():
        yield from range(2)
        raise OSError("disk gone")

    p = Prefetcher(source(), depth=2)
    deadline = time.monotonic() + 5
    while p._q.qsize() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # the thread is now trying to queue the error
    p.close()
    assert not p._thread.is_alive()
