"""Units of work of a benchmark: a pretraining job and its pending finetuning cells.

:func:`run_group` pretrains (or reuses the checkpoint), then finetunes and records each cell,
and distils each teacher cell (``[distill]``): the teacher's model is kept as a bundle under
``RUN_DIR/distill/teachers/<cell>`` from its finetuning until its student's row is written, so
a crash in between resumes with the distillation alone. A baseline job
(:mod:`ssltk.bench.baselines`) fits its encoder's batch-norm statistics (or, for the raw
input, nothing) instead of pretraining. The frozen cells of one encoder share its embeddings
(:class:`~ssltk.engine.finetuning.EmbeddingCache`).
:func:`run_groups` is what every worker process runs (a spawned device worker, a submitit job):
it rebuilds the plugin registry in that process from the *names* of the disabled plugins, so a
plugin disabled in the parent (``ssltk --disable-plugin X``) is never imported in a worker.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from ssltk import locks
from ssltk.bench.baselines import BaselineJob, materialise_baseline
from ssltk.bench.external import ExternalJob, materialise
from ssltk.bench.grid import Cell, DistillCell, Grid, PretrainJob
from ssltk.bench.models import model_dir, model_info
from ssltk.bench.results import append_result, finished_cells
from ssltk.budgets import Budget
from ssltk.engine import distill, finetune, pretrain
from ssltk.engine.bundle import MODEL_JSON, check_target
from ssltk.engine.checkpoint import package_versions
from ssltk.engine.finetuning import EmbeddingCache, best_val_score
from ssltk.engine.runtime import numerics
from ssltk.errors import SsltkError
from ssltk.registry import Registry, get_registry


@dataclass
class Group:
    """A pretraining job (None: scratch; or an external encoder, or a baseline) and its pending
    finetuning cells: one unit of work.

    ``save_models`` and ``largest`` (the grid's largest budget) say which cells save a bundle.
    """

    job: PretrainJob | ExternalJob | BaselineJob | None
    cells: list[Cell]
    save_models: str = "none"
    largest: Budget | None = None
    distills: list[DistillCell] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Rows of results.jsonl this group writes: its cells and its distillations."""
        return len(self.cells) + len(self.distills)


def pending_groups(grid: Grid, results_path: Path) -> list[Group]:
    """The groups with cells or distillations that ``results_path`` does not hold yet,
    scratch first."""
    done = finished_cells(results_path)
    policy = grid.config.finetune.save_models
    largest = max((c.budget for c in grid.cells), key=lambda b: b.sort_key, default=None)
    groups = [Group(job, [c for c in grid.cells_of(job) if c.key not in done], policy, largest,
                    [d for d in grid.distills_of(job) if d.key not in done])
              for job in [None, *grid.jobs]]
    return [g for g in groups if g.size]


def teacher_dir(root: Path, cell: Cell) -> Path:
    """Where a teacher cell's model waits for its distillation."""
    return root / "distill" / "teachers" / cell.key


def run_group(group: Group, root: Path, benchmark: str, config_hash: str, device: str,
              registry: Registry) -> None:
    """Pretrain (or reuse the checkpoint), then finetune and record each pending cell, and
    distil each pending teacher right after its cell."""
    encoder, pretrain_s, facts = None, 0.0, {}
    first = (group.cells or [d.teacher for d in group.distills])[0]
    if isinstance(group.job, ExternalJob):  # no training: its file, mapped and checked
        encoder = materialise(group.job, root, first.run.store, registry)
    elif isinstance(group.job, BaselineJob):  # no training: batch-norm statistics at most
        t0 = time.perf_counter()
        encoder, facts = materialise_baseline(group.job, root, first.run.store, registry,
                                              device)
        pretrain_s = time.perf_counter() - t0
    elif group.job is not None:
        t0 = time.perf_counter()
        result = _pretrain_cached(group.job, root, registry, device)
        encoder, pretrain_s = result.encoder_path, time.perf_counter() - t0
    students = {d.teacher.key: d for d in group.distills}
    pending = {c.key for c in group.cells}
    order = group.cells + [d.teacher for d in group.distills if d.teacher.key not in pending]
    info = (benchmark, config_hash)
    embeddings = EmbeddingCache()  # the frozen cells of this encoder embed each row once
    for cell in order:
        student = students.get(cell.key)
        if cell.key in pending:
            t0 = time.perf_counter()
            out = _finetune(cell, encoder, group, root, info, device, registry,
                            keep=student is not None, embeddings=embeddings)
            rec = record(cell, out, benchmark, config_hash, pretrain_s,
                         time.perf_counter() - t0) | {"numerics": numerics(device)}
            append_result(root / "results.jsonl", rec | ({"baseline": facts} if facts else {}))
        if student is not None:
            _distil(student, encoder, group, root, info, pretrain_s, device, registry)


def _pretrain_cached(job: PretrainJob, root: Path, registry: Registry, device: str):
    """Pretrain into (or reuse) the job's cache folder, under a lock beside it: benchmarks in
    other run folders share the cache, and two must not train the same hash at once. The run
    folder links to it (``PretrainJob.link_dir``), where its monitors are read."""
    folder = job.out_dir()
    folder.mkdir(parents=True, exist_ok=True)
    _link(job.link_dir(root), folder)
    lock = folder.with_name(folder.name + ".lock")

    def busy(holder: str) -> SsltkError:
        return SsltkError(f"pretraining {folder} is being trained by {holder} (another "
                          f"benchmark sharing pretrain.cache_dir); re-run when it has finished "
                          f"to reuse it")

    locks.acquire(lock, busy)
    try:
        return pretrain(job.run, folder, registry=registry, device=device)
    finally:
        locks.release(lock)


def _link(link: Path, target: Path) -> None:
    """``link`` -> ``target`` (absolute), made under a temporary name and renamed into place."""
    if link.is_symlink() and link.resolve() == target.resolve():
        return
    if link.exists() and not link.is_symlink():
        return  # a run folder from before the cache keeps its own pretraining folder
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.link-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.resolve(), target_is_directory=True)
    os.replace(tmp, link)


