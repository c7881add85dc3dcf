"""The labelled cohort of a benchmark and its subject-level splits.

Protocol (per seed x repeat): one scan per labelled subject (its first session in the store);
a stratified test set and validation set; the rest is the training pool, from which every label
budget draws its training subjects: stratified by class for classification, spread over the
target's quantile bins (:data:`~ssltk.data.splits.REGRESSION_BINS`, x site with
``stratify_site``) for regression (:func:`~ssltk.data.splits.draw_spread`). Budgets are nested: for one (seed, repeat), the subjects of
a smaller budget are a subset of a larger one's, so label-efficiency curves compare like with
like. Every method (scratch included) sees exactly the same split: the pairing of the report.
With ``[finetune] test_from``, the test set is the store's own (the subjects whose rows have
that metadata value), the same in every repeat; validation and the pool are drawn from the
other subjects.
The drawing itself is :mod:`ssltk.data.splits`; this module applies it to a benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ssltk.budgets import Budget
from ssltk.config import BenchmarkConfig, FinetuneConfig, TestFrom
from ssltk.data.splits import (draw_budget, draw_spread, first_rows, quantile_bins, split_hash,
                               stratified_split)
from ssltk.engine.targets import load_targets
from ssltk.errors import ConfigError
from ssltk.store import VolumeStore


@dataclass
class Cohort:
    """The labelled subjects of the finetuning store, one scan each."""

    subjects: np.ndarray  # (S,) subject ids
    rows: np.ndarray  # (S,) store row of each subject's scan
    labels: np.ndarray  # (S,) class index (classification) or value (regression)
    strata: np.ndarray  # (S,) label (or target bin), x site when stratifying by site
    classes: list[str]
    in_test: np.ndarray | None = None  # (S,) bool: the predefined test set (test_from)
    test_from: dict | None = None  # test_from's column and value (part of the split hash)

    def split(self, finetune: FinetuneConfig, budget: Budget, seed: int,
              repeat: int = 0) -> Split:
        """The (train, val, test) split of one cell: ``budget``'s subjects of the pool of the
        (seed, repeat) draw.

        Raises:
            ConfigError: the budget needs more subjects than the pool has (naming
                ``budget.source``).
        """
        pool, val, test = self.sides(finetune, seed, repeat)
        if not self.classes:  # regression: spread over the target's bins
            train = draw_spread(self.strata, pool, budget.kind, budget.value, budget.source)
        else:
            train = draw_budget(self.labels, pool, budget.kind, budget.value, budget.source,
                                self.classes)
        return Split(self, train, val, test, pool=np.sort(pool))

    def sides(self, finetune: FinetuneConfig, seed: int,
              repeat: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pool, val, test) of the (seed, repeat) draw, before any budget."""
        if self.in_test is None:
            return stratified_split(self.strata, finetune.val_fraction, finetune.test_fraction,
                                    seed, repeat)
        return self._predefined(finetune.val_fraction, seed, repeat)

    def _predefined(self, val_fraction: float, seed: int,
                    repeat: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pool, val, test) with the predefined test set: val and pool from the others."""
        rest = np.flatnonzero(~self.in_test)
        pool, val, _ = stratified_split(self.strata[rest], val_fraction, 0.0, seed, repeat)
        return rest[pool], np.sort(rest[val]), np.flatnonzero(self.in_test)


@dataclass
class Split:
    """Index arrays into a :class:`Cohort`'s subjects: the three sides of one cell."""

    cohort: Cohort
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    pool: np.ndarray | None = None
    """The whole training pool the budget was drawn from (every subject that is neither
    validation nor test): what a distillation teacher labels."""

    @cached_property
    def rows(self) -> tuple[list[int], list[int], list[int]]:
        """Store rows of the train, val and test sides."""
        return tuple(self.cohort.rows[side].tolist() for side in (self.train, self.val,
                                                                   self.test))

    @cached_property
    def pool_rows(self) -> list[int]:
        """Store rows of the training pool."""
        return self.cohort.rows[self.pool].tolist()

    @cached_property
    def hash(self) -> str:
        """Stable id of the split (what the report pairs methods on)."""
        return split_hash(self.cohort.subjects, self.train, self.val, self.test,
                          salt=self.cohort.test_from)


