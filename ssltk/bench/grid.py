"""Expanding a benchmark config into its grid of pretraining runs and finetuning cells.

Axes: pretraining stores x augmentation sets x objectives x seeds (pretraining runs), then
every pretraining run (plus the baselines of ``finetune.baselines``: scratch, and in frozen mode
``random_init_bn`` and ``raw_input``, :mod:`ssltk.bench.baselines`; and each external encoder
of ``[[pretrain.external]]``, :mod:`ssltk.bench.external`) x finetuning modes x label budgets x
split repeats (finetuning cells); with ``[distill]``, one distillation per teacher cell (a cell
of ``distill.methods`` in ``distill.modes``). Each pretraining run and each cell is identified
by the content hash of what determines its result, so a pretraining checkpoint is shared by all
of its cells and a finished cell (or distillation) is recognised after a crash.

The cells are enumerated once, by :func:`cell_axes`, which needs no data: :func:`expand` draws
each cell's split from the labelled cohort, and ``ssltk run --dry-run`` counts the same list.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ssltk.bench.baselines import BaselineJob, baseline_jobs, runs_random_init
from ssltk.bench.cohort import Cohort, Split, all_test_subjects, load_cohort
from ssltk.bench.external import ExternalJob, external_jobs
from ssltk.bench.stats import BASELINES, RAW_INPUT, SCRATCH
from ssltk.budgets import Budget
from ssltk.config import BenchmarkConfig, ComponentSpec
from ssltk.engine.runs import (DistillRun, FinetuneRun, PretrainRun, distill_run, finetune_run,
                              pretrain_run)
from ssltk.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from ssltk.bench.metadata import MetadataCheck


@dataclass
class PretrainJob:
    """One pretraining run, shared by every finetuning cell of its method and seed."""

    method: str
    run: PretrainRun
    augmentations_label: str
    cache: Path = Path(".pretrain-cache")
    """The pretraining cache (``BenchmarkConfig.pretrain_cache``): the run's folder is in it."""

    @property
    def seed(self) -> int:
        return self.run.seed

    def content_hash(self) -> str:
        return self.run.content_hash()

    @property
    def key(self) -> str:
        return self.run.content_hash()[:16]

    def out_dir(self) -> Path:
        """``CACHE/<content hash>``: any benchmark with the same pretraining finds it there."""
        return self.cache / self.content_hash()

    def link_dir(self, run_dir: Path) -> Path:
        """``RUN_DIR/pretrain/<method>-seed<seed>-<hash[:8]>``: a link to :meth:`out_dir`."""
        return run_dir / "pretrain" / f"{self.method}-seed{self.run.seed}-{self.key[:8]}"


@dataclass
class CellAxes:
    """Where a finetuning cell sits in the grid: a method (or a baseline) x mode x budget x
    seed x repeat."""

    method: str
    pretrain: PretrainJob | ExternalJob | BaselineJob | None
    mode: str
    budget: Budget
    seed: int
    repeat: int


