"""Read-only access to a store: volumes, the metadata table, provenance.

A :class:`VolumeStore` reads the header and the metadata table once, when opened, then closes
the file; volumes are read through an h5py handle opened lazily on first access *in each
process* (the handle is keyed by ``os.getpid()`` and never pickled), so a store can be handed to
DataLoader workers, forked or spawned.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the Blosc filter with HDF5)
import numpy as np

from ssltk.errors import did_you_mean
from ssltk.store import damage, schema
from ssltk.store._h5 import _open_h5, decode_attrs
from ssltk.store.encoding import Encoding, decode_into
from ssltk.store.schema import ColumnSpec, StoreError


def _open_read(path: Path) -> h5py.File:
    return _open_h5(path, "r")


class VolumeStore:
    """A store opened for reading. Rows past the committed counter are invisible.

    Example:
        >>> store = VolumeStore.open("t1.h5")
        >>> x = store[0]                                  # (C, *spatial) float32
        >>> ad = store.select(diagnosis=["AD"])            # row indices
        >>> batch = store.read_into(ad[:8], np.empty((8, *store.shape), np.float32))
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"{self.path} does not exist; create it with 'ssltk ingest'")
        with _open_read(self.path) as f:
            try:
                self._read_header(f)
            except StoreError:
                raise
            except (KeyError, ValueError, TypeError, OSError, RuntimeError) as exc:
                raise damage.structure_error(self.path, exc) from None
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._volumes: h5py.Dataset | None = None  # of this process's handle
        self._scratch: np.ndarray | None = None  # one stored-dtype volume, reused by reads
        self._sources: list[dict[str, str]] | None = None

    def _read_header(self, f: h5py.File) -> None:
        if schema.get_str_attr(f.attrs, "format") != schema.FORMAT:
            raise StoreError(f"{self.path} is not an ssltk volume store (format attribute "
                             f"missing); create it with 'ssltk ingest'")
        if int(f.attrs["version"]) > schema.VERSION:
            raise StoreError(f"{self.path} has store version {int(f.attrs['version'])}, "
                             f"newer than this ssltk reads ({schema.VERSION}); upgrade ssltk")
        self.attrs: dict[str, Any] = decode_attrs(f.attrs)
        self._n = int(f.attrs["committed"])
        self.columns: dict[str, ColumnSpec] = schema.columns_from_json(
            schema.get_str_attr(f.attrs, "columns"))
        self.meta: dict[str, np.ndarray] = {c: self._read_column(f, c) for c in self.columns}
        self.shape: tuple[int, ...] = tuple(int(s) for s in f["volumes"].shape[1:])
        self.dtype = np.dtype(f["volumes"].dtype)
        self.encoding = Encoding.from_record(self.attrs.get("encoding"), str(self.dtype))
        self.checksums = bool(f["volumes"].fletcher32)
        self._scale = self._offset = None
        if self.encoding.is_integer:  # decoding parameters of every row, read once
            self._scale = f["encoding/scale"][: self._n].astype(np.float32)
            self._offset = f["encoding/offset"][: self._n].astype(np.float32)
            if len(self._scale) < self._n or len(self._offset) < self._n:
                raise KeyError(f"/encoding has fewer rows than the {self._n} committed")

    @classmethod
    def open(cls, path: str | os.PathLike) -> VolumeStore:
        """Open ``path`` read-only (header and metadata now, volumes lazily)."""
        return cls(path)

    def _read_column(self, f: h5py.File, name: str) -> np.ndarray:
        raw = f[f"meta/{name}"][: self._n]
        if self.columns[name].is_string:
            return schema.decode_strings(raw)
        return raw.astype(np.float64)

    # -- the lazy, per-process handle ------------------------------------------------------
    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            # A handle inherited through fork belongs to the parent: drop it, open our own.
            self._h5 = _open_read(self.path)
            self._pid = os.getpid()
            self._volumes = self._h5["volumes"]
        return self._h5

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"], state["_pid"], state["_volumes"], state["_scratch"] = None, None, None, None
        return state

    def close(self) -> None:
        """Close this process's handle (reopened on next access)."""
        if self._h5 is not None and self._pid == os.getpid() and self._h5.id.valid:
            self._h5.close()
        self._h5, self._pid, self._volumes = None, None, None

    def __enter__(self) -> VolumeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- volumes ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def spatial_dims(self) -> int:
        """2 or 3."""
        return len(self.shape) - 1

    @property
    def spacing(self) -> tuple[float, ...] | None:
        return self.attrs.get("spacing")

    def _index(self, i: int) -> int:
        i = int(i)
        j = i + self._n if i < 0 else i
        if not 0 <= j < self._n:
            raise IndexError(f"row {i} out of range for a store of {self._n} rows")
        return j

    def __getitem__(self, i: int) -> np.ndarray:
        """Volume ``i`` as a float32 array ``(C, *spatial)``."""
        out = np.empty((1, *self.shape), dtype=np.float32)
        return self.read_into([i], out)[0]

    def read_into(self, indices: Sequence[int], out: np.ndarray) -> np.ndarray:
        """Read rows ``indices`` into ``out`` and return it (no allocation per call).

        Each volume is one chunk: it is decoded straight into ``out`` (float32 store, or
        ``out`` of a float store's own dtype) or into one reused scratch volume and converted
        (float16: upcast; uint8/uint16: ``offset + scale * code``), through torch when it is
        already imported (~3x faster than numpy's casts). HDF5 checks each volume's checksum.

        Args:
            indices: ``B`` row indices (negative ones count from the end).
            out: ``(B, C, *spatial)`` C-contiguous array, float32 (or the dtype of a float16
                store).

        Raises:
            StoreError: a volume's bytes on disk are damaged (one line: store, row, subject).
        """
        rows = [self._index(i) for i in indices]
        if out.shape != (len(rows), *self.shape) or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous of shape {(len(rows), *self.shape)}, "
                             f"got {out.shape}")
        self._file()
        ds = self._volumes
        if out.dtype == self.dtype and not self.encoding.is_integer:
            for k, j in enumerate(rows):
                self._read_chunk(ds, out, j, k)
            return out
        if out.dtype != np.float32:
            allowed = "float32" + ("" if self.encoding.is_integer else f" or {self.dtype}")
            raise ValueError(f"out must be {allowed}, got {out.dtype}")
        if self._scratch is None:  # a fresh buffer per call would page-fault on every read
            self._scratch = np.empty((1, *self.shape), dtype=self.dtype)
        scratch = self._scratch
        for k, j in enumerate(rows):
            self._read_chunk(ds, scratch, j, 0)
            if self._scale is None:
                decode_into(out[k], scratch[0], 1.0, 0.0)
            else:
                decode_into(out[k], scratch[0], self._scale[j], self._offset[j])
        return out

    def _read_chunk(self, ds: h5py.Dataset, dest: np.ndarray, row: int, k: int) -> None:
        try:
            ds.read_direct(dest, np.s_[row], np.s_[k])
        except (OSError, RuntimeError) as exc:
            raise damage.read_error(self.path, row, self.describe_row(row), exc,
                                    self.checksums) from None

    def describe_row(self, row: int) -> str:
        """``"subject 'x' session 'y'"`` of a row, for messages."""
        sub = self.meta["subject_id"][row]
        ses = self.meta["session"][row] if "session" in self.meta else ""
        return f"subject '{sub}'" + (f" session '{ses}'" if ses else "")

    # -- metadata --------------------------------------------------------------------------
    def _column(self, name: str) -> np.ndarray:
        if name not in self.meta:
            hint = did_you_mean(name, self.meta)
            raise StoreError(f"no column '{name}' in {self.path.name}.{hint} "
                             f"Columns: {', '.join(self.meta)}")
        return self.meta[name]

    def categories(self, name: str) -> list[str]:
        """Sorted distinct non-missing values of a string column."""
        values = self._column(name)
        if not self.columns[name].is_string:
            raise StoreError(f"column '{name}' is continuous; categories need a categorical one")
        return sorted(v for v in np.unique(values).tolist() if v != "")

    def codes(self, name: str) -> np.ndarray:
        """``(N,)`` int64 index of each row's value in :meth:`categories` (-1 = missing)."""
        cats = np.asarray(self.categories(name), dtype=str)
        values = self._column(name)
        if cats.size == 0:
            return np.full(len(values), -1, dtype=np.int64)
        codes = np.searchsorted(cats, values).astype(np.int64)
        codes[values == ""] = -1
        return codes

    def select(self, **filters: Any) -> np.ndarray:
        """Row indices whose columns equal the given value or belong to the given list.

        ``store.select(diagnosis=["CN", "AD"], session="01")`` -> sorted ``(K,)`` int64.
        """
        keep = np.ones(self._n, dtype=bool)
        for name, wanted in filters.items():
            values = self._column(name)
            many = isinstance(wanted, (list, tuple, set, frozenset, np.ndarray))
            wanted = list(wanted) if many else [wanted]
            if self.columns[name].is_string:
                wanted = [schema.coerce_value(name, self.columns[name], w) for w in wanted]
                keep &= np.isin(values, np.asarray(wanted, dtype=str))
            else:
                keep &= np.isin(values, np.asarray(wanted, dtype=np.float64))
        return np.flatnonzero(keep).astype(np.int64)

    @property
    def sources(self) -> list[dict[str, str]]:
        """``[{"path": ..., "sha256": ...}]`` per row ("" where a row has no source file)."""
        if self._sources is None:
            f = self._file()
            paths = _decode_in_blocks(f["sources/path"], self._n)
            shas = _decode_in_blocks(f["sources/sha256"], self._n)
            self._sources = [{"path": p, "sha256": s} for p, s in zip(paths, shas)]
        return self._sources

    def __repr__(self) -> str:
        return (f"VolumeStore('{self.path}', rows={self._n}, shape={self.shape}, "
                f"dtype={self.dtype}, columns={list(self.columns)})")


def _decode_in_blocks(ds: h5py.Dataset, n: int, block: int = 65536) -> list[str]:
    """Fixed-width strings decoded a block at a time (paths are 4 KiB wide before decoding)."""
    out: list[str] = []
    for start in range(0, n, block):
        out += schema.decode_strings(ds[start:min(n, start + block)]).tolist()
    return out


def summarize(values: np.ndarray, spec: ColumnSpec) -> Mapping[str, Any]:
    """Summary statistics of a column: count/missing/mean/std/min/max, or counts per value."""
    if spec.kind == "continuous":
        ok = values[~np.isnan(values)]
        stats = {"count": int(ok.size), "missing": int(values.size - ok.size)}
        if ok.size:
            stats.update(mean=float(ok.mean()), std=float(ok.std()), min=float(ok.min()),
                         max=float(ok.max()))
        return stats
    present = values[values != ""]
    out: dict[str, Any] = {"count": int(present.size), "missing": int(values.size - present.size)}
    uniq, counts = np.unique(present, return_counts=True)
    if spec.kind == "id":
        out["unique"] = int(uniq.size)
    else:
        out["counts"] = {str(u): int(c) for u, c in zip(uniq, counts)}
    return out
