"""Deterministic batch plans and a batch reader over a volume store, for the training loops.

The order of every epoch is a pure function of ``(seed, epoch)``, which is what lets a killed
run resume mid-epoch and end with the same weights as an uninterrupted one, and lets ``W``
ranks of a distributed run each read their own slice of the very batch one process would read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from ssltk.errors import SsltkError


def epoch_batches(rows: Sequence[int], batch_size: int, seed: int, epoch: int,
                  shuffle: bool = True, drop_last: bool = True) -> list[np.ndarray]:
    """Split ``rows`` into batches in the order of epoch ``epoch``: ``[(batch_size,) int64]``."""
    rows = np.asarray(rows, dtype=np.int64)
    if shuffle:
        rows = np.random.default_rng([seed, epoch]).permutation(rows)
    n = len(rows) // batch_size * batch_size if drop_last else len(rows)
    return [rows[i:i + batch_size] for i in range(0, n, batch_size)]


def rank_slice(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s contiguous share of a global batch (gathers put it back in order)."""
    per_rank = len(batch) // world
    return batch[rank * per_rank:(rank + 1) * per_rank]


def meta_tensors(store, columns: Sequence[str]) -> dict[str, Tensor]:
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


class BatchReader:
    """Reads batches of rows into one reused buffer (no per-batch allocation).

    PERF_NOTES: a DataLoader with the default collate was page-fault bound (allocating a fresh
    batch tensor each step); ``read_into`` a reused buffer reads at memcpy-like speed.
    """

    def __init__(self, store, columns: Sequence[str] = ()):
        self.store = store
        self.meta = meta_tensors(store, columns)
        self._buffer: np.ndarray | None = None

    def read(self, rows: np.ndarray) -> tuple[Tensor, dict[str, Tensor]]:
        """``rows (B,)`` -> ``(x (B, C, *spatial) float32, {col: (B,)})``. ``x`` is reused."""
        shape = (len(rows), *self.store.shape)
        if self._buffer is None or self._buffer.shape != shape:
            self._buffer = np.empty(shape, dtype=np.float32)
        # One chunk per volume: reading rows in plan order costs the same as sorted order.
        self.store.read_into(rows, self._buffer)
        x = torch.from_numpy(self._buffer)
        index = torch.as_tensor(rows)
        return x, {col: values[index] for col, values in self.meta.items()}

    def iterate(self, batches: Sequence[np.ndarray]) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        for rows in batches:
            yield self.read(rows)
