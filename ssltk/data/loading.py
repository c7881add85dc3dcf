"""Reading volumes and metadata from a store for training: per item, or a whole batch at once.

The default DataLoader collate was measured as the bottleneck of a CPU pipeline: it allocates a
fresh batch tensor every step (page faults), reaching 20-25 % of the store's raw read speed
(docs/performance.md). Reading a whole batch with :meth:`VolumeStore.read_into` into one reused buffer runs at
memcpy-like speed. So the fast path here is batch-level:

* :class:`BatchReader` – the training loops' reader: rows -> ``(x, meta)`` in a reused buffer.
* :func:`make_loader` – the same as a ``DataLoader`` (one item = one batch, ``batch_size=None``)
  for users who want worker processes (decode-heavy codecs on many cores).
* :class:`VolumeDataset` – the per-item Dataset, for code that expects one.

h5py handles never cross a fork: :class:`~ssltk.store.VolumeStore` opens its file lazily in
each process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ssltk.errors import SsltkError
from ssltk.store import VolumeStore


def epoch_batches(rows: Sequence[int], batch_size: int, seed: int, epoch: int,
                  shuffle: bool = True, drop_last: bool = True) -> list[np.ndarray]:
    """Split ``rows`` into batches in the order of epoch ``epoch``: ``[(batch_size,) int64]``.

    A pure function of ``(rows, seed, epoch)``: what lets a killed run resume mid-epoch on the
    same batches, and each rank of a distributed run read its share of the same batch.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if shuffle:
        rows = np.random.default_rng([seed, epoch]).permutation(rows)
    n = len(rows) // batch_size * batch_size if drop_last else len(rows)
    return [rows[i:i + batch_size] for i in range(0, n, batch_size)]


