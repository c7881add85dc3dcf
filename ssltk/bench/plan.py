"""What a benchmark will run, and roughly what it will cost (``ssltk run --dry-run``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ssltk.bench.baselines import BaselineJob, baseline_jobs
from ssltk.bench.checks import check_columns, missing_store_hint
from ssltk.bench.external import check_externals
from ssltk.bench.grid import (cell_axes, check_distill_methods, grid_external_jobs, is_teacher,
                              pretrain_jobs)
from ssltk.bench.metadata import check_metadata
from ssltk.bench.stats import RANDOM_INIT_BN, RAW_INPUT, SCRATCH
from ssltk.config import BenchmarkConfig
from ssltk.engine.baselines import raw_input_grid
from ssltk.registry import Registry
from ssltk.store import VolumeStore

# CPU seconds per megavoxel of one view's forward+backward: SimCLR with a ResNet-18 (stride-2
# stem) at 64^3 took 2.11 s per step of 8 x 2 views of 0.262 Mvox on 2 cores
# (benchmarks/perf/train_step.py, docs/performance.md). Order of magnitude only: Genesis costs
# ~5x, smaller encoders less.
CPU_SECONDS_PER_MEGAVOXEL = 0.5


@dataclass
class PlanRow:
    method: str
    store: str
    augmentations: str
    seed: int
    steps: int | None
    volume_passes: int | None
    est_seconds: float | None


@dataclass
class Plan:
    """Pretraining runs with cost estimates, the finetuning cells, and the stores to build."""

    rows: list[PlanRow]
    cells: int
    budgets: list[str]
    missing: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    """One line per external encoder: name, file, sha256 prefix, backbone."""
    distills: int = 0
    """Distillations (``[distill]``): one per teacher cell."""
    metadata: list[str] = field(default_factory=list)
    """Rows used, missing values and label leakage (:mod:`ssltk.bench.metadata`), when the
    stores exist."""
    baselines: list[str] = field(default_factory=list)
    """One line per baseline of ``finetune.baselines``: what it probes and its cell count."""


def _store_size(path: Path) -> tuple[int, int] | None:
    """(rows, voxels per volume) of a store, None when it does not exist yet."""
    if not Path(path).exists():
        return None
    with VolumeStore.open(path) as store:
        return len(store), math.prod(store.shape)


def plan(config: BenchmarkConfig, registry: Registry) -> Plan:
    """The grid of ``config`` without running it: nothing is trained; store headers and
    metadata and the external encoders' weights are read. When the stores exist, the metadata
    the benchmark reads is checked (:func:`~ssltk.bench.metadata.check_metadata`: missing
    values under ``data.missing``, label leakage) and the pretraining rows are the run's.

    ``cells`` counts :func:`~ssltk.bench.grid.cell_axes`, the list :func:`~ssltk.bench.grid.expand`
    makes one cell of each entry of (it needs no data, so a dry run works before the stores
    exist).
    """
    check = None
    if all(Path(p).exists() for _, _, p in config.data.stores()):
        check_columns(config, registry)
        check = check_metadata(config, registry)
    jobs = pretrain_jobs(config, rows=None if check is None else check.pretrain_rows())
    externals = grid_external_jobs(config)
    check_externals(config, registry, externals)
    sizes = {str(p): _store_size(p) for p in config.data.pretrain_stores()}
    rows = []
    for job in jobs:
        size = sizes[str(job.run.store)]
        steps = passes = est = None
        if size is not None:
            n, voxels = size
            n = n if job.run.rows is None else len(job.run.rows)
            steps = n // job.run.batch_size * job.run.epochs
            views = registry.get("objectives", job.run.objective.name).n_views
            passes = steps * job.run.batch_size * views
            est = passes * voxels / 1e6 * CPU_SECONDS_PER_MEGAVOXEL
        rows.append(PlanRow(job.method, str(job.run.store), job.augmentations_label,
                            job.run.seed, steps, passes, est))
    missing = [f"{field} = {path}: {missing_store_hint(config, role)}"
               for role, field, path in config.data.stores() if not Path(path).exists()]
    budgets = [b.label for b in config.finetune.budgets()]
    external = [f"{j.method}: {j.entry.path} (sha256 {j.sha256[:12]}, backbone "
                f"{j.backbone.name}), finetuned with every seed" for j in externals]
    baselines = baseline_jobs(config)
    axes = cell_axes(config, [*baselines, *jobs, *externals])
    check_distill_methods(config, axes)
    return Plan(rows, len(axes), budgets, missing, external,
                distills=sum(is_teacher(config, a) for a in axes),
                metadata=[] if check is None else check.lines(),
                baselines=baseline_lines(config, baselines, axes))


def baseline_lines(config: BenchmarkConfig, jobs: list[BaselineJob], axes: list) -> list[str]:
    """``method (modes): what it probes; N cells`` for each baseline of the grid."""
    count = {m: sum(a.method == m for a in axes) for m in (SCRATCH, RANDOM_INIT_BN, RAW_INPUT)}
    lines = []
    if count[SCRATCH]:
        lines.append(f"{SCRATCH} ({', '.join(config.finetune.modes)}): the untrained encoder "
                     f"of each seed; {count[SCRATCH]} cells")
    if any(j.method == RANDOM_INIT_BN for j in jobs):
        pool = config.data.pretrain_stores()[0]
        lines.append(f"{RANDOM_INIT_BN} (frozen): the untrained encoder of each seed, its "
                     f"batch-norm statistics fitted on {pool} (no gradient step); "
                     f"{count[RANDOM_INIT_BN]} cells")
    if any(j.method == RAW_INPUT for j in jobs):
        size = _store_shape(config.data.finetune_store)
        pooled = ("at most 4096 values" if size is None else
                  f"{'x'.join(map(str, raw_input_grid(size)))} per channel "
                  f"({size[0] * math.prod(raw_input_grid(size))} values)")
        lines.append(f"{RAW_INPUT} (frozen): the input average-pooled to {pooled}; "
                     f"{count[RAW_INPUT]} cells")
    return lines


def _store_shape(path: Path) -> tuple[int, ...] | None:
    """``(C, *spatial)`` of a store's volumes, None when it does not exist yet."""
    if not Path(path).exists():
        return None
    with VolumeStore.open(path) as store:
        return tuple(store.shape)