@dataclass
class Cell(CellAxes):
    """One finetuning cell: its grid position, its run and the hash of its split."""

    run: FinetuneRun  # encoder filled in at execution (it is the pretraining's output)
    split_hash: str

    @property
    def key(self) -> str:
        ident = {"finetune": self.run.identity(),
                 "pretrain": self.pretrain.content_hash() if self.pretrain else None}
        text = json.dumps(ident, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


DISTILL_SUFFIX = "+distill"
"""A distilled student is reported as method ``<teacher's method>+distill``."""


@dataclass
class DistillCell:
    """The distillation of one teacher cell: its student is evaluated on the teacher's split.

    Its row in results.jsonl shares the teacher's mode, budget, seed, repeat and split hash,
    so the report pairs it with scratch like any method.
    """

    teacher: Cell
    run: DistillRun  # encoder filled in at execution when distill.init = "pretrained"

    @property
    def method(self) -> str:
        return self.teacher.method + DISTILL_SUFFIX

    @property
    def key(self) -> str:
        ident = {"distill": self.run.model_dump(mode="json", exclude={"encoder"}),
                 "teacher": self.teacher.key}
        text = json.dumps(ident, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Grid:
    config: BenchmarkConfig
    pretrain_jobs: list[PretrainJob] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    external_jobs: list[ExternalJob] = field(default_factory=list)
    distills: list[DistillCell] = field(default_factory=list)
    metadata: MetadataCheck | None = None
    """Rows, missing values and leakage of the pretraining stores (set by the runner)."""
    baseline_jobs: list[BaselineJob] = field(default_factory=list)

    @property
    def jobs(self) -> list[BaselineJob | PretrainJob | ExternalJob]:
        """Every job whose cells finetune: the baselines (random_init_bn, raw_input),
        pretraining runs, then external encoders."""
        return [*self.baseline_jobs, *self.pretrain_jobs, *self.external_jobs]

    def cells_of(self, job: PretrainJob | ExternalJob | BaselineJob | None) -> list[Cell]:
        return [c for c in self.cells if c.pretrain is job]

    def distills_of(self, job: PretrainJob | None) -> list[DistillCell]:
        return [d for d in self.distills if d.teacher.pretrain is job]

    @property
    def size(self) -> int:
        """Units of work that each write one results.jsonl row: cells and distillations."""
        return len(self.cells) + len(self.distills)

    @property
    def methods(self) -> list[str]:
        scratch = [SCRATCH] if runs_random_init(self.config) else []
        return scratch + list(dict.fromkeys(j.method for j in self.jobs))


def augmentation_sets(config: BenchmarkConfig) -> dict[str, list[ComponentSpec] | None]:
    """Label -> pipeline (None: the default pipeline)."""
    if config.pretrain.augmentation_sets:
        return dict(config.pretrain.augmentation_sets)
    return {"default": config.pretrain.augmentations}


def method_labels(config: BenchmarkConfig) -> list[str]:
    """One unique label per objective entry: its name, numbered when a name repeats."""
    names = [o.name for o in config.pretrain.objectives]
    labels = []
    for i, name in enumerate(names):
        labels.append(name if names.count(name) == 1 else f"{name}#{names[:i + 1].count(name)}")
    return labels


def pretrain_jobs(config: BenchmarkConfig, seeds: list[int] | None = None,
                  rows: dict[str, list[int] | None] | None = None,
                  held_out: set[str] = frozenset()) -> list[PretrainJob]:
    """Distinct (objective, pretraining store, augmentation set, seed) combinations.

    Args:
        seeds: the seeds to enumerate (default: ``config.seeds``).
        rows: store path -> the rows to pretrain on (None or absent: every row), from
            :func:`ssltk.bench.metadata.check_metadata`.
        held_out: subjects the monitors' probes must not read (the grid's test subjects).
    """
    rows = rows or {}
    stores = config.data.pretrain_stores()
    aug_sets = augmentation_sets(config)
    jobs = []
    for store in stores:
        for aug_label, augs in aug_sets.items():
            for label, objective in zip(method_labels(config), config.pretrain.objectives):
                method = label
                if len(aug_sets) > 1:
                    method += f"+{aug_label}"
                if len(stores) > 1:
                    method += f"@{Path(store).stem}"
                for seed in config.seeds if seeds is None else seeds:
                    run = pretrain_run(config, objective, store=store, augmentations=augs,
                                       seed=seed, rows=rows.get(str(store)))
                    jobs.append(PretrainJob(method, _hold_out(run, held_out), aug_label,
                                            config.pretrain_cache()))
    return jobs


def _hold_out(run: PretrainRun, subjects: set[str]) -> PretrainRun:
    """``run`` whose monitors also leave out ``subjects`` (not part of its content hash)."""
    if not subjects:
        return run
    monitor = run.monitor.model_copy(update={"exclude_subjects": sorted(
        set(run.monitor.exclude_subjects) | set(subjects))})
    return run.model_copy(update={"monitor": monitor})


def monitor_held_out(config: BenchmarkConfig, cohort: Cohort | None = None) -> set[str]:
    """The grid's test subjects when the monitors probe labels of the finetuning store (else
    none, and no store read: a monitor store of its own holds another cohort's subjects)."""
    m = config.pretrain.monitor
    store = m.store if m.store is not None else config.data.pretrain_stores()[0]
    if not (m.enabled and m.target) or not _same_file(store, config.data.finetune_store):
        return set()
    return all_test_subjects(config, cohort)


def _same_file(a: Path | str, b: Path | str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def grid_external_jobs(config: BenchmarkConfig) -> list[ExternalJob]:
    """The ``[[pretrain.external]]`` jobs, their names checked against the grid's methods."""
    taken = set(BASELINES) | {j.method for j in pretrain_jobs(config, seeds=config.seeds[:1])}
    return external_jobs(config, taken)


def find_job(config: BenchmarkConfig, objective: str | None = None, seed: int | None = None,
             source: str = "objective",
             rows: dict[str, list[int] | None] | None = None) -> PretrainJob:
    """The grid's pretraining of ``objective`` (default: the first) with ``seed`` (default: the
    first of ``seeds``), on the first store with the first augmentation set.

    Raises:
        ConfigError: ``objective`` is not in ``pretrain.objectives`` (named as ``source``).
    """
    if not config.pretrain.objectives:
        raise ConfigError("pretrain.objectives is empty: this benchmark pretrains nothing (its "
                          "encoders are [[pretrain.external]]); add an objective")
    jobs = pretrain_jobs(config, seeds=[config.seeds[0] if seed is None else seed], rows=rows,
                         held_out=monitor_held_out(config))
    for job in jobs:
        if objective is None or job.run.objective.name == objective:
            return job
    names = ", ".join(s.name for s in config.pretrain.objectives)
    raise ConfigError(f"{source} '{objective}' is not in pretrain.objectives ({names})")


def cell_axes(config: BenchmarkConfig,
              jobs: list[BaselineJob | PretrainJob | ExternalJob]) -> list[CellAxes]:
    """Every finetuning cell of the grid: (scratch + each seed's jobs) x repeats x budgets x
    modes, in the order they run. A job without a seed (an external encoder, the raw input) is
    finetuned with every seed, like scratch; a baseline job only in its modes (frozen)."""
    f = config.finetune
    scratch = [(SCRATCH, None)] if runs_random_init(config) else []
    out = []
    for seed in config.seeds:
        methods = scratch + [(j.method, j) for j in jobs if j.seed is None or j.seed == seed]
        for repeat in range(f.repeats):
            for budget in f.budgets():
                out += [CellAxes(method, job, mode, budget, seed, repeat)
                        for method, job in methods for mode in f.modes
                        if not isinstance(job, BaselineJob) or mode in job.modes]
    return out


def is_teacher(config: BenchmarkConfig, axes: CellAxes) -> bool:
    """Whether the cell at ``axes`` is distilled (``[distill]``'s methods and modes)."""
    d = config.distill
    return (d is not None and axes.mode in d.modes and axes.method != RAW_INPUT
            and (d.methods is None or axes.method in d.methods))


def check_distill_methods(config: BenchmarkConfig, axes: list[CellAxes]) -> None:
    """Every method named in ``distill.methods`` is a method of the grid.

    Raises:
        ConfigError: ``distill.methods[i]: unknown method 'x'. Did you mean ...``.
    """
    if config.distill is None or config.distill.methods is None:
        return
    known = list(dict.fromkeys(a.method for a in axes if a.method != RAW_INPUT))
    for i, method in enumerate(config.distill.methods):
        if method == RAW_INPUT:
            raise ConfigError(f"distill.methods[{i}]: '{RAW_INPUT}' has no model to distil "
                              "(its probe reads the input itself); remove it")
        if method not in known:
            raise ConfigError(f"distill.methods[{i}]: unknown method '{method}'."
                              f"{did_you_mean(method, known)} The grid's methods: "
                              f"{', '.join(known)}")


def expand(config: BenchmarkConfig, cohort: Cohort | None = None,
           rows: dict[str, list[int] | None] | None = None) -> Grid:
    """Every pretraining job and finetuning cell; budgets are checked against the pool.

    Args:
        cohort: the labelled cohort to split (default: read from ``data.finetune_store``).
        rows: the rows each pretraining store is used with (:func:`pretrain_jobs`).
    """
    cohort = cohort if cohort is not None else load_cohort(config)
    grid = Grid(config, pretrain_jobs(config, rows=rows,
                                      held_out=monitor_held_out(config, cohort)),
                external_jobs=grid_external_jobs(config), baseline_jobs=baseline_jobs(config))
    splits: dict[tuple, Split] = {}
    all_axes = cell_axes(config, grid.jobs)
    check_distill_methods(config, all_axes)
    for axes in all_axes:
        at = (axes.seed, axes.repeat, axes.budget)
        if at not in splits:
            splits[at] = cohort.split(config.finetune, axes.budget, axes.seed, axes.repeat)
        run = finetune_run(config, splits[at].rows, axes.mode, axes.seed)
        if isinstance(axes.pretrain, ExternalJob):  # its own network, maybe not the grid's
            run = run.model_copy(update={"backbone": axes.pretrain.backbone})
        elif axes.method == RAW_INPUT:  # the probe reads the pooled input, not an encoder
            run = run.model_copy(update={"features": "raw_input"})
        grid.cells.append(Cell(**vars(axes), run=run, split_hash=splits[at].hash))
        if is_teacher(config, axes):
            grid.distills.append(DistillCell(grid.cells[-1], distill_run(
                config, run, splits[at].pool_rows)))
    return grid