def all_test_subjects(config: BenchmarkConfig, cohort: Cohort | None = None) -> set[str]:
    """Subjects that are a test subject in any (seed, repeat) split of the grid: what every step
    before a cell's test (the pretraining monitors' probes) must never read.

    Args:
        cohort: the labelled cohort (default: read from ``data.finetune_store``).
    """
    cohort = cohort if cohort is not None else load_cohort(config)
    out: set[str] = set()
    for seed in config.seeds:
        for repeat in range(config.finetune.repeats):
            _, _, test = cohort.sides(config.finetune, seed, repeat)
            out.update(cohort.subjects[test].tolist())
    return out


def load_cohort(config: BenchmarkConfig) -> Cohort:
    """The labelled subjects of ``data.finetune_store``, with their strata."""
    d = config.data
    with VolumeStore.open(d.finetune_store) as store:
        targets = load_targets(store, d.target, d.task, d.classes, source=str(d.finetune_store))
        subject_ids = np.asarray(store.meta["subject_id"]).astype(str)
        site = None
        if config.finetune.stratify_site:
            if config.finetune.stratify_site not in store.columns:
                raise ConfigError(f"finetune.stratify_site: store {d.finetune_store} has no "
                                  f"column '{config.finetune.stratify_site}'")
            site = np.asarray(store.meta[config.finetune.stratify_site]).astype(str)
        test_from = config.finetune.test_from
        test_rows = (None if test_from is None
                     else predefined_test(store, test_from, subject_ids, d.finetune_store))
    usable = targets.labelled_rows()
    if site is not None:
        usable = usable[site_present(site, usable, config)]
    rows = first_rows(subject_ids, usable)  # one scan per subject
    labels = targets.labels[rows]
    if d.task == "regression":
        strata = quantile_bins(labels)
    else:
        strata = labels.astype(np.int64)
    if site is not None:
        strata = np.array([f"{s}|{x}" for s, x in zip(strata, site[rows])])
    in_test = None if test_rows is None else test_rows[rows]
    if in_test is not None and not in_test.any():
        raise ConfigError(f"finetune.test_from: no labelled subject of store {d.finetune_store} "
                          f"has {test_from.column} = '{test_from.value}' (of target "
                          f"'{d.target}' with the classes kept); the test set would be empty")
    return Cohort(subject_ids[rows], rows, labels, strata, targets.classes or [], in_test,
                  None if test_from is None else test_from.model_dump())


def site_present(site: np.ndarray, rows: np.ndarray, config: BenchmarkConfig) -> np.ndarray:
    """``(len(rows),)`` bool: the labelled rows with a site (``data.missing`` decides the rest).

    Raises:
        ConfigError: a labelled row has no site and ``data.missing`` is "error".
    """
    present = site[rows] != ""
    n_missing = int((~present).sum())
    if n_missing and config.data.missing == "error":
        raise ConfigError(
            f"finetune.stratify_site: column '{config.finetune.stratify_site}' has {n_missing} "
            f"missing value(s) among the labelled rows of store {config.data.finetune_store}; "
            "set data.missing = \"drop\" to leave those subjects out, or fill the column")
    return present


def predefined_test(store: VolumeStore, test_from: TestFrom, subject_ids: np.ndarray,
                    path: Path) -> np.ndarray:
    """``(N,)`` bool: the store's rows whose ``test_from.column`` is ``test_from.value``.

    Raises:
        ConfigError: the column is missing, no row has the value, or a subject has rows on
            both sides (its scans would leak from training into the test set).
    """
    column, value = test_from.column, test_from.value
    if column not in store.columns:
        raise ConfigError(f"finetune.test_from.column: store {path} has no column '{column}' "
                          f"(it has {', '.join(store.columns)})")
    values = np.asarray(store.meta[column]).astype(str)
    is_test = values == value
    if not is_test.any():
        present = sorted(set(values.tolist()))
        shown = ", ".join(repr(v) for v in present[:12]) + (", ..." if len(present) > 12 else "")
        raise ConfigError(f"finetune.test_from.value: no row of store {path} has {column} = "
                          f"'{value}' (its values: {shown})")
    mixed = sorted(set(subject_ids[is_test].tolist()) & set(subject_ids[~is_test].tolist()))
    if mixed:
        raise ConfigError(
            f"finetune.test_from: {len(mixed)} subject(s) of store {path} have rows both with "
            f"and without {column} = '{value}' (e.g. {', '.join(mixed[:3])}), which would leak "
            f"them from training into the test set; give each subject's rows one {column}")
    return is_test
