"""The metadata a benchmark reads, checked before any work: missing values and label leakage.

For each pretraining store, the rows it is pretrained on are decided here, once:

* with ``[pretrain] exclude_test = true``, every row of a subject that is a finetuning test
  subject in any (seed, repeat) is left out (:func:`~ssltk.bench.cohort.all_test_subjects`);
* every column an objective or its anchor reads (``Objective.required_columns()``) is counted
  for missing values in those rows; a row missing a value that the component cannot do without
  (``Objective.complete_columns()``) fails the benchmark naming the TOML field to set, or is
  dropped and counted with ``[data] missing = "drop"``;
* an objective or anchor that reads the finetuning target column while the pretraining rows
  hold finetuning test subjects is label leakage: one line says so.

``ssltk validate`` and ``ssltk run --dry-run`` print :meth:`MetadataCheck.lines`; a run logs
them and writes :meth:`MetadataCheck.as_dict` to ``RUN_DIR/metadata.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ssltk.bench.cohort import Cohort, all_test_subjects, load_cohort
from ssltk.config import BenchmarkConfig
from ssltk.errors import ConfigError
from ssltk.registry import Registry
from ssltk.store import VolumeStore

METADATA_FILE = "metadata.json"


@dataclass(frozen=True)
class ColumnNeed:
    """A metadata column a pretraining component reads."""

    column: str
    field: str  # TOML path of the reader: pretrain.objectives[1] or pretrain.objectives[1].anchor
    complete: bool  # a missing value is an error for the reader
    fix: str = ""  # the reader's own setting that accepts missing values, as a TOML assignment


@dataclass
class StoreUse:
    """How one pretraining store is used: its rows, and what was left out and why."""

    store: str
    rows: int  # rows of the store
    excluded_test: int = 0  # rows of finetuning test subjects left out (exclude_test)
    dropped: dict[str, int] = field(default_factory=dict)  # column -> rows dropped for it
    missing: dict[str, int] = field(default_factory=dict)  # column -> missing values counted
    kept: list[int] | None = None  # the rows pretrained on; None: every row


@dataclass
class MetadataCheck:
    stores: list[StoreUse]
    target_missing: int  # rows of the finetuning store without a target value
    leaks: list[str]

    def pretrain_rows(self) -> dict[str, list[int] | None]:
        """Store path -> rows to pretrain on (:func:`ssltk.bench.grid.pretrain_jobs`)."""
        return {s.store: s.kept for s in self.stores}

    def lines(self) -> list[str]:
        """One line per fact a user should see before running."""
        out = [f"finetuning target: {self.target_missing} row(s) of the finetuning store have "
               "no value and are not in the labelled cohort"] if self.target_missing else []
        for s in self.stores:
            used = s.rows if s.kept is None else len(s.kept)
            counts = ", ".join(f"'{c}' {n} missing" for c, n in s.missing.items()) or "none"
            out.append(f"pretraining store {s.store}: {used} of {s.rows} rows used; columns "
                       f"read: {counts}")
            if s.excluded_test:
                out.append(f"pretraining store {s.store}: {s.excluded_test} row(s) of "
                           "finetuning test subjects left out (pretrain.exclude_test)")
            for col, n in s.dropped.items():
                out.append(f"pretraining store {s.store}: {n} row(s) dropped for a missing "
                           f"'{col}' (data.missing = \"drop\")")
        return out + self.leaks

    def as_dict(self) -> dict:
        return {"lines": self.lines(), "target_missing": self.target_missing, "leaks": self.leaks,
                "stores": [{"store": s.store, "rows": s.rows,
                            "rows_used": s.rows if s.kept is None else len(s.kept),
                            "excluded_test": s.excluded_test, "dropped": s.dropped,
                            "missing": s.missing} for s in self.stores]}


def column_needs(config: BenchmarkConfig, store: VolumeStore,
                 registry: Registry) -> list[ColumnNeed]:
    """Every column each objective (or its anchor) reads, as the built components report it.

    Asks each built objective (``required_columns``, ``complete_columns``) and its anchor
    (``columns``, ``accepts_missing_with``), so a plugin's own defaults count (y-Aware reads
    ``age`` without any anchor) and a third-party component needs no special case.
    """
    needs = []
    for i, spec in enumerate(config.pretrain.objectives):
        path = f"pretrain.objectives[{i}]"
        backbone = registry.build("backbones", config.backbone, "backbone",
                                  in_channels=store.shape[0], spatial_dims=store.spatial_dims)
        objective = registry.build("objectives", spec, path, backbone=backbone)
        anchor = objective.anchor
        complete = set(objective.complete_columns())
        for col in objective.required_columns():
            own = anchor is not None and col in anchor.columns
            fix = (f"{path}.anchor.{anchor.accepts_missing_with}"
                   if own and anchor.accepts_missing_with else "")
            needs.append(ColumnNeed(col, f"{path}.anchor" if own else path, col in complete, fix))
    return needs


def missing_mask(store: VolumeStore, column: str, rows: np.ndarray) -> np.ndarray:
    """``(len(rows),)`` bool: the rows whose ``column`` has no value."""
    values = np.asarray(store.meta[column])[rows]
    if store.columns[column].kind == "continuous":
        return ~np.isfinite(values.astype(np.float64))
    return values.astype(str) == ""


def check_metadata(config: BenchmarkConfig, registry: Registry,
                   cohort: Cohort | None = None) -> MetadataCheck:
    """Rows, missing values and leakage of every pretraining store (module docstring).

    Raises:
        ConfigError: a column a component cannot do without has missing values in the rows it
            will read and ``data.missing`` is "error" (naming the component's TOML path and the
            settings that fix it).
    """
    cohort = cohort if cohort is not None else load_cohort(config)
    test = all_test_subjects(config, cohort)
    uses, leaks = [], []
    for path in config.data.pretrain_stores():
        with VolumeStore.open(path) as store:
            needs = column_needs(config, store, registry)
            use, subjects = _store_use(config, store, str(path), needs, test)
        uses.append(use)
        readers = [n.field for n in needs if n.column == config.data.target]
        seen = len(subjects & test)
        if readers and seen:
            leaks.append(
                f"label leakage: {readers[0]} reads '{config.data.target}', the finetuning "
                f"target, and the pretraining rows of store {path} hold {seen} of the "
                f"{len(test)} finetuning test subjects; set pretrain.exclude_test = true to "
                "pretrain without them")
    return MetadataCheck(uses, _target_missing(config), leaks)


def _store_use(config: BenchmarkConfig, store: VolumeStore, path: str, needs: list[ColumnNeed],
               test: set[str]) -> tuple[StoreUse, set[str]]:
    """The rows of one store to pretrain on, and the subjects they hold."""
    subject_ids = np.asarray(store.meta["subject_id"]).astype(str)
    use = StoreUse(path, len(store))
    rows = np.arange(len(store))
    if config.pretrain.exclude_test:
        rows = rows[~np.isin(subject_ids, sorted(test))]
        use.excluded_test = len(store) - len(rows)
    for need in needs:
        if need.column not in store.columns:
            continue  # bench.checks names the missing column
        gone = missing_mask(store, need.column, rows)
        use.missing.setdefault(need.column, int(gone.sum()))  # before any drop for it
        if not gone.any() or not need.complete:
            continue
        if config.data.missing == "error":
            other = f" or {need.fix}" if need.fix else ""
            raise ConfigError(
                f"{need.field}: column '{need.column}' has {int(gone.sum())} missing value(s) "
                f"in the {len(rows)} pretraining rows of store {path}; set data.missing = "
                f"\"drop\" to pretrain without those rows{other}")
        use.dropped[need.column] = int(gone.sum())
        rows = rows[~gone]
    if len(rows) < len(store):
        use.kept = rows.tolist()
    return use, set(subject_ids[rows].tolist())


def _target_missing(config: BenchmarkConfig) -> int:
    """Rows of the finetuning store without a value of ``data.target``."""
    with VolumeStore.open(config.data.finetune_store) as store:
        if config.data.target not in store.columns:
            return 0
        return int(missing_mask(store, config.data.target, np.arange(len(store))).sum())
