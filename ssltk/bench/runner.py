"""Running a benchmark grid: validate everything, then pretrain once per job, finetune every
cell, append results; resume by skipping what results.jsonl and the checkpoints already hold.

>>> from ssltk.bench.runner import run_benchmark
>>> run_benchmark("benchmarks/quickstart.toml")
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ssltk import locks
from ssltk.bench.baselines import BaselineJob
from ssltk.bench.checks import check_data
from ssltk.bench.cluster import run_on_submitit
from ssltk.bench.cohort import load_cohort
from ssltk.bench.grid import Grid, expand
from ssltk.bench.metadata import METADATA_FILE, check_metadata
from ssltk.bench.groups import Group, pending_groups, run_group, run_groups
from ssltk.bench.models import select_best
from ssltk.config import BenchmarkConfig, load_config
from ssltk.engine.runtime import resolve_device
from ssltk.errors import ConfigError, SsltkError
from ssltk.registry import Registry, get_registry

log = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"

Progress = Callable[[int, int], None]
"""``progress(done, total)``: finished cells so far and the grid's cell count."""


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


def _shares(groups: list[Group], n: int) -> list[list[Group]]:
    """Groups per device: pretraining groups first, each to the device with the least work
    (scratch and the baselines, which train nothing, count as a tenth of one)."""
    shares: list[list[Group]] = [[] for _ in range(n)]
    loads = [0] * n
    cheap = [g.job is None or isinstance(g.job, BaselineJob) for g in groups]
    for is_cheap, group in sorted(zip(cheap, groups), key=lambda pair: pair[0]):
        i = loads.index(min(loads))
        shares[i].append(group)
        loads[i] += 1 if is_cheap else 10
    return shares


def execute(groups: list[Group], config: BenchmarkConfig, devices: list[str], root: Path,
            registry: Registry, advance: Callable[[int], None] = lambda cells: None) -> None:
    """Run groups: in this process on one device, else one process per device (spawn) or one
    cluster job per group. Every process loads the plugins ``registry`` loaded.

    Args:
        advance: called with the number of cells of each group finished in this process.
    """
    config_hash = config.content_hash()
    if config.executor != "local":
        run_on_submitit(groups, config, root, config_hash, registry.disabled)
        return
    if len(devices) == 1:
        for group in groups:
            run_group(group, root, config.name, config_hash, devices[0], registry)
            advance(group.size)
        return
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=run_groups, args=(share, root, config.name, config_hash, dev,
                                                  registry.disabled))
             for share, dev in zip(_shares(groups, len(devices)), devices) if share]
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
    registry = registry or get_registry()
    return _prepare(load_config(config_path, registry), registry, build_missing, devices)


def _prepare(config: BenchmarkConfig, registry: Registry, build_missing: bool,
             devices: list[str] | None) -> tuple[BenchmarkConfig, Grid]:
    resolve_devices(config, devices)  # a device that does not exist fails before any work
    check_data(config, registry, build_missing=build_missing)
    cohort = load_cohort(config)
    metadata = check_metadata(config, registry, cohort)
    grid = expand(config, cohort, rows=metadata.pretrain_rows())
    grid.metadata = metadata
    return config, grid


def copy_config(config_path: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config_path, root / "config.toml")


class RunLockedError(SsltkError):
    """Another ``ssltk run`` works in the same run folder (message names its pid and host)."""


@contextmanager
def run_lock(root: Path, config_path: str | Path) -> Iterator[None]:
    """One ``ssltk run`` per run folder at a time, across processes and hosts: a second one
    fails at once naming the holder. A run folder made here and left empty is removed."""
    made = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE

    def busy(holder: str) -> RunLockedError:
        return RunLockedError(f"{root} is being run by {holder} (another `ssltk run "
                              f"{config_path}`); wait for it to finish, or stop it and re-run "
                              f"to resume (lock: {path})")

    held = False
    try:
        locks.acquire(path, busy)
        held = True
        yield
    finally:
        if held:
            locks.release(path)
        if made and not any(root.iterdir()):
            root.rmdir()


def run_benchmark(config_path: str | Path, *, devices: list[str] | None = None,
                  registry: Registry | None = None, on_start=None,
                  progress: Progress | None = None) -> Path:
    """Run (or resume) a benchmark; returns its run directory (results.jsonl, report.md...).

    Args:
        registry: the plugins to use, here and in every worker process (default: all
            installed minus ``SSLTK_DISABLE_PLUGINS``).
        on_start: called as ``on_start(config, grid, devices, done)`` before running, ``done``
            being the number of cells already finished.
        progress: called as ``progress(done, total)`` at the start and after each group run
            in this process (single-device runs).
    """
    registry = registry or get_registry()
    config = load_config(config_path, registry)
    root = run_dir(config)
    with run_lock(root, config_path):
        _run(config_path, config, root, registry, devices, on_start, progress)
    return root


def _run(config_path: str | Path, config: BenchmarkConfig, root: Path, registry: Registry,
         devices: list[str] | None, on_start, progress: Progress | None) -> None:
    config, grid = _prepare(config, registry, True, devices)
    copy_config(Path(config_path), root)
    (root / METADATA_FILE).write_text(json.dumps(grid.metadata.as_dict(), indent=2) + "\n")
    for line in grid.metadata.lines():
        (log.warning if line in grid.metadata.leaks else log.info)("%s", line)
    devices = resolve_devices(config, devices)
    groups = pending_groups(grid, root / "results.jsonl")
    done = grid.size - sum(g.size for g in groups)
    log.info("%d cells, %d already done, %d group(s) to run", grid.size, done, len(groups))
    if on_start is not None:
        on_start(config, grid, devices, done)
    report = progress or (lambda done, total: None)
    report(done, grid.size)

    def advance(cells: int) -> None:
        nonlocal done
        done += cells
        report(done, grid.size)

    execute(groups, config, devices, root, registry, advance)
    select_best(root)
    if config.report.gradcam:
        from ssltk.bench.gradcam import write_gradcam_panels

        write_gradcam_panels(root, config.report.gradcam_subjects, registry=registry)
