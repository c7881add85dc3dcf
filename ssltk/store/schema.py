"""The on-disk layout of an ssltk volume store: names, column kinds, codecs and limits.

Layout of a store file (format ``ssltk-volume-store``, version 2; version 1 stores, without
``/encoding``, checksums and ``encoding``/``max_abs_error`` attrs, are read as before)::

    /volumes            (N, C, *spatial) float16|float32|uint8|uint16, one chunk per volume,
                        resizable along N, Fletcher-32 checksum per chunk
    /encoding/scale     (N,) float64, integer dtypes only: volume = offset + scale * codes
    /encoding/offset    (N,) float64
    /encoding/error     (N,) float64 max abs error of each stored volume
    /meta/<column>      (N,) one dataset per column; attrs kind, unit, description
                        id / categorical: fixed-width UTF-8 strings ("" = missing)
                        continuous: float64 (NaN = missing)
    /sources/path       (N,) fixed-width UTF-8 path of the source file ("" = none)
    /sources/sha256     (N,) hex SHA-256 of the source file ("" = none)
    root attrs          format, version, shape, spatial_dims, dtype, encoding (JSON),
                        compression, spacing, orientation, preprocessing (JSON),
                        ssltk_version, created, committed, max_abs_error

Rows at index ``>= committed`` are an unfinished batch of an interrupted writer: readers ignore
them and :meth:`StoreWriter.resume` overwrites them.

Strings are fixed-width on purpose: variable-length strings live in HDF5's global heap, and a
writer killed between two flushes leaves heap references that break the next writer. Fixed-width
values are plain chunk data, and gzip makes their padding cost almost nothing on disk.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import h5py
import hdf5plugin
import numpy as np

from ssltk.errors import SsltkError

FORMAT = "ssltk-volume-store"
VERSION = 2  # 2: integer encodings (/encoding), Fletcher-32 checksums, max_abs_error
KINDS = ("id", "categorical", "continuous")
COMPRESSIONS = ("zstd", "lz4", "gzip", "none")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
ID_WIDTH = 255  # bytes of UTF-8 per id / categorical value
PATH_WIDTH = 4096  # bytes of UTF-8 per source path (PATH_MAX on Linux)
SHA_WIDTH = 64
META_CHUNK_BYTES = 1 << 16  # uncompressed bytes per chunk of the 1-D row datasets


def row_chunks(dtype: np.dtype | str) -> tuple[int]:
    """Chunk shape of a 1-D row dataset: ~64 KiB, so a flush rewrites little (16-8192 rows)."""
    return (max(16, min(8192, META_CHUNK_BYTES // np.dtype(dtype).itemsize)),)


class StoreError(SsltkError):
    """A store cannot be created, opened, written or read as asked (one-line message)."""


class StoreArgumentError(StoreError):
    """An invalid option for a store (dtype, tolerance, codec): a usage error, exit code 2."""

    exit_code = 2


@dataclass(frozen=True)
class ColumnSpec:
    """Declaration of one metadata column.

    Attributes:
        kind: ``"id"`` (identifiers, strings), ``"categorical"`` (labels, strings) or
            ``"continuous"`` (numbers, float64 with NaN for missing values).
        unit: unit of a continuous column, e.g. ``"years"``.
        description: free text shown by ``ssltk store info``.
    """

    kind: Literal["id", "categorical", "continuous"]
    unit: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise StoreError(f"column kind '{self.kind}' is not one of {', '.join(KINDS)}")

    @property
    def is_string(self) -> bool:
        return self.kind != "continuous"


def h5_compression(name: str) -> dict[str, Any]:
    """``create_dataset`` keyword arguments of a compression choice (Blosc through hdf5plugin).

    Args:
        name: ``zstd`` (Blosc zstd level 5, byte shuffle: the default), ``lz4`` (Blosc lz4 level 5,
            byte shuffle), ``gzip`` (level 4 with shuffle; readable without hdf5plugin) or ``none``.
    """
    if name in ("zstd", "lz4"):
        return dict(hdf5plugin.Blosc(cname=name, clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if name == "none":
        return {}
    raise StoreArgumentError(f"compression '{name}' is not one of {', '.join(COMPRESSIONS)}")


def column_dtype(spec: ColumnSpec) -> np.dtype:
    """HDF5 dtype of a metadata column."""
    return np.dtype(f"S{ID_WIDTH}") if spec.is_string else np.dtype("float64")


def check_column_name(name: str) -> None:
    """Column names become HDF5 dataset names: no ``/``, not empty, no leading ``.``."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise StoreError(f"invalid column name {name!r}: use a non-empty name without '/'")


def encode_str(value: str, width: int, what: str) -> bytes:
    """UTF-8 bytes of ``value``; longer than ``width`` bytes is an error naming ``what``."""
    raw = value.encode("utf-8")
    if len(raw) > width:
        raise StoreError(f"{what} is {len(raw)} bytes long, more than the {width} a store keeps: "
                         f"{value[:60]!r}...; shorten it")
    return raw


def decode_strings(raw: np.ndarray) -> np.ndarray:
    """Fixed-width UTF-8 bytes ``(N,)`` -> numpy unicode array ``(N,)``."""
    if raw.size == 0:
        return np.zeros(0, dtype="U1")
    return np.char.decode(raw, "utf-8")


def coerce_value(column: str, spec: ColumnSpec, value: Any) -> str | float:
    """A metadata value as stored: ``str`` ("" missing) or ``float`` (NaN missing).

    Raises:
        StoreError: a continuous column got a value that is not a number.
    """
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    if spec.is_string:
        if missing:
            return ""
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return str(int(value))
        return str(value)
    if missing or (isinstance(value, str) and value.strip() in ("", "n/a", "N/A", "nan", "NaN")):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise StoreError(f"column '{column}' is continuous but got {value!r}; give a number, "
                         f"or None for a missing value") from None


def set_str_attr(attrs: h5py.AttributeManager, name: str, value: str) -> None:
    """Write a string attribute as fixed-length bytes (no global-heap object, see module doc)."""
    attrs[name] = np.bytes_((value or " ").encode("utf-8"))


def get_str_attr(attrs: h5py.AttributeManager, name: str, default: str = "") -> str:
    """Read a string attribute written by :func:`set_str_attr` (or by another HDF5 tool)."""
    if name not in attrs:
        return default
    value = attrs[name]
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return "" if text == " " else text


def columns_to_json(columns: dict[str, ColumnSpec]) -> str:
    """Column declarations as JSON (stored as root attr ``columns`` to keep their order)."""
    return json.dumps({k: {"kind": v.kind, "unit": v.unit, "description": v.description}
                       for k, v in columns.items()})


def columns_from_json(text: str) -> dict[str, ColumnSpec]:
    return {k: ColumnSpec(**v) for k, v in json.loads(text).items()}
