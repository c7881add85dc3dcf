"""Exclusive, non-blocking locks across processes and hosts: an OS ``flock`` on a lock file.

Used for one writer per store (``<store>.lock``, :mod:`ssltk.store.lock`) and one ``ssltk run``
per run folder (``RUN_DIR/.run.lock``, :mod:`ssltk.bench.runner`). The holder writes its pid,
host and start time into the file; a second process does not wait: it fails at once with a
one-line error naming the holder. The OS releases the lock when the holder exits, however it
exits (kill -9 included); a lock file left behind by a crash is taken over by the next process.
On NFS, Linux maps ``flock`` to NFS byte-range locks, so processes on different hosts (two
Slurm jobs on a shared filesystem) exclude each other too.

A lock is re-entrant within a process (a count) and never inherited through ``fork``: a forked
child that asks for its parent's lock is refused like any other process.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import socket
from collections.abc import Callable
from pathlib import Path

from ssltk.errors import SsltkError

_HELD: dict[str, list] = {}  # resolved lock path -> [fd, count, pid] held by this process


def read_holder(path: str | os.PathLike) -> str | None:
    """``"pid 123 on host x (since ...)"`` as written by the holder of lock file ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def acquire(path: str | os.PathLike, busy: Callable[[str], Exception]) -> Path:
    """Take the lock file ``path`` (re-entrant); ``busy(holder)`` is raised when another
    process holds it (``holder``: "pid N on host H (since T)").

    Raises:
        SsltkError: the lock file cannot be created (read-only folder...).
    """
    path = Path(path)
    key = str(path.resolve())
    if key in _HELD and _HELD[key][2] == os.getpid():
        _HELD[key][1] += 1
        return path
    _HELD.pop(key, None)  # inherited through fork: the parent's hold, not ours
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SsltkError(f"cannot create the lock file {path} ({exc.strerror}); its folder "
                             f"must be writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise busy(read_holder(path) or "another process") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder removed the file between our open and flock: retry
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} (since {stamp})\n".encode())
    _HELD[key] = [fd, 1, os.getpid()]
    return path


def release(path: str | os.PathLike) -> None:
    """Release one hold of lock file ``path``; the last one removes the file and unlocks."""
    path = Path(path)
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
