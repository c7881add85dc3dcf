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
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ssltk import __version__
from ssltk.store import schema
from ssltk.store._h5 import _open_h5, decode_attrs
from ssltk.store.schema import ColumnSpec, StoreError

log = logging.getLogger(__name__)


def _create_layout(f: h5py.File, shape: tuple[int, ...], columns: dict[str, ColumnSpec],
                   dtype: str, compression: str) -> None:
    f.create_dataset("volumes", shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                     chunks=(1, *shape), **schema.h5_compression(compression))
    small = {"maxshape": (None,), "compression": "gzip", "shuffle": True}
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


def _check_create_args(shape: Sequence[int], columns: Mapping[str, ColumnSpec], dtype: str,
                       compression: str, spacing: Sequence[float] | None) -> dict[str, ColumnSpec]:
    if len(shape) not in (3, 4) or any(int(s) < 1 for s in shape):
        raise StoreError(f"shape {tuple(shape)} must be (C, H, W) or (C, D, H, W) with sizes >= 1")
    if dtype not in schema.DTYPES:
        raise StoreError(f"dtype '{dtype}' is not one of {', '.join(schema.DTYPES)}")
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
        self.committed = int(h5.attrs["committed"])
        self._buffer: list[tuple[np.ndarray, dict[str, Any], tuple[str, str]]] = []
        self._keys = self._committed_keys()
        self._pending: set[tuple[str, str]] = set()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, shape: Sequence[int],
               columns: Mapping[str, ColumnSpec], dtype: str = "float16",
               compression: str = "zstd", spacing: Sequence[float] | None = None,
               preprocessing: Mapping[str, Any] | None = None, overwrite: bool = False,
               flush_every: int = 16, orientation: str = "RAS") -> StoreWriter:
        """Create a new store (atomically: built as ``<path>.tmp`` and renamed).

        Args:
            path: the ``.h5`` file to create.
            shape: ``(C, *spatial)`` of every volume, 2D or 3D.
            columns: metadata columns; ``subject_id`` (kind id) is added when absent.
            dtype: on-disk dtype of volumes, ``float16`` (default) or ``float32``.
            compression: ``zstd`` (default), ``lz4``, ``gzip`` or ``none``.
            spacing: voxel size in mm per spatial axis, when known.
            preprocessing: JSON-able description of how volumes were made (root attr).
            overwrite: replace an existing file instead of raising.
            flush_every: rows buffered between two commits.
            orientation: axis codes of the volumes (``RAS`` after ``ssltk ingest nifti``).

        Raises:
            StoreError: the file exists (and not ``overwrite``) or an argument is invalid.
        """
        path = Path(path)
        cols = _check_create_args(shape, columns, dtype, compression, spacing)
        if path.exists() and not overwrite:
            raise StoreError(f"{path} already exists; resume it, choose another path or "
                             f"overwrite it (--overwrite)")
        try:
            prep = json.dumps(dict(preprocessing or {}), sort_keys=True)
        except TypeError as exc:
            raise StoreError(f"preprocessing must be JSON-able: {exc}") from None
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        with _open_h5(tmp, "w", fs_strategy="none") as f:
            _create_layout(f, tuple(int(s) for s in shape), cols, dtype, compression)
            a = f.attrs
            schema.set_str_attr(a, "format", schema.FORMAT)
            a["version"] = schema.VERSION
            a["shape"] = np.asarray(shape, dtype=np.int64)
            a["spatial_dims"] = len(shape) - 1
            schema.set_str_attr(a, "dtype", dtype)
            schema.set_str_attr(a, "compression", compression)
            if spacing is not None:
                a["spacing"] = np.asarray(spacing, dtype=np.float64)
            schema.set_str_attr(a, "orientation", orientation)
            schema.set_str_attr(a, "preprocessing", prep)
            schema.set_str_attr(a, "columns", schema.columns_to_json(cols))
            schema.set_str_attr(a, "ssltk_version", __version__)
            schema.set_str_attr(a, "created", _dt.datetime.now(_dt.timezone.utc).isoformat())
            a["committed"] = 0
        os.replace(tmp, path)
        return cls(path, _open_h5(path, "r+"), flush_every)

    @classmethod
    def resume(cls, path: str | os.PathLike, flush_every: int = 16) -> StoreWriter:
        """Reopen an existing (possibly interrupted) store to append more rows.

        Rows past the committed counter (an unfinished batch) are dropped.

        Raises:
            StoreError: the file is missing, not a store, or open in another process.
        """
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"{path} does not exist; create the store first")
        h5 = _open_h5(path, "r+")
        if schema.get_str_attr(h5.attrs, "format") != schema.FORMAT:
            h5.close()
            raise StoreError(f"{path} is not an ssltk volume store (no format attribute)")
        n = int(h5.attrs["committed"])
        for ds in _row_datasets(h5):
            if ds.shape[0] != n:
                ds.resize(n, axis=0)
        h5.flush()
        return cls(path, h5, flush_every)

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
        """
        row, key = self._check_meta(meta)
        vol = self._check_volume(np.asarray(volume), key)
        src = ("", "")
        if source is not None:
            src = (str(source.get("path", "")), str(source.get("sha256", "")))
            schema.encode_str(src[0], schema.PATH_WIDTH, "source path")
            schema.encode_str(src[1], schema.SHA_WIDTH, "source sha256")
        self._buffer.append((vol, row, src))
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

    def _check_volume(self, vol: np.ndarray, key: tuple[str, str]) -> np.ndarray:
        who = f"subject '{key[0]}'" + (f" session '{key[1]}'" if key[1] else "")
        if vol.shape != self.shape:
            raise StoreError(f"volume of {who} has shape {vol.shape}, the store holds "
                             f"{self.shape} (C, *spatial); resample or crop it first")
        if not np.issubdtype(vol.dtype, np.number):
            raise StoreError(f"volume of {who} has dtype {vol.dtype}; give numbers")
        if not np.isfinite(vol).all():
            raise StoreError(f"volume of {who} has NaN or Inf values; fix the source image")
        if self.dtype == "float16" and vol.size:
            peak = float(np.abs(vol).max())
            if peak > schema.FLOAT16_MAX:
                raise StoreError(f"volume of {who} has values up to {peak:g}, beyond float16's "
                                 f"{schema.FLOAT16_MAX:g}; normalise intensities first "
                                 f"(--normalize percentile) or use dtype float32")
        return vol.astype(self.dtype, copy=True)

    def flush(self) -> None:
        """Write the buffered rows, flush + fsync, then bump ``committed`` (crash-safe order)."""
        if not self._buffer:
            return
        n, b = self.committed, len(self._buffer)
        for ds in _row_datasets(self._h5):
            ds.resize(n + b, axis=0)
        vols = self._h5["volumes"]
        for k, (vol, _, _) in enumerate(self._buffer):
            vols[n + k] = vol  # one chunk per volume
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
        self._h5.attrs["committed"] = n + b  # readers see the new rows only from here on
        self._sync()
        self.committed = n + b
        self._keys |= {(row["subject_id"], row.get("session", "")) for _, row, _ in self._buffer}
        self._pending.clear()
        self._buffer.clear()
        log.debug("committed %d rows to %s", self.committed, self.path)

    def _sync(self) -> None:
        self._h5.flush()
        try:
            os.fsync(self._h5.id.get_vfd_handle())
        except (OSError, TypeError, ValueError):  # drivers without a plain file descriptor
            pass

    def close(self) -> None:
        """Commit the buffered rows and close the file (idempotent)."""
        if self._h5 is None or not self._h5.id.valid:
            return
        try:
            self.flush()
        finally:
            self._h5.close()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _row_datasets(h5: h5py.File) -> list[h5py.Dataset]:
    """Every dataset indexed by row: volumes, meta columns, sources."""
    out = [h5["volumes"], h5["sources/path"], h5["sources/sha256"]]
    out += [ds for ds in h5["meta"].values() if isinstance(ds, h5py.Dataset)]
    return out
