"""Subject-level splits of the labelled cohort and the grid's finetuning cells.

Protocol (per seed x repeat): one scan per labelled subject (its first session in the store);
a stratified test set and validation set; the rest is the training pool, from which every label
budget draws its training subjects. Budgets are nested: for one (seed, repeat), the subjects of
a smaller budget are a subset of a larger one's, so label-efficiency curves compare like with
like. Every method (scratch included) sees exactly the same split: the pairing of the report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssltk.bench.grid import SCRATCH, Budget, Cell, Grid, budgets, pretrain_jobs
from ssltk.config import BenchmarkConfig
from ssltk.data.splits import draw_budget, first_rows, split_hash, stratified_split
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
    rows = first_rows(subject_ids, targets.labelled_rows())  # one scan per subject
    labels = targets.labels[rows]
    if d.task == "regression":  # strata: quintiles of the target
        strata = np.digitize(labels, np.quantile(labels, [0.2, 0.4, 0.6, 0.8]))
    else:
        strata = labels.astype(np.int64)
    if site is not None:
        strata = np.array([f"{s}|{x}" for s, x in zip(strata, site[rows])])
    return Cohort(subject_ids[rows], rows, labels, strata, targets.classes or [])


def base_split(cohort: Cohort, val_fraction: float, test_fraction: float, seed: int,
               repeat: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified (pool, val, test) index arrays into the cohort; pool in a random order."""
    return stratified_split(cohort.strata, val_fraction, test_fraction, seed, repeat)


def budget_subset(cohort: Cohort, pool: np.ndarray, budget: Budget, field: str) -> np.ndarray:
    """Training subjects of ``budget`` from ``pool`` (a prefix per class: budgets nest)."""
    return draw_budget(cohort.labels, pool, budget.kind, budget.value, field,
                       cohort.classes or None)


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
                shash = split_hash(cohort.subjects, train, val, test)
                for method, job in methods:
                    for mode in f.modes:
                        run = finetune_run(config, cohort, (train, val, test), mode, seed)
                        grid.cells.append(Cell(method, job, mode, budget, seed, repeat, run,
                                               shash))
    return grid
