"""What a benchmark will run, and roughly what it will cost (``ssltk run --dry-run``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ssltk.bench.grid import budgets, pretrain_jobs
from ssltk.config import BenchmarkConfig
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


def _store_size(path: Path) -> tuple[int, int] | None:
    """(rows, voxels per volume) of a store, None when it does not exist yet."""
    if not Path(path).exists():
        return None
    with VolumeStore.open(path) as store:
        return len(store), math.prod(store.shape)


def plan(config: BenchmarkConfig) -> tuple[list[PlanRow], int]:
    """Pretraining runs with their cost estimates, and the number of finetuning cells."""
    rows = []
    sizes: dict[str, tuple[int, int] | None] = {}
    from ssltk.registry import get_registry

    registry = get_registry()
    for job in pretrain_jobs(config):
        key = str(job.run.store)
        sizes.setdefault(key, _store_size(job.run.store))
        size = sizes[key]
        steps = passes = est = None
        if size is not None:
            n, voxels = size
            steps = n // job.run.batch_size * job.run.epochs
            views = registry.get("objectives", job.run.objective.name).n_views
            passes = steps * job.run.batch_size * views
            est = passes * voxels / 1e6 * CPU_SECONDS_PER_MEGAVOXEL
        rows.append(PlanRow(job.method, key, job.augmentations_label, job.run.seed, steps,
                            passes, est))
    methods = len({(r.method) for r in rows}) + 1  # + scratch
    cells = (methods * len(config.seeds) * len(config.finetune.modes) * len(budgets(config))
             * config.finetune.repeats)
    return rows, cells
