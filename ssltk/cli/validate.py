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
    """Validate a benchmark TOML: structure, every component name and every parameter."""
    cfg = load_config(config, registry(ctx))
    console().print(f"[green]ok[/] {config}: benchmark '{cfg.name}', config hash "
                    f"{cfg.content_hash()[:12]}", soft_wrap=True)
