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


def test_a_held_batch_is_not_overwritten_while_the_next_ones_are_read(store):
    batches = plan()
    ref = reference(store, batches)
    source = Prefetcher(BatchReader(store), batches, depth=2, threaded=True)
    first, _ = next(source)
    time.sleep(0.2)  # the thread fills every free slot meanwhile
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
    class Slow(BatchReader):
        def read(self, rows, out=None):
            time.sleep(0.05)
            return super().read(rows, out)

    with Prefetcher(Slow(store), plan(), threaded=True) as source:
        n = sum(1 for _ in source)
    assert n == 4 and source.wait_s >= 0.05  # at least the first batch was waited for


def test_reading_ahead_overlaps_the_consumers_work(store):
    """Reads of 0.1 s and steps of 0.1 s, 6 batches: plain ~1.2 s, threaded ~0.7 s.

    Pure sleeps (no decoding) so that a loaded machine slows both alike; the assertion asks
    for half the ideal 0.5 s gain.
    """
    class Slow(BatchReader):
        def read(self, rows, out=None):
            time.sleep(0.1)
            out = np.zeros((len(rows), *self.store.shape), np.float32) if out is None else out
            return torch.from_numpy(out), {}

    batches = [np.array([i]) for i in range(6)]
    times = {}
    for threaded in (False, True):
        t0 = time.perf_counter()
        for _ in Prefetcher(Slow(store), batches, threaded=threaded):
            time.sleep(0.1)
        times[threaded] = time.perf_counter() - t0
    assert times[False] - times[True] > 0.25, times


def test_rejects_a_depth_below_one(store):
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(BatchReader(store), plan(), depth=0)


def test_reader_reads_into_a_given_buffer(store):
    out = np.empty((2, 1, 8, 8, 8), np.float32)
    x, _ = BatchReader(store).read(np.array([4, 1]), out=out)
    assert np.shares_memory(x.numpy(), out)
    ref = VolumeStore.open(store)
    assert np.array_equal(out[0], ref[4]) and np.array_equal(out[1], ref[1])
