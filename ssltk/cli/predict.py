"""``ssltk predict BUNDLE INPUT... --out predictions.csv``: apply a saved model to new scans."""

from __future__ import annotations

from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from ssltk.cli._common import console, registry

BundleArg = Annotated[Path, typer.Argument(exists=True, file_okay=False,
                                           help="Model bundle folder (model.json, weights.pt).")]
Inputs = Annotated[list[Path], typer.Argument(
    help="NIfTI files, BIDS or flat folders, PNG/JPEG images (or folders), or stores (.h5).")]


class OnError(str, Enum):
    abort = "abort"
    skip = "skip"


OnErrorOpt = Annotated[OnError, typer.Option(
    "--on-error", help="abort at the first unusable scan, or skip it (listed).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]


@contextmanager
def progress_bar(what: str):
    """A rich progress bar fed as ``progress(done, total)``."""
    out = console()
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=out, transient=True,
                  disable=not out.is_terminal) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def load(ctx: typer.Context, bundle: Path, device: str):
    from ssltk.engine.bundle import load_bundle
    from ssltk.engine.runtime import resolve_device

    return load_bundle(bundle, registry(ctx), resolve_device(device))


def print_skipped(skipped: list[tuple[str, str]], listing: Path | None) -> None:
    out = console()
    for source, reason in skipped:
        out.print(f"[yellow]skipped[/] {reason}", highlight=False, soft_wrap=True)
    if listing is not None:
        out.print(f"{len(skipped)} input(s) skipped, listed in {listing}", highlight=False)


def command(
    ctx: typer.Context,
    bundle: BundleArg,
    inputs: Inputs,
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False,
                                      help="CSV to write: one row per scan.")],
    batch_size: Annotated[int, typer.Option("--batch-size", min=1,
                                            help="Scans per forward pass.")] = 8,
    on_error: OnErrorOpt = OnError.abort,
    device: DeviceOpt = "auto",
) -> None:
    """Predict every scan of INPUT with the model of BUNDLE, preprocessed as its training data."""
    from ssltk.engine.predict import discover_inputs, predict, write_csv, write_skipped

    model = load(ctx, bundle, device)
    scans = discover_inputs(inputs)
    with progress_bar(f"predict {model.name}") as progress:
        report = predict(model, scans, batch_size=batch_size, on_error=on_error.value,
                         progress=progress)
    print_skipped(report.skipped, write_skipped(report.skipped, out))
    write_csv(model, report.predictions, out)
    console().print(f"[green]wrote[/] {out}: {len(report.predictions)} scan(s)",
                    highlight=False)
