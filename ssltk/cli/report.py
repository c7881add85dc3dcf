"""``ssltk report RUN_DIR``: tables, paired tests and figures of a benchmark run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ssltk.bench.report import load_results, summary_table, write_report
from ssltk.cli._common import console


def command(
    run_dir: Annotated[Path, typer.Argument(file_okay=False, help="Run folder holding "
                                            "results.jsonl (the output of `ssltk run`).")],
    metric: Annotated[str | None, typer.Option(
        "--metric", help="Metric of the tables and curves (default: roc_auc for "
                         "classification, mae for regression).")] = None,
) -> None:
    """Write report.md, results.csv and figures/ into RUN_DIR and print the summary table."""
    results = load_results(run_dir)
    path = write_report(run_dir, metric=metric, results=results)
    out = console()
    out.print(summary_table(results, metric))
    out.print(f"[green]report[/] {path}")
