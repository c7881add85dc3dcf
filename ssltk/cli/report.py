"""``ssltk report RUN_DIR``: tables, paired tests and figures of a benchmark run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ssltk.cli._common import show_report


def command(
    run_dir: Annotated[Path, typer.Argument(file_okay=False, help="Run folder holding "
                                            "results.jsonl (the output of `ssltk run`).")],
    metric: Annotated[str | None, typer.Option(
        "--metric", help="Metric of the tables and curves (default: roc_auc for "
                         "classification, mae for regression).")] = None,
) -> None:
    """Write report.md, results.csv and figures/ into RUN_DIR and print the summary table."""
    show_report(run_dir, metric)
