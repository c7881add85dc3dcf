"""Subject-level splits of the labelled cohort and the grid's finetuning cells.

Protocol (per seed x repeat): one scan per labelled subject (its first session in the store);
a stratified test set and validation set; the rest is the training pool, from which every label
budget draws its training subjects. Budgets are nested: for one (seed, repeat), the subjects of
a smaller budget are a subset of a larger one's, so label-efficiency curves compare like with
like. Every method (scratch included) sees exactly the same split: the pairing of the report.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from ssltk.bench.grid import SCRATCH, Budget, Cell, Grid, budgets, pretrain_jobs
from ssltk.config import BenchmarkConfig
from ssltk.engine.finetuning import FinetuneRun
from ssltk.engine.targets import load_targets
from ssltk.errors import ConfigError
from ssltk.store import VolumeStore


@dataclass
class Cohort:
    """The labelled subjects of the finetuning store, one scan each."""

    subjects: np.ndarray  # (S,) subject ids
    rows: np.ndarray  # (S,) store row of each subject's scan
    labels: np.ndarray  # (S,) class index
    strata: np.ndarray  # (S,) label, or label x site when stratifying by site
    classes: list[str]


def load_cohort(config: BenchmarkConfig) -> Cohort:
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
    rows = targets.labelled_rows()
    _, first = np.unique(subject_ids[rows], return_index=True)
    rows = np.sort(rows[first])  # first labelled scan of each subject, store order
    labels = targets.labels[rows]
    if d.task == "regression":  # strata: quintiles of the target
        strata = np.digitize(labels, np.quantile(labels, [0.2, 0.4, 0.6, 0.8]))
    else:
        strata = labels.astype(np.int64)
    if site is not None:
        strata = np.array([f"{s}|{x}" for s, x in zip(strata, site[rows])])
    return Cohort(subject_ids[rows], rows, labels, strata, targets.classes or [])


def _rng(seed: int, repeat: int) -> np.random.Generator:
    return np.random.default_rng([seed, repeat, 0x5EED])


def base_split(cohort: Cohort, val_fraction: float, test_fraction: float, seed: int,
               repeat: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified (pool, val, test) index arrays into the cohort; pool in a random order."""
    rng = _rng(seed, repeat)
    pool, val, test = [], [], []
    for stratum in np.unique(cohort.strata):
        idx = rng.permutation(np.flatnonzero(cohort.strata == stratum))
        n_test = int(round(test_fraction * len(idx)))
        n_val = int(round(val_fraction * len(idx)))
        test += idx[:n_test].tolist()
        val += idx[n_test:n_test + n_val].tolist()
        pool += idx[n_test + n_val:].tolist()
    return rng.permutation(pool), np.sort(val), np.sort(test)


def budget_subset(cohort: Cohort, pool: np.ndarray, budget: Budget, field: str) -> np.ndarray:
    """Training subjects of ``budget`` from ``pool`` (a prefix per class: budgets nest)."""
    labels = cohort.labels[pool]
    classes = np.unique(cohort.labels) if cohort.classes else np.unique(labels)
    by_class = {c: pool[labels == c] for c in classes}
    if budget.kind == "n_per_class":
        n = int(budget.value)
        for c, members in by_class.items():
            if len(members) < n:
                name = cohort.classes[c] if cohort.classes else c
                raise ConfigError(f"{field}: {n} per class, but class '{name}' has only "
                                  f"{len(members)} subject(s) in the training pool; lower it")
        return np.sort(np.concatenate([m[:n] for m in by_class.values()]))
    n_total = (int(budget.value) if budget.kind == "n_total"
               else max(int(round(budget.value * len(pool))), len(by_class)))
    if n_total > len(pool):
        raise ConfigError(f"{field}: {n_total} subjects, but the training pool has only "
                          f"{len(pool)} (after the validation and test sets); lower it")
    counts = _allocate(n_total, {c: len(m) for c, m in by_class.items()})
    return np.sort(np.concatenate([by_class[c][:k] for c, k in counts.items()]))


def _allocate(n: int, sizes: dict) -> dict:
    """Stratified counts summing to ``n``: proportional, largest remainder, >= 1 per class."""
    total = sum(sizes.values())
    exact = {c: n * s / total for c, s in sizes.items()}
    counts = {c: max(1, min(sizes[c], int(e))) for c, e in exact.items()}
    order = sorted(sizes, key=lambda c: exact[c] - int(exact[c]), reverse=True)
    while sum(counts.values()) < n:
        for c in order:
            if sum(counts.values()) < n and counts[c] < sizes[c]:
                counts[c] += 1
    while sum(counts.values()) > n:
        c = max(counts, key=lambda k: counts[k])
        counts[c] -= 1
    return counts


def split_hash(cohort: Cohort, train, val, test) -> str:
    sides = {name: sorted(cohort.subjects[idx].tolist())
             for name, idx in (("train", train), ("val", val), ("test", test))}
    return hashlib.sha256(json.dumps(sides, sort_keys=True).encode()).hexdigest()


def _budget_fields(config: BenchmarkConfig) -> dict[Budget, str]:
    f = config.finetune
    out = {Budget("n_per_class", n): f"finetune.n_per_class[{i}]" for i, n in enumerate(f.n_per_class)}
    out |= {Budget("n_total", n): f"finetune.n_total[{i}]" for i, n in enumerate(f.n_total)}
    out |= {Budget("fraction", x): f"finetune.label_fractions[{i}]"
            for i, x in enumerate(f.label_fractions)}
    return out


def finetune_run(config: BenchmarkConfig, cohort: Cohort, split: tuple, mode: str,
                 seed: int, encoder=None) -> FinetuneRun:
    """The finetuning run of one cell: ``split`` is (train, val, test) indices into the cohort."""
    f = config.finetune
    train, val, test = (cohort.rows[idx].tolist() for idx in split)
    return FinetuneRun(
        store=config.data.finetune_store, target=config.data.target, task=config.data.task,
        classes=config.data.classes, backbone=config.backbone, encoder=encoder, mode=mode,
        train_rows=train, val_rows=val, test_rows=test, epochs=f.epochs,
        batch_size=f.batch_size, lr=f.lr, encoder_lr_ratio=f.encoder_lr_ratio,
        patience=f.patience, class_weighting=f.class_weighting,
        augmentations=f.augmentations, precision=config.pretrain.precision, seed=seed)


def expand(config: BenchmarkConfig) -> Grid:
    """Every pretraining job and finetuning cell; budgets are checked against the pool."""
    cohort = load_cohort(config)
    grid = Grid(config, pretrain_jobs(config))
    fields = _budget_fields(config)
    f = config.finetune
    for seed in config.seeds:
        methods = [(SCRATCH, None)] + [(j.method, j) for j in grid.pretrain_jobs
                                        if j.run.seed == seed]
        for repeat in range(f.repeats):
            pool, val, test = base_split(cohort, f.val_fraction, f.test_fraction, seed, repeat)
            for budget in budgets(config):
                train = budget_subset(cohort, pool, budget, fields[budget])
                shash = split_hash(cohort, train, val, test)
                for method, job in methods:
                    for mode in f.modes:
                        run = finetune_run(config, cohort, (train, val, test), mode, seed)
                        grid.cells.append(Cell(method, job, mode, budget, seed, repeat, run,
                                               shash))
    return grid
