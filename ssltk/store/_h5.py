"""HDF5 access shared by the store's reader and writer: opening a file, decoding its attributes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ssltk.store import damage, schema


def _open_h5(path: Path, mode: str, **kwargs: Any) -> h5py.File:
    try:
        if mode in ("r", "r+") and path.stat().st_size == 0:  # HDF5 opens these in r+ mode
            raise OSError("file signature not found")
        return h5py.File(path, mode, locking="best-effort", **kwargs)
    except (OSError, BlockingIOError) as exc:
        raise damage.open_error(path, exc) from None


def decode_attrs(attrs: h5py.AttributeManager) -> dict[str, Any]:
    """Root attributes as plain Python values (JSON strings parsed, arrays as tuples)."""
    out: dict[str, Any] = {}
    for key in attrs:
        value = attrs[key]
        if isinstance(value, (bytes, np.bytes_, str)):
            value = schema.get_str_attr(attrs, key)
            if key in ("preprocessing", "columns", "encoding"):
                value = json.loads(value)
        elif isinstance(value, np.ndarray):
            value = tuple(value.tolist())
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    out.setdefault("spacing", None)
    return out
