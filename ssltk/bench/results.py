"""results.jsonl: one JSON line per finished finetuning cell, appended atomically."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
REQUIRED_KEYS = ("cell", "method", "mode", "budget", "seed", "repeat", "split_hash", "task",
                 "metrics")


def append_result(path: Path, record: dict) -> None:
    """Append one line under an exclusive lock, then fsync: a crash loses at most this line.

    Several processes (one per GPU) append to the same file; the lock keeps lines whole.
    """
    line = json.dumps(record, allow_nan=True) + "\n"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
