"""``ssltk run CONFIG.toml``: the pretrain -> finetune benchmark grid, resumable, with a report."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ssltk.cli._common import ConfigArg, console, progress_bar, registry, show_report


def _print_plan(plan, name: str, out: Console) -> None:
    table = Table(title=f"{name}: pretraining runs")
    for col in ("method", "store", "augmentations", "seed", "steps", "volume passes",
                "est. CPU time"):
        table.add_column(col)
    for r in plan.rows:
        table.add_row(r.method, r.store, r.augmentations, str(r.seed),
                      "-" if r.steps is None else str(r.steps),
                      "-" if r.volume_passes is None else str(r.volume_passes),
                      "-" if r.est_seconds is None else f"{r.est_seconds / 60:.1f} min")
    out.print(table)
    for line in plan.external:
        out.print(f"external encoder {line}", highlight=False, soft_wrap=True)
    out.print(f"finetuning: {plan.cells} cells (budgets {', '.join(plan.budgets)})")
    for line in plan.baselines:
        out.print(f"  baseline {line}", highlight=False, soft_wrap=True)
    if plan.distills:
        out.print(f"distillation: {plan.distills} students (one per teacher cell)")
    for line in plan.missing:
        out.print(f"[yellow]missing[/] {line}", highlight=False, soft_wrap=True)
    for line in plan.metadata:
        out.print(line, highlight=False, soft_wrap=True)


def command(
    ctx: typer.Context,
    config: ConfigArg,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the grid.")] = False,
    device: Annotated[list[str] | None, typer.Option(
        "--device", help="Run on these devices (repeatable; default: the config's `devices`).")] = None,
    report: Annotated[bool, typer.Option(help="Write the report at the end.")] = True,
) -> None:
    """Run a benchmark grid (resumes after a crash), then write its report."""
    from ssltk.bench.plan import plan
    from ssltk.bench.runner import resolve_devices, run_benchmark
    from ssltk.config import load_config

    reg = registry(ctx)
    out = console()
    if dry_run:
        cfg = load_config(config, reg)
        resolve_devices(cfg, device)
        _print_plan(plan(cfg, reg), cfg.name, out)
        return

    def on_start(cfg, grid, devices, done):
        external = (f", {len(grid.external_jobs)} external encoder(s)" if grid.external_jobs
                    else "")
        extra = f" + {len(grid.distills)} distillations" if grid.distills else ""
        out.print(f"{cfg.name}: {len(grid.cells)} cells{extra} ({done} already done), "
                  f"{len(grid.pretrain_jobs)} pretraining runs{external}, "
                  f"devices {', '.join(devices)}")

    try:
        with progress_bar("cells", out) as update:
            root = run_benchmark(config, devices=device, registry=reg, on_start=on_start,
                                 progress=update)
    except KeyboardInterrupt:
        typer.echo(f"Interrupted: finished cells and pretraining checkpoints are kept; resume "
                   f"with: ssltk run {config}", err=True)
        raise typer.Exit(130) from None
    if report:
        show_report(root, out=out)
