"""``ssltk store info`` and ``ssltk store verify``: describe a store, and check it end to end."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ssltk.store import damage, schema
from ssltk.store.ingest_common import sha256_file
from ssltk.store.intensity import is_constant
from ssltk.store.reader import VolumeStore, summarize
from ssltk.store.writer import _open_h5, _row_datasets

_SHA = re.compile(r"^[0-9a-f]{64}$")


def store_info(path: str | Path) -> dict[str, Any]:
    """Everything ``ssltk store info`` shows, as a JSON-able dict.

    Keys: path, format, version, rows (committed), uncommitted (rows of an interrupted batch),
    shape, spatial_dims, dtype, encoding (how volumes are stored, with its error bound),
    max_abs_error (largest error of a stored volume), checksums, compression, spacing,
    orientation, size_bytes, bytes_per_volume, preprocessing, ssltk_version, created,
    writer (pid and host of a writer holding the store, else None), columns (name -> kind, unit,
    description and summary statistics: count/missing/mean/std/min/max for continuous
    columns, counts per category for categorical ones, number of unique values for ids).
    """
    from ssltk.store.lock import read_holder

    path = Path(path)
    store = VolumeStore.open(path)
    attrs = store.attrs
    with _open_h5(path, "r") as f:
        extent = int(f["volumes"].shape[0])
    encoding = attrs.get("encoding") or store.encoding.record()
    size = path.stat().st_size
    columns = {}
    for name, spec in store.columns.items():
        columns[name] = {"kind": spec.kind, "unit": spec.unit, "description": spec.description,
                         **summarize(store.meta[name], spec)}
    return {
        "path": str(path), "format": attrs.get("format"), "version": attrs.get("version"),
        "rows": len(store), "uncommitted": max(0, extent - len(store)),
        "shape": list(store.shape), "spatial_dims": store.spatial_dims,
        "dtype": str(store.dtype), "encoding": encoding,
        "max_abs_error": attrs.get("max_abs_error"), "checksums": store.checksums,
        "compression": attrs.get("compression"), "writer": read_holder(path),
        "spacing": list(attrs["spacing"]) if attrs.get("spacing") else None,
        "orientation": attrs.get("orientation"), "size_bytes": size,
        "bytes_per_volume": size / len(store) if len(store) else None,
        "preprocessing": attrs.get("preprocessing"), "ssltk_version": attrs.get("ssltk_version"),
        "created": attrs.get("created"), "columns": columns,
    }


@dataclass
class VerifyResult:
    """Outcome of :func:`verify_store`: ``problems`` make it fail, ``notes`` do not."""

    rows: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_sizes(f: h5py.File, n: int, result: VerifyResult) -> None:
    for ds in _row_datasets(f):
        if ds.shape[0] < n:
            result.problems.append(f"{ds.name} has {ds.shape[0]} rows, fewer than the "
                                   f"{n} committed")
        elif ds.shape[0] > n and ds.name == "/volumes":
            result.notes.append(f"{ds.shape[0] - n} uncommitted row(s) from an interrupted "
                                f"write are ignored (re-running the ingest resumes)")
    if n > 0 and any(ds.shape[0] < n for ds in _row_datasets(f)):
        raise _Stop


class _Stop(Exception):
    """Internal: the structure is too broken to check rows."""


def _check_volumes(store: VolumeStore, f: h5py.File, result: VerifyResult) -> None:
    """Every committed volume: checksum of its stored bytes (when the store has them), then
    decoded, finite and not constant (a constant volume carries nothing to learn: one problem
    lists them all)."""
    ds = f["volumes"]
    if not ds.fletcher32:
        result.notes.append("no per-volume checksums (store written before ssltk added them): "
                            "damage that still decompresses cannot be detected; re-create the "
                            "store with 'ssltk ingest' to add them")
    buf = np.empty((1, *store.shape), dtype=np.float32)
    constant: list[str] = []
    for i in range(len(store)):
        who = store.describe_row(i)
        if damage.chunk_checksum_ok(ds, i) is False:
            result.problems.append(f"row {i} ({who}): checksum mismatch, the stored volume is "
                                   f"damaged on disk")
            continue
        try:
            store.read_into([i], buf)
        except schema.StoreError:
            result.problems.append(f"row {i} ({who}): the stored volume cannot be decoded, the "
                                   f"file is damaged on disk")
            continue
        bad = int((~np.isfinite(buf)).sum())
        if bad:
            result.problems.append(f"row {i} ({who}): {bad} NaN/Inf values")
        elif is_constant(buf):
            constant.append(f"row {i} ({who}, every voxel {float(buf.flat[0]):g})")
    if constant:
        result.problems.append(_constant_problem(constant, len(store)))


def _constant_problem(rows: list[str], total: int, limit: int = 10) -> str:
    """One line for the constant volumes: which rows, and the likely cause."""
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return (f"{len(rows)} of {total} volume(s) are constant: {', '.join(rows[:limit])}{more}; "
            f"likely cause: blank source files, or masks flattened by their normalisation "
            f"(--normalize zscore on binary masks, before ssltk refused it); check those "
            f"files and re-ingest them (--normalize percentile keeps a mask's two levels)")


def _check_rows(store: VolumeStore, rehash: bool, result: VerifyResult) -> None:
    subjects = store.meta["subject_id"]
    sessions = store.meta.get("session", np.full(len(store), "", dtype="U1"))
    for i in np.flatnonzero(subjects == ""):
        result.problems.append(f"row {i}: empty subject_id")
    counts = Counter(zip(subjects.tolist(), sessions.tolist()))
    for (sub, ses), c in sorted(counts.items()):
        if c > 1:
            result.problems.append(f"subject '{sub}' session '{ses}' appears in {c} rows")
    for i, src in enumerate(store.sources):
        if not src["path"] and not src["sha256"]:
            continue  # generated rows (synthetic cohort) have no source file
        if not _SHA.match(src["sha256"]):
            result.problems.append(f"row {i}: source {src['path']} has no valid sha256 hash "
                                   f"({src['sha256']!r})")
        elif rehash and Path(src["path"]).is_file() and sha256_file(Path(src["path"])) \
                != src["sha256"]:
            result.problems.append(f"row {i}: {src['path']} changed since ingest (sha256 "
                                   f"differs)")


def verify_store(path: str | Path, rehash: bool = False) -> VerifyResult:
    """Check a store: structure, committed counter vs dataset sizes, every volume's checksum
    (stores written with them), every volume decodable, finite and not constant, unique
    (subject, session), a hash for every source file.

    Args:
        path: the store.
        rehash: also re-hash source files that still exist and compare with the recorded hash.
    """
    path = Path(path)
    result = VerifyResult()
    try:
        store = VolumeStore.open(path)
    except schema.StoreError as exc:
        result.problems.append(str(exc))
        return result
    result.rows = len(store)
    try:
        with _open_h5(path, "r") as f:
            _check_sizes(f, len(store), result)
            _check_volumes(store, f, result)
        _check_rows(store, rehash, result)
    except _Stop:
        pass
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        result.problems.append(str(damage.structure_error(path, exc)))
    finally:
        store.close()
    return result