def _finetune(cell: Cell, encoder: Path | None, group: Group, root: Path, info: tuple,
              device: str, registry: Registry, keep: bool,
              embeddings: EmbeddingCache | None = None):
    """Finetune a cell; ``keep``: also keep its model as a teacher (teacher_dir)."""
    run = cell.run.model_copy(update={"encoder": encoder})
    save = (model_dir(root, cell, group.save_models, group.largest)
            if run.features == "encoder" else None)  # a raw-input probe has no encoder
    target = teacher_dir(root, cell) if keep else save
    if keep and save is not None:
        check_target(save)  # before training, not after
    out = finetune(run, registry=registry, device=device, save_model=target,
                   model_info=model_info(cell, *info) if target else None,
                   embeddings=embeddings)
    if keep and save is not None:
        _copy_bundle(target, save)
    return out


def _copy_bundle(src: Path, dest: Path) -> None:
    """Copy a bundle folder over ``dest`` (a new folder renamed into place)."""
    tmp = dest.with_name(f".{dest.name}.copy-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def _distil(student: DistillCell, encoder: Path | None, group: Group, root: Path, info: tuple,
            pretrain_s: float, device: str, registry: Registry) -> None:
    """Distil a teacher cell into its student and record the row; the teacher's model is
    re-made (same seed, same weights) only if a crash lost it."""
    teacher = teacher_dir(root, student.teacher)
    if not (teacher / MODEL_JSON).is_file():
        _finetune(student.teacher, encoder, Group(group.job, []), root, info, device,
                  registry, keep=True)
    t0 = time.perf_counter()
    run = student.run
    if run.init == "pretrained":
        run = run.model_copy(update={"encoder": encoder})
    out = distill(run, teacher, registry=registry, device=device)
    rec = record(student.teacher, out, *info, pretrain_s, time.perf_counter() - t0)
    rec |= {"cell": student.key, "method": student.method, "numerics": numerics(device),
            "distill": {"teacher_cell": student.teacher.key, "n_pool": len(run.pool_rows),
                        "pool_agreement": out.pool_agreement,
                        "student": run.student.model_dump(mode="json"),
                        "temperature": run.temperature, "label_weight": run.label_weight,
                        "init": run.init, "epochs_run": len(out.history)}}
    append_result(root / "results.jsonl", rec)
    shutil.rmtree(teacher, ignore_errors=True)


def run_groups(groups: Iterable[Group], root: Path, benchmark: str, config_hash: str,
               device: str, disabled: frozenset[str]) -> int:
    """A worker process's work: ``groups`` one after the other with plugins ``disabled``.

    Returns:
        The number of cells (and distillations) run.
    """
    torch.set_num_threads(max(1, torch.get_num_threads()))
    registry = get_registry(disabled=set(disabled))
    cells = 0
    for group in groups:
        run_group(group, root, benchmark, config_hash, device, registry)
        cells += group.size
    return cells


def record(cell: Cell, out, benchmark: str, config_hash: str, pretrain_s: float,
           finetune_s: float) -> dict:
    """The results.jsonl line of one finished cell (schema in docs/report.md)."""
    job = cell.pretrain
    run = cell.run
    return {
        "cell": cell.key, "benchmark": benchmark, "config_hash": config_hash,
        "method": cell.method,
        "pretrain": None if job is None
        else job.describe() if isinstance(job, ExternalJob | BaselineJob)
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
