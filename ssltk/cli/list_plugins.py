"""``ssltk list-plugins``: installed plugins, what they registered, and the broken ones."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from ssltk.cli._common import console, registry
from ssltk.interfaces import KINDS


def command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    kind: Annotated[str | None, typer.Option(
        "--kind", help=f"Only this kind: {', '.join(KINDS)}.")] = None,
) -> None:
    """List installed plugins, their distribution and version, and the components they register."""
    if kind is not None and kind not in KINDS:
        raise typer.BadParameter(f"'{kind}' is not one of {', '.join(KINDS)}", param_hint="--kind")
    infos = registry(ctx).plugins
    if kind is not None:
        infos = [i for i in infos if kind in i.components or i.status != "ok"]
    rows = [i.as_dict() for i in infos]
    if kind is not None:
        for row in rows:
            row["components"] = {k: v for k, v in row["components"].items() if k == kind}
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="ssltk plugins")
    for col in ("plugin", "distribution", "version", "status", "components"):
        table.add_column(col, overflow="fold")
    for row in rows:
        if row["status"] == "ok":
            detail = "\n".join(f"{k}: {', '.join(v)}" for k, v in row["components"].items())
            status = "[green]ok[/]"
        else:
            detail = row["error"] or ""
            status = "[red]broken[/]" if row["status"] == "broken" else "[yellow]disabled[/]"
        table.add_row(row["name"], row["distribution"] or "-", row["version"] or "-", status,
                      detail or "-")
    console().print(table)
