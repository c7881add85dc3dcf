"""Units of work of a benchmark: a pretraining job and its pending finetuning cells.

:func:`run_group` pretrains (or reuses the checkpoint), then finetunes and records each cell.
:func:`run_groups` is what every worker process runs (a spawned device worker, a submitit job):
it rebuilds the plugin registry in that process from the *names* of the disabled plugins, so a
plugin disabled in the parent (``ssltk --disable-plugin X``) is never imported in a worker.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from ssltk.bench.external import ExternalJob, materialise
from ssltk.bench.grid import Cell, Grid, PretrainJob
from ssltk.bench.models import model_dir, model_info
from ssltk.bench.results import append_result, finished_cells
from ssltk.budgets import Budget
from ssltk.engine import finetune, pretrain
from ssltk.engine.checkpoint import package_versions
from ssltk.engine.finetuning import best_val_score
from ssltk.engine.runtime import numerics
from ssltk.registry import Registry, get_registry


@dataclass
class Group:
    """A pretraining job (None: scratch; or an external encoder) and its pending finetuning
    cells: one unit of work.

    ``save_models`` and ``largest`` (the grid's largest budget) say which cells save a bundle.
    """

    job: PretrainJob | ExternalJob | None
    cells: list[Cell]
    save_models: str = "none"
    largest: Budget | None = None


def pending_groups(grid: Grid, results_path: Path) -> list[Group]:
    """The groups with cells that ``results_path`` does not hold yet, scratch first."""
    done = finished_cells(results_path)
    policy = grid.config.finetune.save_models
    largest = max((c.budget for c in grid.cells), key=lambda b: b.sort_key, default=None)
    groups = [Group(job, [c for c in grid.cells_of(job) if c.key not in done], policy, largest)
              for job in [None, *grid.jobs]]
    return [g for g in groups if g.cells]


def run_group(group: Group, root: Path, benchmark: str, config_hash: str, device: str,
              registry: Registry) -> None:
    """Pretrain (or reuse the checkpoint), then finetune and record each pending cell."""
    encoder, pretrain_s = None, 0.0
    if isinstance(group.job, ExternalJob):  # no training: its file, mapped and checked
        first = group.cells[0].run
        encoder = materialise(group.job, root, first.store, registry)
    elif group.job is not None:
        t0 = time.perf_counter()
        result = pretrain(group.job.run, group.job.out_dir(root), registry=registry, device=device)
        encoder, pretrain_s = result.encoder_path, time.perf_counter() - t0
    for cell in group.cells:
        t0 = time.perf_counter()
        run = cell.run.model_copy(update={"encoder": encoder})
        save = model_dir(root, cell, group.save_models, group.largest)
        out = finetune(run, registry=registry, device=device, save_model=save,
                       model_info=model_info(cell, benchmark, config_hash) if save else None)
        append_result(root / "results.jsonl",
                      record(cell, out, benchmark, config_hash, pretrain_s,
                             time.perf_counter() - t0) | {"numerics": numerics(device)})


def run_groups(groups: Iterable[Group], root: Path, benchmark: str, config_hash: str,
               device: str, disabled: frozenset[str]) -> int:
    """A worker process's work: ``groups`` one after the other with plugins ``disabled``.

    Returns:
        The number of cells run.
    """
    torch.set_num_threads(max(1, torch.get_num_threads()))
    registry = get_registry(disabled=set(disabled))
    cells = 0
    for group in groups:
        run_group(group, root, benchmark, config_hash, device, registry)
        cells += len(group.cells)
    return cells


def record(cell: Cell, out, benchmark: str, config_hash: str, pretrain_s: float,
           finetune_s: float) -> dict:
    """The results.jsonl line of one finished cell (schema in docs/report.md)."""
    job = cell.pretrain
    run = cell.run
    return {
        "cell": cell.key, "benchmark": benchmark, "config_hash": config_hash,
        "method": cell.method,
        "pretrain": None if job is None else job.describe() if isinstance(job, ExternalJob)
        else {"objective": job.run.objective.name, "hash": job.run.content_hash(),
              "store": str(job.run.store), "augmentations": job.augmentations_label},
        "mode": cell.mode, "budget": cell.budget.as_dict(), "budget_label": cell.budget.label,
        "seed": cell.seed, "repeat": cell.repeat, "split_hash": cell.split_hash,
        "n_train": len(run.train_rows), "n_val": len(run.val_rows), "n_test": len(run.test_rows),
        "task": run.task, "classes": out.predictions.get("classes"),
        "metrics": out.metrics, "val_score": best_val_score(out),
        "predictions": out.predictions,
        "timings": {"pretrain_s": pretrain_s, "finetune_s": finetune_s},
        "versions": package_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