def rank_slice(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s contiguous share of a global batch (gathers put it back in order)."""
    per_rank = len(batch) // world
    return batch[rank * per_rank:(rank + 1) * per_rank]


def meta_tensors(store: VolumeStore, columns: Sequence[str]) -> dict[str, Tensor]:
    """Whole-store metadata as tensors: continuous float32 (NaN missing), others int64 codes."""
    out = {}
    for col in columns:
        if col not in store.columns:
            raise SsltkError(f"store {store.path} has no column '{col}' (it has "
                             f"{', '.join(store.columns)}); choose another column or re-ingest")
        if store.columns[col].kind == "continuous":
            out[col] = torch.as_tensor(np.asarray(store.meta[col], dtype=np.float32))
        else:
            out[col] = torch.as_tensor(np.asarray(store.codes(col), dtype=np.int64))
    return out


def _open(store: VolumeStore | str | Path) -> VolumeStore:
    return store if isinstance(store, VolumeStore) else VolumeStore.open(store)


class BatchReader:
    """Reads batches of rows into one reused buffer (no per-batch allocation).

    ``read(rows)`` returns ``x`` ``(B, C, *spatial)`` float32 — a view of the buffer, valid
    until the next call — and ``{column: (B,)}`` metadata tensors.
    """

    def __init__(self, store: VolumeStore | str | Path, columns: Sequence[str] = ()):
        self.store = _open(store)
        self.meta = meta_tensors(self.store, columns)
        self._buffer: np.ndarray | None = None

    def read(self, rows: np.ndarray, out: np.ndarray | None = None
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """``out``: read into this ``(B, C, *spatial)`` float32 array instead (e.g. pinned memory)."""
        rows = np.asarray(rows, dtype=np.int64)
        shape = (len(rows), *self.store.shape)
        if out is None:
            if self._buffer is None or self._buffer.shape != shape:
                self._buffer = np.empty(shape, dtype=np.float32)
            out = self._buffer
        # One chunk per volume: reading rows in plan order costs the same as sorted order.
        self.store.read_into(rows, out)
        index = torch.as_tensor(rows)
        return torch.from_numpy(out), {c: v[index] for c, v in self.meta.items()}


class VolumeDataset(Dataset):
    """Per-item Dataset over store rows: ``(x (C, *spatial) float32, {column: scalar tensor})``.

    Args:
        store: a VolumeStore or its path (opened lazily in each worker process).
        rows: the store rows to serve (all if None); item ``i`` is row ``rows[i]``.
        columns: metadata columns to return (continuous float32 with NaN for missing,
            categorical/id as int64 codes with -1 for missing).
        cache: keep the served volumes in RAM as float16 after the first read; ``"auto"`` does
            when they fit in ``cache_bytes``.
    """

    def __init__(self, store: VolumeStore | str | Path, rows: Sequence[int] | None = None,
                 columns: Sequence[str] = (), cache: bool | str = "auto",
                 cache_bytes: int = 2 * 2**30):
        self.store = _open(store)
        self.rows = np.arange(len(self.store)) if rows is None else np.asarray(rows, np.int64)
        self.meta = meta_tensors(self.store, columns)
        nbytes = len(self.rows) * int(np.prod(self.store.shape)) * 2
        self.cache = nbytes <= cache_bytes if cache == "auto" else bool(cache)
        self._cached: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        row = int(self.rows[i])
        if row in self._cached:
            volume = self._cached[row].astype(np.float32)
        else:
            volume = self.store[row]
            if self.cache:
                self._cached[row] = volume.astype(np.float16)
        return torch.from_numpy(volume), {c: v[row] for c, v in self.meta.items()}


class _Batches(Dataset):
    """One item = one whole batch, read with ``read_into`` (for ``DataLoader(batch_size=None)``)."""

    def __init__(self, dataset: VolumeDataset, batches: list[np.ndarray]):
        self.dataset, self.batches = dataset, batches
        self._reader: BatchReader | None = None

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> tuple[Tensor, dict[str, Tensor]]:
        if self._reader is None:  # built in the worker: its own lazily opened h5py handle
            self._reader = BatchReader(self.dataset.store)
            self._reader.meta = self.dataset.meta
        x, meta = self._reader.read(self.dataset.rows[self.batches[k]])
        # A copy: the caller keeps this batch while the reader's buffer takes the next one (in a
        # worker, torch moves the storage itself into shared memory, so it must not be reused).
        return x.clone(), meta


class _RingLoader:
    """Whole batches read in this process into a ring of ``depth`` reused buffers.

    No allocation per batch (the page faults of a fresh batch tensor were the measured
    bottleneck); a batch stays valid while the next ``depth - 1`` are read.
    """

    def __init__(self, dataset: VolumeDataset, batches: list[np.ndarray], depth: int = 2):
        self.dataset, self.batches, self.depth = dataset, batches, depth

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        readers = [BatchReader(self.dataset.store) for _ in range(self.depth)]
        for reader in readers:
            reader.meta = self.dataset.meta
        for k, rows in enumerate(self.batches):
            yield readers[k % self.depth].read(self.dataset.rows[rows])


def make_loader(dataset: VolumeDataset, batch_size: int, *, shuffle: bool = True,
                seed: int = 0, epoch: int = 0, workers: int = 0, drop_last: bool = False,
                copy: bool = True):
    """An iterable of whole batches ``(x (B, C, *spatial) float32, {column: (B,)})``.

    The order is :func:`epoch_batches` of ``(seed, epoch)``: deterministic, whatever the number
    of workers. Each batch is read with one ``read_into`` call instead of ``B`` reads and a
    collate.

    Args:
        copy: True (safe): every batch is a new tensor the caller owns. False (fast, ``workers``
            must be 0): batches are read into a ring of 2 reused buffers, so a batch is valid
            until the second next one is read — what a training loop needs, and as fast as
            :class:`BatchReader` (docs/performance.md).
        workers: worker processes (a ``DataLoader``); on 2 cores they only help decode-heavy
            codecs.
    """
    batches = epoch_batches(np.arange(len(dataset)), batch_size, seed, epoch, shuffle, drop_last)
    if not copy:
        if workers:
            raise ValueError("copy=False reads in this process; use workers=0")
        return _RingLoader(dataset, batches)
    return DataLoader(_Batches(dataset, batches), batch_size=None, shuffle=False,
                      num_workers=workers, persistent_workers=False)
