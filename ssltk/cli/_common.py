"""Helpers shared by the CLI commands."""

from __future__ import annotations

import typer
from rich.console import Console

from ssltk.registry import Registry, get_registry


def console() -> Console:
    return Console()


def registry(ctx: typer.Context) -> Registry:
    """The registry of installed plugins, minus those disabled on the command line (cached)."""
    root = ctx.find_root()
    root.obj = root.obj or {"debug": False, "disabled": set()}
    if "registry" not in root.obj:
        root.obj["registry"] = get_registry(disabled=root.obj["disabled"])
    return root.obj["registry"]
