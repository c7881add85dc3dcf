"""One writer per store, across processes and hosts: an OS lock on ``<store>.lock``.

A writer (``StoreWriter.create``/``resume``, and ``ssltk ingest`` for its whole run) takes an
exclusive ``flock`` on the file ``<store>.lock`` next to the store and writes its pid, host
and start time into it. A second writer does not wait: it fails at once with a one-line error
naming the holder. The OS releases the lock when the holder exits, however it exits (kill -9
included); a lock file left behind by a crash is taken over by the next writer. On NFS,
Linux maps ``flock`` to NFS byte-range locks, so writers on different hosts exclude each other
too. Readers take no lock.

The lock is re-entrant within a process (a count), so an ingest can hold it while it
creates or resumes the writer.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import socket
from pathlib import Path

from ssltk.store.schema import StoreError


class StoreLockedError(StoreError):
    """Another process is writing the store (message names its pid and host)."""


_HELD: dict[str, list] = {}  # resolved lock path -> [fd, count, pid] held by this process


def lock_path(store: str | os.PathLike) -> Path:
    """``<store>.lock``."""
    store = Path(store)
    return store.with_name(store.name + ".lock")


def read_holder(store: str | os.PathLike) -> str | None:
    """``"pid 123 on host x (since ...)"`` as written by the holder, or None."""
    try:
        text = lock_path(store).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def acquire(store: str | os.PathLike) -> Path:
    """Take the write lock of ``store`` (re-entrant); returns the lock file's path.

    Raises:
        StoreLockedError: another process holds it.
        StoreError: the lock file cannot be created (read-only folder...).
    """
    path = lock_path(store)
    key = str(path.resolve())
    if key in _HELD and _HELD[key][2] == os.getpid():
        _HELD[key][1] += 1
        return path
    _HELD.pop(key, None)  # inherited through fork: the parent's hold, not ours
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create the lock file {path} ({exc.strerror}); the store's "
                             f"folder must be writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = read_holder(store) or "another process"
            raise StoreLockedError(f"{store} is being written by {holder}; one writer at a "
                                   f"time: wait for it to finish or stop it (lock: {path})"
                                   ) from None
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder removed the file between our open and flock: retry
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} (since {stamp})\n".encode())
    _HELD[key] = [fd, 1, os.getpid()]
    return path


def release(store: str | os.PathLike) -> None:
    """Release one hold of the lock; the last one removes the file and unlocks."""
    path = lock_path(store)
    key = str(path.resolve())
    held = _HELD.get(key)
    if held is None or held[2] != os.getpid():
        return
    held[1] -= 1
    if held[1] > 0:
        return
    del _HELD[key]
    try:
        path.unlink()  # while still locked: a waiter that opened it will see another inode
    except OSError:
        pass
    os.close(held[0])


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
