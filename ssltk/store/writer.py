"""Append volumes and their metadata to a store, crash-safely.

The writer buffers rows and writes them every ``flush_every`` rows: it grows the datasets,
writes the rows, flushes HDF5 to the OS (and fsyncs), and only then bumps the root attribute
``committed`` and flushes again. A process killed at any moment leaves a store whose first
``committed`` rows are complete; :meth:`StoreWriter.resume` drops the rows past it and carries on.

Two HDF5 settings make that hold (both checked by a kill -9 test):

* the file is created with ``fs_strategy="none"``: space freed inside the file (a metadata
  chunk rewritten with a new size) is never reused before the next flush, so the last flushed
  state on disk is never overwritten by newer data;
* no variable-length strings (see :mod:`ssltk.store.schema`).

Every dataset carries HDF5's Fletcher-32 checksum per chunk (one chunk = one volume), checked by
HDF5 on every read. One writer at a time: :mod:`ssltk.store.lock`. A full disk is detected
before HDF5 writes a batch (the space is reserved first, see :meth:`StoreWriter.flush`), so it
stops the writer with the committed rows intact instead of leaving a truncated file.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ssltk import __version__
from ssltk.store import damage, lock, schema
from ssltk.store._h5 import _open_h5, decode_attrs
from ssltk.store.encoding import Encoded, Encoding, encode
from ssltk.store.schema import ColumnSpec, StoreError

log = logging.getLogger(__name__)


def _create_layout(f: h5py.File, shape: tuple[int, ...], columns: dict[str, ColumnSpec],
                   enc: Encoding, compression: str) -> None:
    f.create_dataset("volumes", shape=(0, *shape), maxshape=(None, *shape), dtype=enc.dtype,
                     chunks=(1, *shape), fletcher32=True, **schema.h5_compression(compression))
    small = {"maxshape": (None,), "compression": "gzip", "shuffle": True, "fletcher32": True}
    meta = f.create_group("meta")
    for name, spec in columns.items():
        dt = schema.column_dtype(spec)
        ds = meta.create_dataset(name, shape=(0,), dtype=dt, chunks=schema.row_chunks(dt), **small)
        schema.set_str_attr(ds.attrs, "kind", spec.kind)
        if spec.unit:
            schema.set_str_attr(ds.attrs, "unit", spec.unit)
        if spec.description:
            schema.set_str_attr(ds.attrs, "description", spec.description)
    sources = f.create_group("sources")
    for name, width in (("path", schema.PATH_WIDTH), ("sha256", schema.SHA_WIDTH)):
        sources.create_dataset(name, shape=(0,), dtype=f"S{width}",
                               chunks=schema.row_chunks(f"S{width}"), **small)
    if enc.is_integer:  # per-volume decoding: x = offset + scale * code
        group = f.create_group("encoding")
        for name, dt in (("scale", "f8"), ("offset", "f8"), ("error", "f8")):
            group.create_dataset(name, shape=(0,), dtype=dt, chunks=schema.row_chunks(dt),
                                 **small)


def _check_create_args(shape: Sequence[int], columns: Mapping[str, ColumnSpec],
                       compression: str, spacing: Sequence[float] | None) -> dict[str, ColumnSpec]:
    if len(shape) not in (3, 4) or any(int(s) < 1 for s in shape):
        raise StoreError(f"shape {tuple(shape)} must be (C, H, W) or (C, D, H, W) with sizes >= 1")
    schema.h5_compression(compression)
    if spacing is not None and len(spacing) != len(shape) - 1:
        raise StoreError(f"spacing {tuple(spacing)} needs one value per spatial axis "
                         f"({len(shape) - 1})")
    cols = {"subject_id": ColumnSpec("id")}
    for name, spec in columns.items():
        schema.check_column_name(name)
        if not isinstance(spec, ColumnSpec):
            raise StoreError(f"column '{name}': expected a ColumnSpec, got {spec!r}")
        cols[name] = spec
    if cols["subject_id"].kind != "id":
        raise StoreError("column 'subject_id' must be of kind 'id'")
    return cols


class StoreWriter:
    """Single writer of a store. Use :meth:`create` or :meth:`resume`, as a context manager.

    Example:
        >>> with StoreWriter.create("t1.h5", shape=(1, 96, 112, 96),
        ...                         columns={"age": ColumnSpec("continuous", unit="years")}) as w:
        ...     w.append(volume, {"subject_id": "01", "age": 71.5})
    """

    def __init__(self, path: Path, h5: h5py.File, flush_every: int):
        self.path = path
        self._h5 = h5
        self.flush_every = max(1, int(flush_every))
        self.columns = schema.columns_from_json(schema.get_str_attr(h5.attrs, "columns"))
        self.shape = tuple(int(s) for s in h5["volumes"].shape[1:])
        self.dtype = str(h5["volumes"].dtype)
        rec = schema.get_str_attr(h5.attrs, "encoding")
        self.encoding = Encoding.from_record(json.loads(rec) if rec else None, self.dtype)
        self.committed = int(h5.attrs["committed"])
        self.max_abs_error = float(h5.attrs.get("max_abs_error", 0.0))
        self._buffer: list[tuple[Encoded, dict[str, Any], tuple[str, str]]] = []
        self._keys = self._committed_keys()
        self._pending: set[tuple[str, str]] = set()
        self._failed = False

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, shape: Sequence[int],
               columns: Mapping[str, ColumnSpec], dtype: str = "float16",
               compression: str = "zstd", spacing: Sequence[float] | None = None,
               preprocessing: Mapping[str, Any] | None = None, overwrite: bool = False,
               flush_every: int = 16, orientation: str = "RAS",
               max_error: float | None = None) -> StoreWriter:
        """Create a new store (atomically: built as ``<path>.tmp`` and renamed).

        Args:
            path: the ``.h5`` file to create.
            shape: ``(C, *spatial)`` of every volume, 2D or 3D.
            columns: metadata columns; ``subject_id`` (kind id) is added when absent.
            dtype: how volumes are stored: ``float16`` (default here; ``ssltk ingest`` defaults
                to ``auto``), ``float32``, ``uint8``/``uint16`` (per-volume scale and offset) or
                ``auto`` (see :mod:`ssltk.store.encoding`).
            compression: ``zstd`` (default), ``lz4``, ``gzip`` or ``none``.
            spacing: voxel size in mm per spatial axis, when known.
            preprocessing: JSON-able description of how volumes were made (root attr).
            overwrite: replace an existing file instead of raising.
            flush_every: rows buffered between two commits.
            orientation: axis codes of the volumes (``RAS`` after ``ssltk ingest nifti``).
            max_error: integer storage: max abs error as a fraction of each volume's range.

        Raises:
            StoreError: the file exists (and not ``overwrite``) or an argument is invalid.
            StoreLockedError: another process is writing ``path``.
        """
        path = Path(path)
        enc = Encoding.resolve(dtype, max_error)
        cols = _check_create_args(shape, columns, compression, spacing)
        try:
            prep = json.dumps(dict(preprocessing or {}), sort_keys=True)
        except TypeError as exc:
            raise StoreError(f"preprocessing must be JSON-able: {exc}") from None
        lock.acquire(path)
        try:
            if path.exists() and not overwrite:
                raise StoreError(f"{path} already exists; resume it, choose another path or "
                                 f"overwrite it (--overwrite)")
            _build(path, tuple(int(s) for s in shape), cols, enc, compression, spacing,
                   orientation, prep)
            return cls(path, _open_h5(path, "r+"), flush_every)
        except BaseException:
            lock.release(path)
            raise

    @classmethod
    def resume(cls, path: str | os.PathLike, flush_every: int = 16) -> StoreWriter:
        """Reopen an existing (possibly interrupted) store to append more rows.

        Rows past the committed counter (an unfinished batch) are dropped.

        Raises:
            StoreError: the file is missing, not a store, damaged, truncated.
            StoreLockedError: another process is writing it.
        """
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"{path} does not exist; create the store first")
        lock.acquire(path)
        try:
            h5 = _open_h5(path, "r+")
            try:
                return cls._resumed(path, h5, flush_every)
            except BaseException:
                h5.close()
                raise
        except BaseException:
            lock.release(path)
            raise

    @classmethod
    def _resumed(cls, path: Path, h5: h5py.File, flush_every: int) -> StoreWriter:
        if schema.get_str_attr(h5.attrs, "format") != schema.FORMAT:
            raise StoreError(f"{path} is not an ssltk volume store (no format attribute)")
        try:
            n = int(h5.attrs["committed"])
            for ds in _row_datasets(h5):
                if ds.shape[0] != n:
                    ds.resize(n, axis=0)
            h5.flush()
            return cls(path, h5, flush_every)
        except (KeyError, ValueError, TypeError) as exc:
            raise damage.structure_error(path, exc) from None
        except OSError as exc:
            raise damage.write_error(path, exc, 0) if damage.is_disk_error(exc) else \
                damage.structure_error(path, exc) from None

    # -- state -----------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes, decoded (see :attr:`VolumeStore.attrs`)."""
        return decode_attrs(self._h5.attrs)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return json.loads(schema.get_str_attr(self._h5.attrs, "preprocessing", "{}"))

    def keys(self) -> set[tuple[str, str]]:
        """``(subject_id, session)`` of every committed row ("" when there is no session)."""
        return set(self._keys)

    def __len__(self) -> int:
        """Rows appended so far (committed plus buffered)."""
        return self.committed + len(self._buffer)

    def _committed_keys(self) -> set[tuple[str, str]]:
        n = self.committed
        subjects = schema.decode_strings(self._h5["meta/subject_id"][:n])
        if "session" in self.columns:
            sessions = schema.decode_strings(self._h5["meta/session"][:n])
        else:
            sessions = [""] * n
        return set(zip(subjects.tolist(), list(sessions)))

    # -- writing ---------------------------------------------------------------------------
    def append(self, volume: np.ndarray, meta: Mapping[str, Any],
               source: Mapping[str, str] | None = None) -> None:
        """Buffer one row; rows are committed every ``flush_every`` rows and on :meth:`close`.

        Args:
            volume: ``(C, *spatial)`` array (any float dtype), finite, within float16 range
                when the store is float16.
            meta: column -> value; absent columns are missing; ``subject_id`` is required.
            source: ``{"path": ..., "sha256": ...}`` of the file the volume came from.

        Raises:
            StoreError: wrong shape, NaN/Inf or out-of-range values, unknown column,
                duplicate ``(subject_id, session)``.
            StoreWriteError: committing the batch failed (disk full...): the writer is done.
        """
        if self._failed:
            raise StoreError(f"{self.path}: an earlier write failed; re-run to resume")
        row, key = self._check_meta(meta)
        encoded = self._check_volume(np.asarray(volume), key)
        src = ("", "")
        if source is not None:
            src = (str(source.get("path", "")), str(source.get("sha256", "")))
            schema.encode_str(src[0], schema.PATH_WIDTH, "source path")
            schema.encode_str(src[1], schema.SHA_WIDTH, "source sha256")
        self._buffer.append((encoded, row, src))
        self._pending.add(key)
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def _check_meta(self, meta: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, str]]:
        unknown = sorted(set(meta) - set(self.columns))
        if unknown:
            raise StoreError(f"unknown column(s) {', '.join(unknown)}; declared columns: "
                             f"{', '.join(self.columns)}")
        row = {c: schema.coerce_value(c, s, meta.get(c)) for c, s in self.columns.items()}
        if not row["subject_id"]:
            raise StoreError("every row needs a non-empty 'subject_id'")
        key = (row["subject_id"], row.get("session", ""))
        if key in self._keys or key in self._pending:
            raise StoreError(f"duplicate row: subject '{key[0]}' session '{key[1]}' is already "
                             f"in {self.path.name}")
        for c, s in self.columns.items():
            if s.is_string:
                schema.encode_str(row[c], schema.ID_WIDTH, f"value of column '{c}'")
        return row, key

    def _check_volume(self, vol: np.ndarray, key: tuple[str, str]) -> Encoded:
        who = f"subject '{key[0]}'" + (f" session '{key[1]}'" if key[1] else "")
        if vol.shape != self.shape:
            raise StoreError(f"volume of {who} has shape {vol.shape}, the store holds "
                             f"{self.shape} (C, *spatial); resample or crop it first")
        if not np.issubdtype(vol.dtype, np.number) or np.iscomplexobj(vol):
            raise StoreError(f"volume of {who} has dtype {vol.dtype}; give real numbers")
        if not np.isfinite(vol).all():
            raise StoreError(f"volume of {who} has NaN or Inf values; fix the source image")
        try:
            return encode(vol, self.encoding)
        except StoreError as exc:
            raise StoreError(f"volume of {who} has {exc}") from None

    def flush(self) -> None:
        """Commit the buffered rows, crash-safely and full-disk-safely.

        Order: reserve disk space for the batch (so a full disk stops us before HDF5 writes
        anything), write the rows, flush + fsync, then bump ``committed`` (and
        ``max_abs_error``) in place and flush again. A failure leaves the committed rows as
        they were and stops the writer.

        Raises:
            StoreWriteError: the disk is full, over quota or failing.
        """
        if not self._buffer or self._failed:
            return
        try:
            self._reserve(_batch_bytes(self._buffer, len(self.columns)))
            self._write_rows()
        except (OSError, RuntimeError) as exc:
            self._failed = True
            if isinstance(exc, OSError) or damage.is_disk_error(exc):
                raise damage.write_error(self.path, exc, self.committed) from None
            raise
        self.committed += len(self._buffer)
        self._keys |= {(row["subject_id"], row.get("session", "")) for _, row, _ in self._buffer}
        self._pending.clear()
        self._buffer.clear()
        log.debug("committed %d rows to %s", self.committed, self.path)

    def _write_rows(self) -> None:
        n, b = self.committed, len(self._buffer)
        for ds in _row_datasets(self._h5):
            ds.resize(n + b, axis=0)
        vols = self._h5["volumes"]
        for k, (enc, _, _) in enumerate(self._buffer):
            vols[n + k] = enc.codes  # one chunk per volume
        if self.encoding.is_integer:
            for name in ("scale", "offset", "error"):
                self._h5[f"encoding/{name}"][n:] = [getattr(e, name) for e, _, _ in self._buffer]
        for c, spec in self.columns.items():
            values = [row[c] for _, row, _ in self._buffer]
            if spec.is_string:
                self._h5[f"meta/{c}"][n:] = np.array([v.encode() for v in values],
                                                     dtype=f"S{schema.ID_WIDTH}")
            else:
                self._h5[f"meta/{c}"][n:] = np.asarray(values, dtype=np.float64)
        paths = [p.encode() for _, _, (p, _) in self._buffer]
        self._h5["sources/path"][n:] = np.array(paths, dtype=f"S{schema.PATH_WIDTH}")
        shas = [s.encode() for _, _, (_, s) in self._buffer]
        self._h5["sources/sha256"][n:] = np.array(shas, dtype=f"S{schema.SHA_WIDTH}")
        self._sync()
        self._trim()
        worst = max([self.max_abs_error] + [e.error for e, _, _ in self._buffer])
        # In place (same size): no new file space, so this cannot run out of disk.
        self._h5.attrs.modify("max_abs_error", worst)
        self._h5.attrs.modify("committed", n + b)  # readers see the new rows only from here on
        self._sync()
        self.max_abs_error = worst

    def _reserve(self, nbytes: int) -> None:
        """Allocate ``nbytes`` past HDF5's end of file, or raise ENOSPC before any write.

        HDF5 appends the batch there (free-space strategy ``none``); :meth:`_trim` gives back
        what the batch did not use.
        """
        try:
            fd = self._h5.id.get_vfd_handle()
            os.posix_fallocate(fd, self._h5.id.get_filesize(), nbytes)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.ENODEV):
                return  # a file system without preallocation: best effort
            raise
        except (TypeError, ValueError, AttributeError):  # a driver without a file descriptor
            return

    def _trim(self) -> None:
        """Cut the unused part of the reservation (HDF5 does not: it never saw it)."""
        try:
            fd = self._h5.id.get_vfd_handle()
            used = self._h5.id.get_filesize()
            if os.fstat(fd).st_size > used:
                os.ftruncate(fd, used)
        except (OSError, TypeError, ValueError, AttributeError):
            pass  # only costs the unused space

    def _sync(self) -> None:
        self._h5.flush()
        try:
            os.fsync(self._h5.id.get_vfd_handle())
        except (OSError, TypeError, ValueError):  # drivers without a plain file descriptor
            pass

    def close(self) -> None:
        """Commit the buffered rows and close the file (idempotent); releases the write lock.

        After a failed write, the buffered rows are dropped (a re-run redoes them).
        """
        if self._h5 is None:
            return
        try:
            if self._h5.id.valid and not self._failed:
                self.flush()
        finally:
            self._close_file()
            self._h5 = None
            lock.release(self.path)

    def _close_file(self) -> None:
        if not self._h5.id.valid:
            return
        try:
            self._h5.close()
        except (OSError, RuntimeError):
            if not self._failed:
                raise

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _build(path: Path, shape: tuple[int, ...], cols: dict[str, ColumnSpec], enc: Encoding,
           compression: str, spacing: Sequence[float] | None, orientation: str,
           prep: str) -> None:
    """Write an empty store as ``<path>.tmp`` and rename it to ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)
        with _open_h5(tmp, "w", fs_strategy="none") as f:
            _create_layout(f, shape, cols, enc, compression)
            a = f.attrs
            schema.set_str_attr(a, "format", schema.FORMAT)
            a["version"] = schema.VERSION
            a["shape"] = np.asarray(shape, dtype=np.int64)
            a["spatial_dims"] = len(shape) - 1
            schema.set_str_attr(a, "dtype", enc.dtype)
            schema.set_str_attr(a, "encoding", json.dumps(enc.record()))
            schema.set_str_attr(a, "compression", compression)
            if spacing is not None:
                a["spacing"] = np.asarray(spacing, dtype=np.float64)
            schema.set_str_attr(a, "orientation", orientation)
            schema.set_str_attr(a, "preprocessing", prep)
            schema.set_str_attr(a, "columns", schema.columns_to_json(cols))
            schema.set_str_attr(a, "ssltk_version", __version__)
            schema.set_str_attr(a, "created", _dt.datetime.now(_dt.timezone.utc).isoformat())
            a["committed"] = np.int64(0)
            a["max_abs_error"] = np.float64(0.0)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise damage.write_error(path, exc, 0) from None


def _batch_bytes(buffer: list, n_columns: int) -> int:
    """Generous upper bound of the file growth of one batch: raw volumes (codecs never
    expand them by more than their headers), one rewritten 64 KiB chunk per row dataset,
    HDF5's metadata."""
    volumes = sum(e.codes.nbytes + 1024 for e, _, _ in buffer)
    return volumes + (n_columns + 6) * (schema.META_CHUNK_BYTES + 4096) + (1 << 18)


def _row_datasets(h5: h5py.File) -> list[h5py.Dataset]:
    """Every dataset indexed by row: volumes, meta columns, sources, per-volume encoding."""
    out = [h5["volumes"], h5["sources/path"], h5["sources/sha256"]]
    for group in ("meta", "encoding"):
        if group in h5:
            out += [ds for ds in h5[group].values() if isinstance(ds, h5py.Dataset)]
    return out
