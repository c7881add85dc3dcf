"""Prefetcher on the CPU: order, identity with the plain reader, errors, shutdown.

The CUDA path (pinned slots, side stream, events) runs only where a GPU is present
(benchmarks/perf/gpu_suite.py exercises it); its logic of slots, queues and hand-over is the one
tested here with ``threaded=True``.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from ssltk.data import BatchReader, epoch_batches
from ssltk.data.prefetch import Prefetcher, load_batch
from ssltk.store import VolumeStore


@pytest.fixture(scope="module")
def store(tmp_path_factory, make_tiny_store):
    return make_tiny_store(tmp_path_factory.mktemp("prefetch") / "tiny.h5", (1, 8, 8, 8), n=12)


def plan(seed=3, epoch=1):
    return epoch_batches(np.arange(12), 3, seed, epoch)


def reference(store, batches, columns=("age",)):
    reader = BatchReader(store, columns)
    return [(x.clone(), {k: v.clone() for k, v in m.items()})
            for x, m in (reader.read(rows) for rows in batches)]


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ssltk-prefetch"]


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_batches_equal_the_plain_readers_in_order(store, threaded, depth):
    batches = plan()
    ref = reference(store, batches)
    with Prefetcher(BatchReader(store, ["age"]), batches, depth=depth,
                    threaded=threaded) as source:
        got = [(x.clone(), m) for x, m in source]
    assert len(got) == len(ref) == 4
    for (x, m), (rx, rm) in zip(got, ref):
        assert torch.equal(x, rx) and torch.equal(m["age"], rm["age"])


class Gated(BatchReader):
    """A reader that reports each finished read (``done[k]``, batch k) and, for the batches
    in ``gates``, waits for ``gates[k]`` before reading."""

    def __init__(self, store, n: int, gates: dict[int, threading.Event] | None = None):
        super().__init__(store)
        self.done = [threading.Event() for _ in range(n)]
        self.gates, self.reads = gates or {}, 0

    def read(self, rows, out=None):
        k, self.reads = self.reads, self.reads + 1
        if k in self.gates:
            assert self.gates[k].wait(60), f"batch {k} was never let through"
        result = super().read(rows, out)
        self.done[k].set()
        return result


def test_a_held_batch_is_not_overwritten_while_the_next_ones_are_read(store):
    batches = plan()
    ref = reference(store, batches)
    reader = Gated(store, len(batches))
    source = Prefetcher(reader, batches, depth=2, threaded=True)
    first, _ = next(source)
    # depth 2, one slot held: the thread reads batch 1 into the other slot, then has none free
    assert reader.done[1].wait(60)
    assert torch.equal(first, ref[0][0])
    second, _ = next(source)  # ``first`` is now given back
    assert torch.equal(second, ref[1][0])
    source.close()


def test_take_checks_the_rows_and_channels_last_matches_load_batch(store):
    batches = plan()
    reader = BatchReader(store)
    with Prefetcher(BatchReader(store), batches, channels_last=True, threaded=True) as source:
        x, _ = source.take(batches[0])
        plain, _ = load_batch(reader, batches[0], torch.device("cpu"), channels_last=True)
        assert x.is_contiguous(memory_format=torch.channels_last_3d)
        assert torch.equal(x, plain)
        with pytest.raises(RuntimeError, match="does not match"):
            source.take(batches[0])  # the next batch is batches[1]
    assert not prefetch_threads()


@pytest.mark.parametrize("threaded", [False, True])
def test_an_error_in_the_reader_reaches_the_consumer_at_that_batch(store, threaded):
    class Failing(BatchReader):
        def read(self, rows, out=None):
            if 7 in rows:
                raise OSError("chunk 7 is corrupt")
            return super().read(rows, out)

    batches = [np.array([0, 1]), np.array([2, 3]), np.array([7, 8]), np.array([4, 5])]
    source = Prefetcher(Failing(store), batches, threaded=threaded)
    next(source), next(source)
    with pytest.raises(OSError, match="chunk 7 is corrupt"):
        next(source)
    with pytest.raises(StopIteration):
        next(source)  # closed by the error
    assert not prefetch_threads()


def test_early_exit_and_ctrl_c_stop_the_thread(store):
    many = [np.array([i % 12, (i + 1) % 12]) for i in range(200)]
    with Prefetcher(BatchReader(store), many, threaded=True) as source:
        next(source)
    assert not prefetch_threads()
    with pytest.raises(KeyboardInterrupt):
        with Prefetcher(BatchReader(store), many, threaded=True) as source:
            for k, _ in enumerate(source):
                if k == 3:
                    raise KeyboardInterrupt
    assert not prefetch_threads()
    with pytest.raises(StopIteration):
        next(source)


def test_the_consumer_waits_for_a_slow_reader_and_counts_it(store):
    waiting = threading.Event()

    class Watched(Prefetcher):
        def _wait(self):  # the consumer's clock runs from here on
            waiting.set()
            return super()._wait()

    class Slow(BatchReader):
        def read(self, rows, out=None):
            assert waiting.wait(60)  # the consumer is blocked on this batch, then
            time.sleep(0.05)  # slow work, not synchronisation: the consumer waits on the queue
            return super().read(rows, out)

    with Watched(Slow(store), plan(), threaded=True) as source:
        n = sum(1 for _ in source)
    assert n == 4 and source.wait_s >= 0.05  # at least the first batch was waited for


@pytest.mark.parametrize("threaded", [False, True])
def test_reading_ahead_overlaps_the_consumers_work(store, threaded):
    """While the consumer holds batch k, the thread reads batch k + 1, and never more than
    depth batches ahead; the plain path reads only what is asked for.

    Shown by construction: the read of batch k + 1 is let through only once the consumer
    holds batch k, and the consumer waits for that read to finish before it moves on.
    """
    batches = [np.array([i]) for i in range(6)]
    holding = {k + 1: threading.Event() for k in range(len(batches) - 1)}
    reader = Gated(store, len(batches), holding if threaded else None)
    with Prefetcher(reader, batches, depth=2, threaded=threaded) as source:
        for k, _ in enumerate(source):
            assert reader.reads <= k + 2  # one slot is the consumer's, one the thread's
            if not threaded:
                assert reader.reads == k + 1  # nothing is read ahead
            elif k + 1 < len(batches):
                holding[k + 1].set()
                assert reader.done[k + 1].wait(60), f"batch {k + 1} was not read ahead"
    assert reader.reads == len(batches)


def test_rejects_a_depth_below_one(store):
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(BatchReader(store), plan(), depth=0)


def test_reader_reads_into_a_given_buffer(store):
    out = np.empty((2, 1, 8, 8, 8), np.float32)
    x, _ = BatchReader(store).read(np.array([4, 1]), out=out)
    assert np.shares_memory(x.numpy(), out)
    ref = VolumeStore.open(store)
    assert np.array_equal(out[0], ref[4]) and np.array_equal(out[1], ref[1])
