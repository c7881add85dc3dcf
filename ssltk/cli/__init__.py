"""The ``ssltk`` command line. One module per command; the work lives in the library."""

from __future__ import annotations

import os
import sys
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


def _register_commands() -> None:
    from ssltk.cli import list_plugins, schema, validate

    app.command("list-plugins")(list_plugins.command)
    app.command("validate")(validate.command)
    app.command("schema")(schema.command)
    from ssltk.cli import train

    app.command("pretrain")(train.pretrain)
    app.command("finetune")(train.finetune)
    app.command("embed")(train.embed)
    app.command("export")(train.export)
    from ssltk.cli import report, run

    app.command("run")(run.command)
    app.command("report")(report.command)
    from ssltk.cli import ingest, store
    app.add_typer(ingest.app, name="ingest")
    app.add_typer(store.app, name="store")
    from ssltk.cli import synth
    app.command("synth")(synth.command)
    from ssltk.cli import explain, predict, serve
    app.command("predict")(predict.command)
    app.command("explain")(explain.command)
    app.command("serve")(serve.command)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    sys.exit(app(prog_name="ssltk"))
