"""What every ``ssltk ingest`` shares: items, the worker pool, error policy, resume, reports.

An ingest is a list of :class:`Item` (one source file each) turned into volumes by a
module-level ``process(item) -> Processed`` function (picklable, so it can run in a process
pool), and appended in order by the main process, the only writer.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ssltk.store import lock
from ssltk.store.damage import StoreWriteError
from ssltk.store.encoding import Encoding
from ssltk.store.intensity import is_constant
from ssltk.store.schema import ColumnSpec, StoreError
from ssltk.store.writer import StoreWriter

log = logging.getLogger(__name__)
OnError = Literal["abort", "skip"]
Progress = Callable[[int, int], None]


class IngestError(StoreError):
    """An input file or table cannot be ingested (message names the file and the fix)."""


class InputFileError(IngestError):
    """One input file cannot be read or preprocessed: ``str()`` is ``"<path>: <reason>"``.

    Attributes:
        path: the file.
        reason: what is wrong with it and the fix, without the path (for ``--on-error skip``
            reports, which list the path in a column of their own).
    """

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


@dataclass
class Item:
    """One source file to ingest and the metadata it will get (besides subject and session)."""

    path: Path
    subject: str
    session: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.subject, self.session)


@dataclass
class Processed:
    """What a worker returns: a ``(C, *spatial)`` float32 volume, or the reason it failed."""

    volume: np.ndarray | None = None
    sha256: str = ""
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class IngestReport:
    """Outcome of an ingest run.

    Attributes:
        out: the store.
        written: rows added by this run.
        already: rows that were in the store before (resumed runs).
        skipped: ``(file, reason)`` of files left out (``on_error="skip"``).
        warnings: one-line warnings (participants rows without a file...).
        skipped_report: the ``<out>.skipped.tsv`` written, when files were skipped.
    """

    out: Path
    written: int = 0
    already: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped_report: Path | None = None

    def warn(self, message: str) -> None:
        log.info(message)
        self.warnings.append(message)


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # workers run in parallel: one thread each


def ordered_map(fn: Callable[[Item], Processed], items: list[Item],
                workers: int) -> Iterator[tuple[Item, Processed]]:
    """``(item, fn(item))`` in input order; ``workers > 1`` runs ``fn`` in a spawn process pool.

    At most ``2 * workers`` items are in flight, so memory stays bounded when writing is slower
    than processing.
    """
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    ctx = multiprocessing.get_context("spawn")  # never fork a process holding an HDF5 handle
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init)
    try:
        todo = iter(items)
        pending = deque((it, pool.submit(fn, it)) for it in islice(todo, 2 * workers))
        while pending:
            item, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                raise IngestError(f"a worker process died while processing {item.path} (out of "
                                  f"memory?); re-run with fewer --workers to resume") from None
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(fn, nxt)))
            yield item, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def dedupe(items: list[Item], on_error: OnError, report: IngestReport) -> list[Item]:
    """Drop (skip) or reject (abort) items whose (subject, session) an earlier item has."""
    first: dict[tuple[str, str], Item] = {}
    kept = []
    for item in items:
        if item.key in first:
            who = f"subject '{item.subject}'" + (f" session '{item.session}'" if item.session
                                                 else "")
            reason = (f"duplicate {who}: {first[item.key].path} has it too; keep one file per "
                      f"subject and session (--pattern can select one, e.g. '*run-1_T1w.nii.gz')")
            fail(item.path, reason, on_error, report)
            continue
        first[item.key] = item
        kept.append(item)
    return kept


def fail(path: Path, reason: str, on_error: OnError, report: IngestReport) -> None:
    """Apply the error policy: raise a one-line :class:`IngestError`, or record a skip."""
    if on_error == "abort":
        raise IngestError(f"{path}: {reason} (or pass --on-error skip); rows already written "
                          f"are kept and re-running resumes")
    log.info("skipping %s: %s", path, reason)
    report.skipped.append((str(path), reason))


@contextmanager
def ingest_lock(out: Path):
    """Hold ``out``'s write lock for a whole ingest (see :mod:`ssltk.store.lock`): a second
    ingest to the same store stops at once, naming this one, before it reads or writes
    anything."""
    lock.acquire(out)
    try:
        yield
    finally:
        lock.release(out)


def open_or_resume(out: Path, overwrite: bool, preprocessing: Mapping[str, Any],
                   columns: Mapping[str, ColumnSpec], encoding: Encoding,
                   compression: str) -> StoreWriter | None:
    """The writer of an existing store to resume, or None when a new one must be created.

    Raises:
        IngestError: the existing store was made with other parameters or columns.
        StoreError: it is damaged, truncated or not a store (one line, with the fix).
    """
    if overwrite or not out.exists():
        return None
    writer = StoreWriter.resume(out)
    attrs = writer.attrs
    mine = {"preprocessing": dict(preprocessing), "dtype": _dtype_key(encoding),
            "compression": compression, "columns": {k: v.kind for k, v in columns.items()}}
    theirs = {"preprocessing": writer.preprocessing, "dtype": _dtype_key(writer.encoding),
              "compression": attrs.get("compression"),
              "columns": {k: v.kind for k, v in writer.columns.items()}}
    diff = [k for k in mine if mine[k] != theirs[k]]
    if diff:
        writer.close()
        key = diff[0]
        was, now = theirs[key], mine[key]
        if isinstance(was, dict) and isinstance(now, dict):
            changed = sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k))
            was, now = ({k: d.get(k) for k in changed} for d in (was, now))
        raise IngestError(f"{out} exists but was made with different {key} ({was} in the store, "
                          f"{now} now); use a new --out, or --overwrite to replace it")
    return writer


def _dtype_key(enc: Encoding) -> str:
    """What ``--dtype``/``--max-error`` a store was made with, as the user would write it."""
    if enc.max_error is None:
        return enc.requested or enc.dtype
    return f"{enc.requested or enc.dtype} (max error {enc.max_error:g})"


def write_skip_report(report: IngestReport) -> None:
    """``<out>.skipped.tsv`` (file, reason) of this run's skips; a stale one is removed.

    A failure to write it (full disk) is a warning: the store itself is what matters.
    """
    path = report.out.with_name(report.out.name + ".skipped.tsv")
    try:
        if not report.skipped:
            path.unlink(missing_ok=True)
            return
        lines = ["file\treason"] + [f"{f}\t{_one_line(r)}" for f, r in report.skipped]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        report.skipped_report = path
    except OSError as exc:
        report.warn(f"cannot write {path} ({exc.strerror}); the skipped files were: "
                    + "; ".join(f for f, _ in report.skipped))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run_items(items: Iterable[Item], process: Callable[[Item], Processed],
              get_writer: Callable[[Item, Processed], StoreWriter], *, on_error: OnError,
              workers: int, report: IngestReport, total: int,
              progress: Progress | None = None) -> None:
    """Process ``items`` (possibly in workers) and append each result; apply the error policy.

    ``get_writer(item, result)`` returns the writer, creating the store on the first volume
    when its shape is only known then.
    """
    done, constant = 0, []
    for item, result in ordered_map(process, list(items), workers):
        if result.error is not None:
            fail(item.path, result.error, on_error, report)
        else:
            meta = {"subject_id": item.subject, "session": item.session, **item.meta}
            writer = get_writer(item, result)
            try:
                writer.append(result.volume, meta,
                              source={"path": str(item.path), "sha256": result.sha256})
                report.written += 1
                if is_constant(result.volume):
                    constant.append(str(item.path))
            except StoreWriteError:  # disk full...: the store's problem, whatever the policy
                raise
            except StoreError as exc:  # NaN, float16 range, shape: this file's problem
                fail(item.path, str(exc), on_error, report)
        done += 1
        if progress is not None:
            progress(done, total)
    if constant:
        report.warn(f"{len(constant)} volume(s) stored constant, their files hold a single "
                    f"value: {_shown(constant)}; they carry nothing to learn ('ssltk store "
                    f"verify' reports them): remove the files and re-ingest with --overwrite")


def _shown(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
