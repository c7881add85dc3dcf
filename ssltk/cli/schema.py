"""``ssltk schema``: the JSON schema of benchmark TOML files, for editor completion."""

from __future__ import annotations

import json

import typer

from ssltk.config import json_schema


def command() -> None:
    """Print the JSON schema of a benchmark TOML file."""
    typer.echo(json.dumps(json_schema(), indent=2))
