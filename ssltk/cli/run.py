"""``ssltk run CONFIG.toml``: the pretrain -> finetune benchmark grid, resumable, with a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ssltk.cli._common import console, registry


def _print_plan(config, cfg_path: Path) -> None:
    from ssltk.bench.checks import benchmark_stores
    from ssltk.bench.plan import plan

    rows, cells = plan(config)
    table = Table(title=f"{config.name}: pretraining runs")
    for col in ("method", "store", "augmentations", "seed", "steps", "volume passes",
                "est. CPU time"):
        table.add_column(col)
    for r in rows:
        est = "-" if r.est_seconds is None else f"{r.est_seconds / 60:.1f} min"
        table.add_row(r.method, r.store, r.augmentations, str(r.seed),
                      "-" if r.steps is None else str(r.steps),
                      "-" if r.volume_passes is None else str(r.volume_passes), est)
    out = console()
    out.print(table)
    f = config.finetune
    out.print(f"finetuning: {cells} cells = methods (+ scratch) x {len(config.seeds)} seed(s) x "
              f"modes {f.modes} x budgets {f.n_per_class or ''}{f.n_total or ''}"
              f"{f.label_fractions or ''} x {f.repeats} repeat(s)")
    for role, field, path in benchmark_stores(config):
        if not Path(path).exists():
            how = config.data.ingest_hints.get(role)
            if config.data.synth.get(role):
                how = "built automatically with `ssltk synth` on the first run"
            out.print(f"[yellow]missing[/] {field} = {path}: {how or 'build it with ssltk ingest'}")


def command(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Benchmark TOML.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the grid.")] = False,
    device: Annotated[list[str] | None, typer.Option(
        "--device", help="Run on these devices (repeatable; default: the config's `devices`).")] = None,
    report: Annotated[bool, typer.Option(help="Write the report at the end.")] = True,
) -> None:
    """Run a benchmark grid (resumes after a crash), then write its report."""
    from contextlib import ExitStack

    from ssltk.bench.runner import resolve_devices, run_benchmark
    from ssltk.config import load_config

    reg = registry(ctx)
    if dry_run:
        cfg = load_config(config, reg)
        resolve_devices(cfg, device)
        _print_plan(cfg, config)
        return
    out = console()
    with ExitStack() as stack:
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), console=out)
        task = []

        def on_start(cfg, grid, devices, done):
            out.print(f"{cfg.name}: {len(grid.cells)} cells ({done} already done), "
                      f"{len(grid.pretrain_jobs)} pretraining runs, devices {', '.join(devices)}")
            stack.enter_context(bar)
            task.append(bar.add_task("cells", total=len(grid.cells), completed=done))

        root = run_benchmark(config, devices=device, registry=reg, on_start=on_start,
                             progress=lambda g: bar.advance(task[0], len(g.cells)))
    if report:
        from ssltk.bench.report import load_results, summary_table, write_report

        results = load_results(root)
        path = write_report(root, results=results)
        out.print(summary_table(results))
        out.print(f"[green]report[/] {path}")
