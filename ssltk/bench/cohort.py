"""The labelled cohort of a benchmark and its subject-level splits.

Protocol (per seed x repeat): one scan per labelled subject (its first session in the store);
a stratified test set and validation set; the rest is the training pool, from which every label
budget draws its training subjects. Budgets are nested: for one (seed, repeat), the subjects of
a smaller budget are a subset of a larger one's, so label-efficiency curves compare like with
like. Every method (scratch included) sees exactly the same split: the pairing of the report.
The drawing itself is :mod:`ssltk.data.splits`; this module applies it to a benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ssltk.budgets import Budget
from ssltk.config import BenchmarkConfig, FinetuneConfig
from ssltk.data.splits import draw_budget, first_rows, split_hash, stratified_split
from ssltk.engine.targets import load_targets
from ssltk.errors import ConfigError
from ssltk.store import VolumeStore


@dataclass
class Cohort:
    """The labelled subjects of the finetuning store, one scan each."""

    subjects: np.ndarray  # (S,) subject ids
    rows: np.ndarray  # (S,) store row of each subject's scan
    labels: np.ndarray  # (S,) class index (classification) or value (regression)
    strata: np.ndarray  # (S,) label, or label x site when stratifying by site
    classes: list[str]

    def split(self, finetune: FinetuneConfig, budget: Budget, seed: int,
              repeat: int = 0) -> Split:
        """The (train, val, test) split of one cell: ``budget``'s subjects of the pool of the
        (seed, repeat) draw.

        Raises:
            ConfigError: the budget needs more subjects than the pool has (naming
                ``budget.source``).
        """
        pool, val, test = stratified_split(self.strata, finetune.val_fraction,
                                           finetune.test_fraction, seed, repeat)
        train = draw_budget(self.labels, pool, budget.kind, budget.value, budget.source,
                            self.classes or None)
        return Split(self, train, val, test)


@dataclass
class Split:
    """Index arrays into a :class:`Cohort`'s subjects: the three sides of one cell."""

    cohort: Cohort
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @cached_property
    def rows(self) -> tuple[list[int], list[int], list[int]]:
        """Store rows of the train, val and test sides."""
        return tuple(self.cohort.rows[side].tolist() for side in (self.train, self.val,
                                                                   self.test))

    @cached_property
    def hash(self) -> str:
        """Stable id of the split (what the report pairs methods on)."""
        return split_hash(self.cohort.subjects, self.train, self.val, self.test)


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
    rows = first_rows(subject_ids, targets.labelled_rows())  # one scan per subject
    labels = targets.labels[rows]
    if d.task == "regression":  # strata: quintiles of the target
        strata = np.digitize(labels, np.quantile(labels, [0.2, 0.4, 0.6, 0.8]))
    else:
        strata = labels.astype(np.int64)
    if site is not None:
        strata = np.array([f"{s}|{x}" for s, x in zip(strata, site[rows])])
    return Cohort(subject_ids[rows], rows, labels, strata, targets.classes or [])
