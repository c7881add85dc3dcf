"""Finetuning targets read from a store's metadata, with the checks users need up front."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ssltk.errors import SsltkError


@dataclass
class Targets:
    """Per-row target values of one column: class indices (classification) or floats.

    ``labels[row]`` is the class index into ``classes`` (-1: missing or not one of ``classes``)
    for classification, the value (NaN: missing) for regression.
    """

    column: str
    task: str
    labels: np.ndarray
    classes: list[str] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes or [])

    def labelled_rows(self) -> np.ndarray:
        ok = self.labels >= 0 if self.task == "classification" else np.isfinite(self.labels)
        return np.flatnonzero(ok)

    def values(self, rows: Sequence[int]) -> np.ndarray:
        return self.labels[np.asarray(rows, dtype=np.int64)]

    def check_rows(self, rows: Sequence[int], name: str) -> None:
        """Every row of the split ``name`` must be labelled."""
        bad = np.setdiff1d(np.asarray(rows, dtype=np.int64), self.labelled_rows())
        if len(bad):
            raise SsltkError(f"{len(bad)} {name} row(s) (e.g. row {bad[0]}) have no usable "
                             f"'{self.column}' value; draw splits from labelled rows only")
        if not len(rows):
            raise SsltkError(f"the {name} split is empty; use more subjects or a larger budget")

    def standardisation(self, rows: Sequence[int]) -> tuple[float, float]:
        v = self.values(rows).astype(np.float64)
        return float(v.mean()), float(v.std() or 1.0)

    def class_weights(self, rows: Sequence[int]) -> np.ndarray:
        """Inverse class frequencies, normalised to mean 1 (sklearn's "balanced")."""
        counts = np.bincount(self.values(rows), minlength=self.n_classes).astype(np.float64)
        return np.where(counts > 0, counts.sum() / (self.n_classes * np.maximum(counts, 1)), 0.0)


def load_targets(store, column: str, task: str, classes: Sequence[str] | None,
                 source: str = "store") -> Targets:
    """Read ``column`` of ``store`` as targets; errors name the column, store and fix."""
    if column not in store.columns:
        raise SsltkError(f"{source} has no column '{column}' (it has "
                         f"{', '.join(store.columns)}); fix data.target")
    kind = store.columns[column].kind
    if task == "regression":
        if kind != "continuous":
            raise SsltkError(f"column '{column}' of {source} is {kind}, not continuous; use "
                             "task = \"classification\"")
        return Targets(column, task, np.asarray(store.meta[column], dtype=np.float64))
    values = np.asarray(store.meta[column]).astype(str)
    present = sorted(set(values.tolist()) - {""})
    if classes is None:
        classes = present
    missing = [c for c in classes if c not in present]
    if missing:
        raise SsltkError(f"class '{missing[0]}' of data.classes is not in column '{column}' of "
                         f"{source} (values: {', '.join(present)}); fix data.classes")
    if len(classes) < 2:
        raise SsltkError(f"column '{column}' of {source} needs at least 2 classes to classify, "
                         f"got {list(classes)}")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index.get(v, -1) for v in values], dtype=np.int64)
    return Targets(column, task, labels, list(classes))
