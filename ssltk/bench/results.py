"""results.jsonl: one JSON line per finished finetuning cell, appended atomically."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
from pathlib import Path

from ssltk.errors import SsltkError

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
REQUIRED_KEYS = ("cell", "method", "mode", "budget", "seed", "repeat", "split_hash", "task",
                 "metrics")


def append_result(path: Path, record: dict) -> None:
    """Append one line under an exclusive lock, then fsync: a crash loses at most this line.

    Several processes (one per GPU) append to the same file; the lock keeps lines whole. A
    failed write (disk full) is cut back, so the file keeps exactly its earlier lines.

    Raises:
        SsltkError: the line cannot be written (one line: the file, the reason, the fix).
    """
    line = (json.dumps(record, allow_nan=True) + "\n").encode()
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _append(fd, line)
        finally:
            os.close(fd)  # releases the lock
    except OSError as exc:
        fix = ("free disk space and re-run the same command to resume"
               if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
               else f"check that {Path(path).parent} is writable, then re-run to resume")
        raise SsltkError(f"cannot append to {path}: {exc.strerror or exc}; the results written "
                         f"before are kept; {fix}") from None


def _append(fd: int, line: bytes) -> None:
    end = os.lseek(fd, 0, os.SEEK_END)
    if end and os.pread(fd, 1, end - 1) != b"\n":
        line = b"\n" + line  # a killed writer's half line stays alone on its line (skipped)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:
        os.ftruncate(fd, end)  # never leave half a line behind
        raise


def read_results(path: Path) -> list[dict]:
    """Every complete record, the last line of a repeated cell (a resumed run may repeat one),
    in the order cells first appear. Lines that are not JSON (a half-written last line after
    kill -9) or lack a required key are skipped with a warning. A missing file is empty."""
    path = Path(path)
    if not path.exists():
        return []
    records: dict[str, dict] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            record = _parse_line(line, path, number)
            if record is not None:
                records[record["cell"]] = record
    return list(records.values())


def _parse_line(line: str, path: Path, number: int) -> dict | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        log.warning("%s:%d: skipped a line that is not JSON (%s; a killed run can leave a "
                    "half-written last line)", path, number, exc.msg)
        return None
    missing = [k for k in REQUIRED_KEYS if not isinstance(record, dict) or k not in record]
    if missing:
        log.warning("%s:%d: skipped a record without %s", path, number, ", ".join(missing))
        return None
    return record


def finished_cells(path: Path) -> set[str]:
    return {r["cell"] for r in read_results(path)}
