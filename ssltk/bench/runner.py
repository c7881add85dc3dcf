"""Running a benchmark grid: validate everything, then pretrain once per job, finetune every
cell, append results; resume by skipping what results.jsonl and the checkpoints already hold.

>>> from ssltk.bench.runner import run_benchmark
>>> run_benchmark("benchmarks/quickstart.toml")
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from ssltk.bench.grid import Cell, Grid, PretrainJob
from ssltk.bench.models import model_dir, model_info, select_best
from ssltk.bench.results import append_result, finished_cells
from ssltk.bench.stats import Budget
from ssltk.config import BenchmarkConfig, load_config
from ssltk.engine import finetune, pretrain
from ssltk.engine.checkpoint import package_versions
from ssltk.engine.finetuning import best_val_score
from ssltk.engine.runtime import resolve_device
from ssltk.errors import ConfigError
from ssltk.registry import Registry, get_registry

log = logging.getLogger(__name__)


@dataclass
class Group:
    """A pretraining job (None: scratch) and its pending finetuning cells: one unit of work.

    ``save_models`` and ``largest`` (the grid's largest budget) say which cells save a bundle.
    """

    job: PretrainJob | None
    cells: list[Cell]
    save_models: str = "none"
    largest: Budget | None = None


def run_dir(config: BenchmarkConfig) -> Path:
    return config.output_dir / config.name


def resolve_devices(config: BenchmarkConfig, override: list[str] | None = None) -> list[str]:
    """The devices to spread groups over: every CUDA device for "auto", else the CPU."""
    wanted = override or config.devices
    if wanted == "auto":
        n = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(n)] if n else ["cpu"]
    if wanted == "cpu":
        return ["cpu"]
    for i, dev in enumerate(wanted):
        try:
            resolve_device(dev)
        except Exception as exc:
            raise ConfigError(f"devices[{i}]: {exc}") from None
    return list(wanted)


def pending_groups(grid: Grid, results_path: Path) -> list[Group]:
    done = finished_cells(results_path)
    policy = grid.config.finetune.save_models
    largest = max((c.budget for c in grid.cells), key=lambda b: b.sort_key, default=None)
    groups = [Group(None, [c for c in grid.cells_of(None) if c.key not in done], policy, largest)]
    for job in grid.pretrain_jobs:
        groups.append(Group(job, [c for c in grid.cells_of(job) if c.key not in done], policy,
                            largest))
    return [g for g in groups if g.cells]


def run_group(group: Group, root: Path, benchmark: str, config_hash: str, device: str,
              registry: Registry | None = None) -> None:
    """Pretrain (or reuse the checkpoint), then finetune and record each pending cell."""
    registry = registry or get_registry()
    encoder, pretrain_s = None, 0.0
    if group.job is not None:
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
                             time.perf_counter() - t0))


def record(cell: Cell, out, benchmark: str, config_hash: str, pretrain_s: float,
           finetune_s: float) -> dict:
    """The results.jsonl line of one finished cell (schema in docs/report.md)."""
    job = cell.pretrain
    run = cell.run
    return {
        "cell": cell.key, "benchmark": benchmark, "config_hash": config_hash,
        "method": cell.method,
        "pretrain": None if job is None else {
            "objective": job.run.objective.name, "hash": job.run.content_hash(),
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


def _device_worker(groups: list[Group], root: Path, benchmark: str, config_hash: str,
                   device: str) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for group in groups:
        run_group(group, root, benchmark, config_hash, device)


def execute(groups: list[Group], config: BenchmarkConfig, devices: list[str], root: Path,
            progress) -> None:
    """Run groups: in this process on one device, else one process per device (spawn)."""
    config_hash = config.content_hash()
    if config.executor != "local":
        from ssltk.bench.cluster import run_on_submitit

        run_on_submitit(groups, config, root, config_hash)
        return
    if len(devices) == 1:
        for group in groups:
            run_group(group, root, config.name, config_hash, devices[0])
            progress(group)
        return
    import torch.multiprocessing as mp

    # Largest groups first, each to the device with the least work so far.
    shares: list[list[Group]] = [[] for _ in devices]
    loads = [0] * len(devices)
    for group in sorted(groups, key=lambda g: g.job is None):
        i = loads.index(min(loads))
        shares[i].append(group)
        loads[i] += 1 if group.job is None else 10
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_device_worker, args=(share, root, config.name, config_hash, dev))
             for share, dev in zip(shares, devices) if share]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} device worker(s) failed; re-run to resume")


def prepare(config_path: str | Path, registry: Registry | None = None,
            build_missing: bool = True,
            devices: list[str] | None = None) -> tuple[BenchmarkConfig, Grid]:
    """Validate config, devices, stores and budgets (in that order); build demo stores; expand."""
    from ssltk.bench.checks import check_data
    from ssltk.bench.splitting import expand

    config = load_config(config_path, registry or get_registry())
    resolve_devices(config, devices)  # a device that does not exist fails before any work
    check_data(config, build_missing=build_missing)
    return config, expand(config)


def copy_config(config_path: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config_path, root / "config.toml")


def run_benchmark(config_path: str | Path, *, devices: list[str] | None = None,
                  registry: Registry | None = None, on_start=None, progress=None) -> Path:
    """Run (or resume) a benchmark; returns its run directory (results.jsonl, report.md...).

    Args:
        on_start: called as ``on_start(config, grid, devices, done)`` before running, ``done``
            being the number of cells already finished.
        progress: called with each finished group (its ``cells``) on single-device runs.
    """
    config, grid = prepare(config_path, registry, devices=devices)
    root = run_dir(config)
    copy_config(Path(config_path), root)
    devices = resolve_devices(config, devices)
    groups = pending_groups(grid, root / "results.jsonl")
    done = len(grid.cells) - sum(len(g.cells) for g in groups)
    log.info("%d cells, %d already done, %d group(s) to run", len(grid.cells), done, len(groups))
    if on_start is not None:
        on_start(config, grid, devices, done)
    execute(groups, config, devices, root, progress or (lambda g: None))
    select_best(root)
    if config.report.gradcam:
        from ssltk.bench.gradcam import write_gradcam_panels

        write_gradcam_panels(root, config.report.gradcam_subjects, registry=registry)
    return root
