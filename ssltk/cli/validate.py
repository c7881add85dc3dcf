"""``ssltk validate CONFIG.toml``: check a benchmark file against the schema and the plugins."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ssltk.cli._common import console, registry
from ssltk.config import load_config


def command(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Benchmark TOML.")],
) -> None:
    """Validate a benchmark TOML: structure, every component name and every parameter, and,
    when its stores exist, the metadata it reads (missing values, label leakage)."""
    from ssltk.bench.checks import check_columns
    from ssltk.bench.metadata import check_metadata

    reg = registry(ctx)
    cfg = load_config(config, reg)
    lines = ["stores not built yet: metadata not checked"]
    if all(Path(p).exists() for _, _, p in cfg.data.stores()):
        check_columns(cfg, reg)
        lines = check_metadata(cfg, reg).lines()
    out = console()
    out.print(f"[green]ok[/] {config}: benchmark '{cfg.name}', config hash "
              f"{cfg.content_hash()[:12]}", soft_wrap=True)
    for line in lines:
        out.print(line, highlight=False, soft_wrap=True)
