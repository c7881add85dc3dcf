"""What the CLI commands share: the console, the plugin registry, argument types, the progress
bar and the report printout. The work itself lives in the library."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ssltk.registry import Registry, get_registry

ConfigArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Benchmark TOML.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]

Update = Callable[..., None]
"""``update(done, total=None)``: the ``progress`` callback the library's long functions take."""


def console() -> Console:
    return Console()


def registry(ctx: typer.Context) -> Registry:
    """The registry of installed plugins, minus those disabled on the command line (cached)."""
    root = ctx.find_root()
    root.obj = root.obj or {"debug": False, "disabled": set()}
    if "registry" not in root.obj:
        root.obj["registry"] = get_registry(disabled=root.obj["disabled"])
    return root.obj["registry"]


@contextmanager
def progress_bar(description: str, out: Console | None = None) -> Iterator[Update]:
    """A rich progress bar, shown on terminals only; yields its ``update(done, total=None)``."""
    out = out or console()
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=out, transient=True,
                  disable=not out.is_terminal) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total=None: bar.update(task, completed=done, total=total)


def show_report(run_dir: Path, metric: str | None = None, out: Console | None = None) -> None:
    """Write report.md, results.csv and figures/ into ``run_dir``; print the summary table
    and the notes a reader must not miss (one pretraining seed, predictions out of range)."""
    from ssltk.bench.report import load_results, report_notes, summary_table, write_report

    out = out or console()
    results = load_results(run_dir)
    path = write_report(run_dir, metric=metric, results=results)
    out.print(summary_table(results, metric))
    for note in report_notes(results):
        out.print(f"[yellow]note[/] {note}", highlight=False, soft_wrap=True)
    out.print(f"[green]report[/] {path}", soft_wrap=True)  # a path is never split
