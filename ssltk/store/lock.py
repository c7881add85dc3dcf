"""One writer per store, across processes and hosts: an OS lock on ``<store>.lock``.

A writer (``StoreWriter.create``/``resume``, and ``ssltk ingest`` for its whole run) takes an
exclusive ``flock`` on the file ``<store>.lock`` next to the store and writes its pid, host
and start time into it. A second writer does not wait: it fails at once with a one-line error
naming the holder. The OS releases the lock when the holder exits, however it exits (kill -9
included); a lock file left behind by a crash is taken over by the next writer. On NFS,
Linux maps ``flock`` to NFS byte-range locks, so writers on different hosts exclude each other
too. Readers take no lock.

The lock is re-entrant within a process (a count), so an ingest can hold it while it
creates or resumes the writer. The mechanism is :mod:`ssltk.locks`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ssltk import locks
from ssltk.store.schema import StoreError


class StoreLockedError(StoreError):
    """Another process is writing the store (message names its pid and host)."""


def lock_path(store: str | os.PathLike) -> Path:
    """``<store>.lock``."""
    store = Path(store)
    return store.with_name(store.name + ".lock")


def read_holder(store: str | os.PathLike) -> str | None:
    """``"pid 123 on host x (since ...)"`` as written by the holder, or None."""
    return locks.read_holder(lock_path(store))


def acquire(store: str | os.PathLike) -> Path:
    """Take the write lock of ``store`` (re-entrant); returns the lock file's path.

    Raises:
        StoreLockedError: another process holds it.
        SsltkError: the lock file cannot be created (read-only folder...).
    """
    path = lock_path(store)

    def busy(holder: str) -> StoreLockedError:
        return StoreLockedError(f"{store} is being written by {holder}; one writer at a time: "
                                f"wait for it to finish or stop it (lock: {path})")

    return locks.acquire(path, busy)


def release(store: str | os.PathLike) -> None:
    """Release one hold of the lock; the last one removes the file and unlocks."""
    locks.release(lock_path(store))
