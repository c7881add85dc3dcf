"""The ``ssltk`` command line. One module per command; the work lives in the library.

Every command is a module of this package named in :data:`COMMANDS`, whose ``command`` is the
typer function (or, for a group such as ``ssltk ingest nifti|images``, a ``typer.Typer``). A
new command is a new module and one line in that table (see CONTRIBUTING.md).
"""

from __future__ import annotations

import os
import sys
from importlib import import_module
from typing import Annotated

import typer
from typer.core import TyperGroup

from ssltk import __version__
from ssltk.errors import SsltkError


class _Group(TyperGroup):
    """Root group: a library error becomes one line on stderr and a non-zero exit."""

    def invoke(self, ctx):  # noqa: D102
        try:
            return super().invoke(ctx)
        except SsltkError as exc:
            if ctx.params.get("debug") or os.environ.get("SSLTK_DEBUG"):
                raise
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted: everything written so far is kept; re-run to resume.", err=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Group,
    name="ssltk",
    help="Self-supervised learning toolkit for brain MRI.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ssltk {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    disable_plugin: Annotated[list[str] | None, typer.Option(
        "--disable-plugin", metavar="NAME",
        help="Do not load this plugin (repeatable; also SSLTK_DISABLE_PLUGINS=a,b).")] = None,
) -> None:
    ctx.obj = {"debug": debug, "disabled": set(disable_plugin or [])}


COMMANDS = {
    "list-plugins": "list_plugins",
    "validate": "validate",
    "schema": "schema",
    "pretrain": "pretrain",
    "finetune": "finetune",
    "embed": "embed",
    "export": "export",
    "run": "run",
    "report": "report",
    "ingest": "ingest",
    "store": "store",
    "synth": "synth",
    "predict": "predict",
    "explain": "explain",
    "serve": "serve",
}
"""Command name -> module of ``ssltk.cli`` that defines it (as ``command``), in help order."""


def _register_commands() -> None:
    for name, module in COMMANDS.items():
        command = import_module(f"ssltk.cli.{module}").command
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=name)
        else:
            app.command(name)(command)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    sys.exit(app(prog_name="ssltk"))
