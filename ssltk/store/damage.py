"""Damaged, truncated, foreign and full-disk stores: what went wrong, in one line, and the fix.

HDF5 reports every failure as a multi-part ``OSError`` ("Unable to synchronously open file
(truncated file: eof = ..., stored_eof = ...)"). The functions here turn them into
:class:`StoreError` lines that name the store (and the row and subject for a volume) and say
what to do. :func:`chunk_checksum_ok` re-checks a chunk's Fletcher-32 checksum (the one HDF5
verifies on every read of a store written with checksums) so ``ssltk store verify`` can tell
damaged bytes from a decoder failure.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

import h5py
import numpy as np

from ssltk.store.schema import StoreError

_TRUNCATED = re.compile(r"truncated file: eof = (\d+).*stored_eof = (\d+)")
_REBUILD = "re-create it with 'ssltk ingest ... --overwrite' or restore it from a copy"
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


class StoreWriteError(StoreError):
    """Writing to a store failed (disk full, quota, I/O error): stop, whatever the error policy;
    the committed rows are kept and re-running resumes."""


def lock_holder_text(store: Path) -> str:
    """``"pid 123 on host x since ..."`` from the store's lock file, or "another process"."""
    from ssltk.store.lock import read_holder

    return read_holder(store) or "another process"


def open_error(path: Path, exc: BaseException) -> StoreError:
    """The one-line error for ``h5py.File(path)`` raising ``exc``."""
    text = str(exc)
    low = text.lower()
    if isinstance(exc, FileNotFoundError) or "no such file" in low:
        return StoreError(f"{path} does not exist; create it with 'ssltk ingest'")
    if "signature not found" in low:
        size = path.stat().st_size if path.exists() else 0
        what = "an empty file" if size == 0 else f"a {size}-byte file that is not HDF5"
        return StoreError(f"{path} is {what}, not an ssltk store (an interrupted copy, or the "
                          f"wrong path); give the .h5 file made by 'ssltk ingest', or "
                          f"{_REBUILD}")
    match = _TRUNCATED.search(text)
    if match:
        have, want = int(match.group(1)), int(match.group(2))
        return StoreError(f"{path} is truncated: {have} of its {want} bytes are on disk (a full "
                          f"disk or a copy cut short); {_REBUILD}")
    if "already open" in low:
        return StoreError(f"{path} is already open in this process ({text}); close the other "
                          f"VolumeStore/StoreWriter on it first")
    if "unable to lock" in low or "file locking" in low or "resource temporarily" in low:
        return StoreError(f"{path} is being written by {lock_holder_text(path)}; a store has a "
                          f"single writer and is readable when it is done: wait for it, or stop "
                          f"it")
    if isinstance(exc, PermissionError) or "permission denied" in low:
        return StoreError(f"{path}: permission denied; check the file's and folder's "
                          f"permissions")
    first = text.splitlines()[0][:300] if text else type(exc).__name__
    return StoreError(f"cannot open {path} as an HDF5 store ({first}); is it an ssltk store? "
                      f"Check it with 'ssltk store verify {path}'")


def structure_error(path: Path, exc: BaseException) -> StoreError:
    """A store that opens as HDF5 but lacks a dataset or attribute a store must have."""
    what = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return StoreError(f"{path} is damaged or not a complete ssltk store ({type(exc).__name__}: "
                      f"{what}); {_REBUILD}")


def write_error(path: Path, exc: BaseException, committed: int) -> StoreWriteError:
    """The one-line error for a failed write (``OSError`` or HDF5's wrapped form)."""
    code = getattr(exc, "errno", None)
    match = re.search(r"errno = (\d+), error message = '([^']*)'", str(exc))
    if code is None and match:
        code = int(match.group(1))
    reason = getattr(exc, "strerror", None) or (match.group(2) if match else
                                                 str(exc).splitlines()[0][:200])
    if code in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space (or raise the quota)"
    elif code == errno.EFBIG:
        fix = "lift the file-size limit (ulimit -f) or write to another file system"
    elif code == errno.EROFS:
        fix = "write the store to a writable file system"
    else:
        fix = "check the disk"
    return StoreWriteError(f"cannot write {path}: {reason}; the {committed} committed rows are "
                           f"kept: {fix}, then re-run the same command to resume")


def is_disk_error(exc: BaseException) -> bool:
    """Whether ``exc`` (an OSError, or HDF5's RuntimeError/OSError text) is an I/O failure."""
    if getattr(exc, "errno", None) in _DISK_ERRNOS:
        return True
    match = re.search(r"errno = (\d+)", str(exc))
    return bool(match and int(match.group(1)) in _DISK_ERRNOS) or "write failed" in str(exc)


def read_error(path: Path, row: int, who: str, exc: BaseException, checksummed: bool) -> StoreError:
    """The one-line error for a volume that cannot be read."""
    what = "fails its checksum or cannot be decompressed" if checksummed else \
        "cannot be decompressed"
    return StoreError(f"{path} row {row} ({who}): the stored volume {what}, the file is damaged "
                      f"on disk; {_REBUILD} (check every row: 'ssltk store verify {path}')")


def fletcher32(data: bytes) -> tuple[int, int]:
    """HDF5's Fletcher-32 of ``data`` as its two 16-bit sums, modulo 65535.

    Big-endian 16-bit words ``w_1..w_n`` (an odd last byte is the high byte of a last word):
    ``sum1 = sum(w_i)``, ``sum2 = sum((n - i + 1) * w_i)``, both mod 65535 (HDF5's end-around
    carry represents 0 as 0 or 0xFFFF: compare modulo 65535).
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size % 2:
        raw = np.append(raw, np.uint8(0))
    words = (raw[0::2].astype(np.int64) << 8) | raw[1::2]
    n = words.size
    weights = np.arange(n, 0, -1, dtype=np.int64) % 65535
    sum1 = int(words.sum() % 65535)
    sum2 = int(((words % 65535) * weights % 65535).sum() % 65535)
    return sum1, sum2


def chunk_checksum_ok(ds: h5py.Dataset, row: int) -> bool | None:
    """Whether chunk ``row`` of a one-chunk-per-row dataset matches its Fletcher-32 checksum
    (None when the dataset has no checksums or the chunk is not there)."""
    if not ds.fletcher32:
        return None
    coord = (row,) + (0,) * (ds.ndim - 1)
    try:
        _, chunk = ds.id.read_direct_chunk(coord)
    except (OSError, ValueError, RuntimeError):
        return None
    if len(chunk) < 4:
        return False
    stored = int.from_bytes(chunk[-4:], "little")
    want = fletcher32(chunk[:-4])
    for value in (stored, _swap_halves_bytes(stored)):  # HDF5 also accepts an old byte order
        if ((value & 0xFFFF) % 65535, (value >> 16) % 65535) == want:
            return True
    return False


def _swap_halves_bytes(value: int) -> int:
    """The byte-swapped form HDF5 < 1.6.3 wrote on little-endian machines."""
    b = value.to_bytes(4, "little")
    return int.from_bytes(bytes([b[1], b[0], b[3], b[2]]), "little")

