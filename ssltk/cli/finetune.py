"""``ssltk finetune CONFIG.toml``: one cell of a benchmark's grid (an encoder, or scratch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ssltk.cli._common import ConfigArg, DeviceOpt, console, registry
from ssltk.errors import ConfigError

BUDGET_OPTIONS = {"n_per_class": "--n-per-class", "n_total": "--n-total",
                  "fraction": "--fraction"}


def _metrics_table(metrics: dict, title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        if isinstance(v, float):
            table.add_row(k, f"{v:.4f}")
    return table


def command(
    ctx: typer.Context,
    config: ConfigArg,
    encoder: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="encoder.pt of a pretraining (default: from scratch).")] = None,
    mode: Annotated[str, typer.Option(help="frozen (linear probe) or full.")] = "frozen",
    n_per_class: Annotated[int | None, typer.Option(help="Training subjects per class.")] = None,
    n_total: Annotated[int | None, typer.Option(help="Training subjects in total.")] = None,
    fraction: Annotated[float | None, typer.Option(help="Fraction of the training pool.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: the first of `seeds`).")] = None,
    repeat: Annotated[int, typer.Option(help="Split repeat index.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write metrics and predictions (JSON).")] = None,
    save_model: Annotated[Path | None, typer.Option(
        "--save-model", file_okay=False,
        help="Save the trained model as a bundle folder (for predict, explain, serve).")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Finetune one encoder (or scratch) on CONFIG's task: one cell of the benchmark grid."""
    from ssltk.bench.cohort import load_cohort
    from ssltk.budgets import Budget
    from ssltk.config import load_config
    from ssltk.engine import finetune, finetune_run

    if mode not in ("frozen", "full"):
        raise ConfigError(f"--mode '{mode}' must be frozen or full")
    given = [Budget(kind, value, source=BUDGET_OPTIONS[kind]) for kind, value in
             (("n_per_class", n_per_class), ("n_total", n_total), ("fraction", fraction))
             if value is not None]
    if len(given) > 1:
        raise ConfigError("give one of --n-per-class, --n-total, --fraction")
    reg = registry(ctx)
    cfg = load_config(config, reg)
    budget = given[0] if given else cfg.finetune.budgets()[0]
    seed = cfg.seeds[0] if seed is None else seed
    split = load_cohort(cfg).split(cfg.finetune, budget, seed, repeat)
    run = finetune_run(cfg, split.rows, mode, seed, encoder)
    info = {"benchmark": cfg.name, "benchmark_config_hash": cfg.content_hash(),
            "method": "scratch" if encoder is None else str(encoder), "mode": mode,
            "budget": budget.as_dict(), "seed": seed, "repeat": repeat}
    result = finetune(run, registry=reg, device=device, progress=True,
                      save_model=save_model, model_info=info)
    console().print(_metrics_table(
        result.metrics, f"{'scratch' if encoder is None else encoder} - {mode}, {budget.label}, "
                        f"seed {seed}: {len(split.train)} train / {len(split.val)} val / "
                        f"{len(split.test)} test subjects"))
    if out is not None:
        result.save(out)
        console().print(f"[green]wrote[/] {out}")
    if save_model is not None:
        console().print(f"[green]saved model[/] {save_model}")
