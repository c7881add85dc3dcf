"""Batches read ahead of the training step: pinned host buffers, asynchronous copies, a side stream.

The training loop's data path on a GPU::

    reader thread:  store --read_into--> pinned host slot --non_blocking copy, side stream--> GPU
    main thread:    the compute stream waits for that copy (on the GPU; the host does not block),
                    then augments the batch on the GPU and runs the step

While the GPU computes step ``k``, the thread decodes batch ``k + 1`` (and up to ``depth``
batches ahead) and its copy overlaps the compute. Hand-over is ordered on the GPU by an event
(``wait_event``), never by a host synchronisation, and the caching allocator is told that the
batch is used on the compute stream (``record_stream``) so its memory is not recycled early.
A pinned slot is refilled only after the copy out of it has completed (its event).

On the CPU there is nothing to copy: ``threaded=True`` overlaps the read with compute in a
thread; ``threaded=False`` (the engine's default on CPU, where the cores are busy computing)
reads in the caller's thread, exactly like :meth:`BatchReader.read`. Either way the batches, and
so the training results, are identical to reading them in order with a plain reader.

>>> with Prefetcher(reader, batches, "cuda", depth=2) as source:
...     for x, meta in source:          # x (B, C, *spatial) on the device
...         step(x, meta)
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ssltk.data.loading import BatchReader

_POLL_S = 0.05  # how often a blocked queue operation looks at the stop flag
_END = object()


@dataclass
class _Slot:
    """One reusable host buffer (pinned on CUDA) and the event of the last copy out of it."""

    host: Tensor | None = None
    copied: torch.cuda.Event | None = None

    def buffer(self, shape: tuple[int, ...], pin: bool) -> Tensor:
        if self.host is None or tuple(self.host.shape) != shape:
            self.host = torch.empty(shape, dtype=torch.float32, pin_memory=pin)
        return self.host


@dataclass
class _Item:
    rows: np.ndarray
    x: Tensor
    meta: dict[str, Tensor]
    ready: torch.cuda.Event | None  # recorded on the side stream after the copies
    slot: _Slot | None  # CPU: the slot ``x`` lives in, given back when the consumer moves on


@dataclass
class _Failure:
    error: BaseException


def memory_format(x: Tensor, channels_last: bool) -> Tensor:
    """``x`` in channels-last layout (3D or 2D) when asked, else unchanged."""
    if not channels_last:
        return x
    fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    return x.contiguous(memory_format=fmt)


def load_batch(reader: BatchReader, rows: np.ndarray, device: torch.device,
               channels_last: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """Read ``rows`` and move them to ``device`` in this thread (the plain, synchronous path)."""
    x, meta = reader.read(rows)
    x = memory_format(x.to(device, non_blocking=True), channels_last)
    return x, {k: v.to(device, non_blocking=True) for k, v in meta.items()}


class Prefetcher:
    """Iterates ``(x, meta)`` over ``batches`` of store rows, read ahead in a background thread.

    Args:
        reader: reads the rows (its store and metadata columns are used; its own buffer is not,
            each slot has one).
        batches: row indices of each batch, in order.
        device: where batches go.
        depth: batches read ahead (and host buffers): 2 double-buffers.
        channels_last: hand over ``x`` in channels-last layout (converted on the side stream).
        threaded: read in a background thread; default: on CUDA only.

    Attributes:
        wait_s: total seconds the consumer spent blocked waiting for a batch.
        last_wait_s: the same for the latest batch.

    The consumer's ``x`` on the CPU is a view of a slot, valid until the next batch is asked
    for. Errors raised in the thread (a corrupt chunk, a missing file) are re-raised by the
    iteration that would have returned the batch; closing (or leaving the ``with`` block, also
    on Ctrl-C) stops the thread and waits for it.
    """

    def __init__(self, reader: BatchReader, batches: Sequence[np.ndarray],
                 device: torch.device | str = "cpu", *, depth: int = 2,
                 channels_last: bool = False, threaded: bool | None = None):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.reader, self.device = reader, torch.device(device)
        self.batches = [np.asarray(b, dtype=np.int64) for b in batches]
        self.channels_last = channels_last
        self.cuda = self.device.type == "cuda"
        if self.cuda and self.device.index is None:  # the thread must set the same device
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.threaded = self.cuda if threaded is None else threaded
        self.wait_s = self.last_wait_s = 0.0
        self._next = 0  # index of the next batch to hand over (plain path)
        self._held: _Slot | None = None
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.threaded:
            self._free: queue.Queue[_Slot] = queue.Queue()
            for _ in range(depth):
                self._free.put(_Slot())
            self._ready: queue.Queue = queue.Queue(maxsize=depth)
            self._stream = torch.cuda.Stream(self.device) if self.cuda else None
            self._thread = threading.Thread(target=self._produce, name="ssltk-prefetch",
                                            daemon=True)
            self._thread.start()

    # -- the reader thread ---------------------------------------------------------------------
    def _produce(self) -> None:
        try:
            if self.cuda:  # the current device is per thread
                torch.cuda.set_device(self.device)
            for rows in self.batches:
                slot = self._take(self._free)
                if slot is None or not self._offer(self._load(slot, rows)):
                    return
            self._offer(_END)
        except BaseException as exc:  # noqa: BLE001  (handed to the consumer, who re-raises)
            self._offer(_Failure(exc))

    def _load(self, slot: _Slot, rows: np.ndarray) -> _Item:
        if slot.copied is not None:
            slot.copied.synchronize()  # the copy out of this slot, 2+ batches ago, is done
        host = slot.buffer((len(rows), *self.reader.store.shape), pin=self.cuda)
        x, meta = self.reader.read(rows, out=host.numpy())
        if not self.cuda:
            return _Item(rows, memory_format(x, self.channels_last), meta, None, slot)
        with torch.cuda.stream(self._stream):
            # From ``host`` itself (pinned): the copy is a true asynchronous DMA.
            x = memory_format(host.to(self.device, non_blocking=True), self.channels_last)
            meta = {k: v.to(self.device, non_blocking=True) for k, v in meta.items()}
            ready = torch.cuda.Event()
            ready.record(self._stream)
        slot.copied = ready
        self._free.put(slot)  # the GPU copy owns the data now; the slot waits on ``copied``
        return _Item(rows, x, meta, ready, None)

    def _take(self, q: queue.Queue):
        while not self._stop.is_set():
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                pass
        return None

    def _offer(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                pass
        return False

    # -- the consumer --------------------------------------------------------------------------
    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> tuple[Tensor, dict[str, Tensor]]:
        rows, x, meta = self._get()
        return x, meta

    def take(self, rows: np.ndarray) -> tuple[Tensor, dict[str, Tensor]]:
        """The next batch, which must be of ``rows`` (guards the caller's and our order)."""
        got, x, meta = self._get()
        if not np.array_equal(got, np.asarray(rows)):
            self.close()
            raise RuntimeError(f"prefetched batch of rows {got[:4].tolist()}... does not match "
                               f"the rows asked for ({np.asarray(rows)[:4].tolist()}...)")
        return x, meta

    def _get(self) -> tuple[np.ndarray, Tensor, dict[str, Tensor]]:
        self._release()
        if self._closed:
            raise StopIteration
        t0 = time.perf_counter()
        if not self.threaded:
            if self._next >= len(self.batches):
                raise StopIteration
            rows = self.batches[self._next]
            self._next += 1
            try:
                x, meta = load_batch(self.reader, rows, self.device, self.channels_last)
            except BaseException:
                self.close()  # as in the threaded path: an error ends the iteration
                raise
        else:
            item = self._wait()
            rows, x, meta = item.rows, item.x, item.meta
            if item.ready is not None:
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(item.ready)  # on the GPU: the host does not wait
                for t in (x, *meta.values()):
                    t.record_stream(stream)  # allocated on the side stream, used on this one
            self._held = item.slot
        self.last_wait_s = time.perf_counter() - t0
        self.wait_s += self.last_wait_s
        return rows, x, meta

    def _wait(self) -> _Item:
        while True:
            try:
                item = self._ready.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._ready.empty():
                    self.close()
                    raise RuntimeError("the prefetch thread ended without a batch") from None
        if item is _END or isinstance(item, _Failure):
            self.close()
            if item is _END:
                raise StopIteration
            raise item.error
        return item

    def _release(self) -> None:
        if self._held is not None:
            self._free.put(self._held)
            self._held = None

    def close(self) -> None:
        """Stop the thread and wait for it (idempotent); the iteration then ends."""
        self._closed = True
        self._stop.set()
        self._release()
        thread, self._thread = self._thread, None
        while thread is not None and thread.is_alive():
            try:  # unblock a thread waiting for room in the queue
                while True:
                    self._ready.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=_POLL_S)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass
