"""The report of a benchmark run: ``results.jsonl`` -> ``report.md``, ``results.csv``, figures.

The grid runner appends one JSON line per finished finetuning cell to ``RUN_DIR/results.jsonl``
(see ``docs/report.md`` for the schema). This module reads it back tolerantly (a resumed run may
hold a cell twice; a run killed mid-write may leave a half line), aggregates the seeds with
:mod:`ssltk.bench.stats`, draws :mod:`ssltk.bench.plots` and writes the report files.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from rich.table import Table

from ssltk.bench import plots
from ssltk.bench.comparisons import (ONE_SEED_NOTE, gains, n_seeds, seed_comparisons,
                                     split_comparisons)
from ssltk.bench.metadata import METADATA_FILE
from ssltk.bench.monitors import find_runs, monitor_markdown
from ssltk.bench.regression import mean_predictor_records, range_warnings
from ssltk.bench.results import RESULTS_FILE, read_results
from ssltk.bench.stats import (MEAN_PREDICTOR, PRIMARY_METRIC, SCRATCH, SECONDARY_METRIC, AggregateRow,
                               aggregate, budget_of, method_label, paired_comparison)
from ssltk.bench.tables import (DASH, aggregate_markdown, comparison_markdown, direction, fmt, fmt_p,
                                gain_markdown, improvement_text, mode_grid, paired_markdown,
                                signed)
from ssltk.errors import SsltkError, did_you_mean

__all__ = ["aggregate", "load_results", "paired_comparison", "primary_metric", "summary_table",
           "with_mean_predictor", "write_csv", "write_report"]

log = logging.getLogger(__name__)

_CSV_KEYS = ("cell", "method", "method_label", "mode", "budget_label", "budget_kind",
             "budget_value", "seed",
             "repeat", "split_hash", "task", "n_train", "n_val", "n_test")


def load_results(run_dir: str | Path) -> list[dict]:
    """Read ``RUN_DIR/results.jsonl`` (see :func:`ssltk.bench.results.read_results`).

    Raises:
        SsltkError: the file is missing or holds no valid record.
    """
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise SsltkError(f"no results file {path}: run `ssltk run CONFIG` first")
    records = read_results(path)
    if not records:
        raise SsltkError(f"no results in {path} (empty or unreadable): run `ssltk run CONFIG` "
                         f"first")
    return records


def task_of(results: list[dict]) -> str:
    """The task of the run, ``classification`` or ``regression``.

    Raises:
        SsltkError: the records mix tasks (they cannot share a table).
    """
    tasks = sorted({r["task"] for r in results})
    if len(tasks) != 1:
        raise SsltkError(f"results mix tasks {tasks}: report each task's run folder separately")
    return tasks[0]


def primary_metric(results: list[dict]) -> str:
    """``roc_auc`` (macro for several classes) for classification, ``mae`` for regression."""
    return PRIMARY_METRIC.get(task_of(results), "roc_auc")


def _check_metric(results: list[dict], metric: str) -> None:
    known = sorted({k for r in results for k, v in r["metrics"].items()
                    if isinstance(v, int | float)})
    if metric not in known:
        raise SsltkError(f"unknown metric '{metric}'.{did_you_mean(metric, known)} "
                         f"Available: {', '.join(known)}")


def _scalar_metrics(results: Iterable[dict]) -> list[str]:
    keys = {k for r in results for k, v in r["metrics"].items()
            if isinstance(v, int | float) and not isinstance(v, bool)}
    first = [k for k in (*PRIMARY_METRIC.values(), *SECONDARY_METRIC.values()) if k in keys]
    return first + sorted(keys - set(first))


def flat_rows(results: list[dict]) -> list[dict]:
    """One flat dict per cell: identity, budget, sizes, scalar metrics and timings."""
    metrics = _scalar_metrics(results)
    rows = []
    for r in results:
        budget = budget_of(r)
        row = {k: r.get(k) for k in _CSV_KEYS} | {"method_label": method_label(r["method"],
                                                                              r["mode"])}
        row.update(budget_label=budget.label, budget_kind=budget.kind, budget_value=budget.value)
        row.update({m: r["metrics"].get(m, math.nan) for m in metrics})
        timings = r.get("timings") or {}
        row.update(pretrain_s=timings.get("pretrain_s"), finetune_s=timings.get("finetune_s"))
        rows.append(row)
    return rows


def write_csv(results: list[dict], path: str | Path) -> Path:
    """Write :func:`flat_rows` as CSV (NaN as ``nan``, missing as an empty field)."""
    rows, path = flat_rows(results), Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _distinct(results: list[dict], key: str) -> list[str]:
    return sorted({str(r.get(key)) for r in results if r.get(key) is not None})


def _header(results: list[dict], config_summary: dict | None) -> list[str]:
    benchmarks, hashes = _distinct(results, "benchmark"), _distinct(results, "config_hash")
    versions: dict[str, set] = defaultdict(set)
    for r in results:
        for k, v in (r.get("versions") or {}).items():
            versions[k].add(str(v))
    lines = [f"# Benchmark report: {', '.join(benchmarks) or 'unnamed'}", "",
             f"- **config hash**: {', '.join(f'`{h}`' for h in hashes) or DASH}"
             + (" (several configs in one run folder!)" if len(hashes) > 1 else ""),
             f"- **cells**: {len(results)}, task: {task_of(results)}",
             f"- **pretraining seeds** (the unit of replication): {n_seeds(results)}",
             "- **versions**: " + (", ".join(f"{k} {' / '.join(sorted(v))}"
                                             for k, v in sorted(versions.items())) or DASH)]
    lines += [f"- **{k}**: {v}" for k, v in (config_summary or {}).items()]
    return lines


_HOW_TO_READ = """\
## How to read this report

- The unit of replication is the pretraining seed: each seed's split repeats are averaged
  into one value, and tables over seeds show `mean ± std [95% CI]` across seeds, the CI being
  the t-interval `mean ± t(0.975, n−1) · std / √n` (`–` where undefined, n = 1). Bold: best
  per budget ({direction}).
- Each method is compared with each baseline present (random init, random init with fitted
  batch norm, raw input, and for regression the train-mean predictor), paired by seed: the
  paired t-test runs across the seeds' mean differences; Holm's method adjusts the p-values
  over all comparisons of one mode's table (the same family in the gain table). {improvement}.
- With one pretraining seed no test across pretraining runs is possible. The split-level
  table then gives the corrected resampled t-test of Nadeau & Bengio (2003), variance
  inflated by (1/J + n_test/n_train): it is conditional on that one pretraining run.
- Split-level numbers (mean, std, wins/losses over split repeats) are descriptive: the split
  repeats share subjects and are not independent.
- ROC and precision-recall curves and confusion matrices pool the test predictions of every
  run at the largest budget, so their AUC can differ from the mean AUC of the tables. With more
  than two classes the curves show macro (solid) and micro (dotted) averages.
"""


def with_mean_predictor(results: list[dict]) -> list[dict]:
    """``results`` plus the train-mean predictor's rows (regression;
    :func:`ssltk.bench.regression.mean_predictor_records`), unless they are there already."""
    if any(r["method"] == MEAN_PREDICTOR for r in results):
        return results
    return results + mean_predictor_records(results)


def write_figures(results: list[dict], rows: list[AggregateRow], fig_dir: Path,
                  monitored: list | None = None) -> list[Path]:
    """Draw every figure of the report under ``fig_dir``; returns the files written."""
    out = [plots.plot_label_efficiency(rows, fig_dir / "label_efficiency.png")]
    if monitored:
        out.append(plots.plot_monitors(monitored, fig_dir / "monitors.png"))
    if task_of(results) == "classification":
        out += [plots.plot_roc(results, fig_dir / "roc.png"),
                plots.plot_confusion(results, fig_dir / "confusion.png")]
    else:
        out.append(plots.plot_regression_scatter(results, fig_dir / "predicted_vs_true.png"))
    out += sorted(fig_dir.glob("gradcam_*.png"))  # drawn by the run ([report] gradcam)
    return [p for p in out if p is not None]


def write_report(run_dir: str | Path, config_summary: dict | None = None, *,
                 metric: str | None = None, results: list[dict] | None = None) -> Path:
    """Write ``report.md``, ``results.csv`` and ``figures/*.png`` into the run folder.

    Args:
        run_dir: the run folder holding ``results.jsonl``.
        config_summary: extra ``key: value`` lines for the report's header.
        metric: the metric of the tables and curves (default :func:`primary_metric`).
        results: records already read by :func:`load_results` (read again when None).

    Returns:
        The path of ``report.md``.

    Raises:
        SsltkError: no results, mixed tasks, or an unknown ``metric``.
    """
    run_dir = Path(run_dir)
    results = with_mean_predictor(load_results(run_dir) if results is None else results)
    metric = metric or primary_metric(results)
    _check_metric(results, metric)
    write_csv(results, run_dir / "results.csv")
    monitored = find_runs(run_dir, results)
    figures = write_figures(results, _plotted_rows(results, metric), run_dir / "figures",
                            monitored)
    md = _header(results, config_summary) + [""] + _notes_section(results)
    md += _gain_section(results, metric) + _metric_sections(results, metric)
    md += _split_section(results, metric) + _subjects_section(results, run_dir)
    if monitored:
        md += monitor_markdown(monitored) + [""]
        for warning in (w for run in monitored for w in run.warnings()):
            log.warning(warning)
    md += ["## Figures", ""]
    md += [f"![{p.stem.replace('_', ' ')}]({p.relative_to(run_dir).as_posix()})\n"
           for p in figures]
    md += [_HOW_TO_READ.format(direction=direction(metric),
                               improvement=improvement_text(metric).capitalize()),
           "Per-run values: [results.csv](results.csv)."]
    path = run_dir / "report.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    log.info("wrote %s", path)
    return path


def _subjects_section(results: list[dict], run_dir: Path) -> list[str]:
    """How many subjects each cell trained, validated and tested on (min-max over its cells),
    and the pretraining rows used, dropped or left out (``metadata.json`` of the run)."""
    sides: dict[str, list[tuple]] = defaultdict(list)
    for r in results:
        if r["method"] != MEAN_PREDICTOR and "n_train" in r:
            sides[r["budget_label"]].append((r["n_train"], r["n_val"], r["n_test"]))
    if not sides:
        return []
    lines = ["## Subjects", "", "Subjects per cell, min-max over its cells (every method, seed "
             "and repeat).", "", "| budget | train | validation | test |", "|---|---:|---:|---:|"]
    for label, counts in sides.items():
        lines.append(f"| {label} | " + " | ".join(_span(c) for c in zip(*counts)) + " |")
    meta = Path(run_dir) / METADATA_FILE
    facts = json.loads(meta.read_text()).get("lines", []) if meta.is_file() else []
    return lines + ([""] + [f"- {line}" for line in facts] if facts else []) + [""]


def _span(values: tuple[int, ...]) -> str:
    """``7`` when every value is 7, else ``min-max``."""
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}-{high}"


def _plotted_rows(results: list[dict], metric: str) -> list[AggregateRow]:
    """Seed-level rows; with one seed the split-level ones (the figure says which)."""
    return aggregate(results, metric, unit="seed" if n_seeds(results) > 1 else "cell")


def report_notes(results: list[dict]) -> list[str]:
    """The lines a reader must not miss: one pretraining seed, predictions far outside the
    training range, a regression run whose rows cannot give the mean-predictor baseline."""
    notes = [ONE_SEED_NOTE] if n_seeds(results) == 1 else []
    notes += [w.line() for w in range_warnings(results)]
    if task_of(results) == "regression" and not any(r["method"] == MEAN_PREDICTOR
                                                    for r in with_mean_predictor(results)):
        notes.append("no mean-predictor baseline: the results rows hold no "
                     "predictions.train_target (written by newer ssltk); re-run the cells")
    return notes


def _notes_section(results: list[dict]) -> list[str]:
    notes = report_notes(results)  # `ssltk run`/`ssltk report` print them too
    return [f"> **{n}**" for n in notes] + ([""] if notes else [])


_GAIN_TITLE = {"frozen": "frozen probe", "full": "full finetuning"}


def _gain_section(results: list[dict], metric: str) -> list[str]:
    """Gains over random init and over the best baseline, then every comparison, per mode."""
    comparisons = seed_comparisons(results, metric)
    if not comparisons:
        return []
    rows = gains(results, metric, comparisons)
    md = [f"## Gains across pretraining seeds: {improvement_text(metric)}", "",
          "Cells: improvement over random init and over the best baseline of the budget "
          "(by mean), mean across seeds [95% CI], paired t-test across seeds and its Holm "
          "p (family: every comparison of the mode, listed below the table).", ""]
    for mode in sorted({r.mode for r in comparisons}):
        md += [f"### {_GAIN_TITLE.get(mode, mode)}", "", gain_markdown(rows, mode), "",
               f"#### {_GAIN_TITLE.get(mode, mode)}: every comparison", "",
               comparison_markdown(comparisons, mode), ""]
    return md


def _metric_sections(results: list[dict], metric: str) -> list[str]:
    """The metric's table per mode over seeds (regression: R² beside MAE), then the secondary
    metric's."""
    second = SECONDARY_METRIC.get(task_of(results))
    beside = aggregate(results, second) if task_of(results) == "regression" and second else None
    md = []
    for name in dict.fromkeys([metric] + ([second] if second else [])):
        rows = aggregate(results, name)
        if not any(r.n for r in rows):
            continue
        md += [f"## {name} ({direction(name)})", ""]
        for mode in sorted({r.mode for r in rows}):
            md += [f"### {mode} finetuning", "", aggregate_markdown(
                rows, mode, beside if name == metric and name != second else None), ""]
    return md


def _split_section(results: list[dict], metric: str) -> list[str]:
    """Split-level detail: the metric over every cell and the paired splits per baseline."""
    cells = aggregate(results, metric, unit="cell")
    md = ["## Split-level detail (descriptive)", ""]
    if n_seeds(results) == 1:
        md += [f"{ONE_SEED_NOTE}. The corrected resampled t-test (Nadeau & Bengio 2003) is "
               f"conditional on this one pretraining run; Holm over each mode's rows.", ""]
    for mode in sorted({r.mode for r in cells}):
        md += [f"### {mode} finetuning, {metric} over split repeats", "",
               aggregate_markdown(cells, mode), ""]
    paired = split_comparisons(results, metric)
    if paired:
        md += [f"### Paired splits, {improvement_text(metric)}", "", paired_markdown(paired), ""]
    return md


def summary_table(results: list[dict], metric: str | None = None) -> Table:
    """A rich table for the terminal: method x budget of the metric per mode, best in bold,
    with each method's improvement over random init and over the best baseline.

    Over pretraining seeds (split repeats with one seed, as the title says), with the paired
    t-test across seeds' Holm p.

    Args:
        results: records of :func:`load_results`.
        metric: default :func:`primary_metric`.
    """
    results = with_mean_predictor(results)
    metric = metric or primary_metric(results)
    rows = _plotted_rows(results, metric)
    index = {(g.method, g.mode, g.budget): g for g in gains(results, metric)}
    second = SECONDARY_METRIC.get(task_of(results))  # R² beside MAE
    beside = ({(r.method, r.mode, r.budget): r for r in aggregate(results, second, rows[0].unit)}
              if task_of(results) == "regression" and second != metric else {})
    budgets = sorted({r.budget for r in rows}, key=lambda b: b.sort_key)
    unit = (f"pretraining seeds (n = {n_seeds(results)})" if rows and rows[0].unit == "seed"
            else "split repeats of 1 pretraining seed, descriptive")
    table = Table(title=f"{metric} ({direction(metric)}): mean ± std over {unit}; "
                        f"{improvement_text(metric)} over random init (RI; scratch in full "
                        f"mode) and over the best baseline when another, p_H: Holm p of the "
                        f"paired t across seeds")
    for col in ("mode", "method", *(b.label for b in budgets)):
        table.add_column(col, justify="left" if col in ("mode", "method") else "right")
    for mode in sorted({r.mode for r in rows}):
        _, methods, cells, best = mode_grid(rows, mode)
        for method in methods:
            out = []
            for b in budgets:
                r = cells.get((method, b))
                text = "" if r is None else f"{fmt(r.mean, 3)} ± {fmt(r.std, 3)}"
                text = f"[bold]{text}[/bold]" if r in best else text
                if (method, mode, b) in beside:
                    text += f", {second} {fmt(beside[(method, mode, b)].mean, 3)}"
                out.append(text + _console_gain(index.get((method, mode, b))))
            table.add_row(mode, method_label(method, mode), *out)
        table.add_section()
    return table


def _console_gain(g) -> str:
    """``"  RI +0.183 p_H=0.012; raw input (linear) -0.050 p_H=0.300"``: over random init, then
    over the best baseline when that is another one."""
    if g is None:
        return ""
    shown = [("RI", g.over_random)]
    if g.best_baseline not in (None, SCRATCH):
        shown.append((method_label(g.best_baseline, g.mode), g.over_best))
    parts = [f"{name} {signed(c.improvement)}" + (f" p_H={fmt_p(c.holm_p)}"
                                                  if math.isfinite(c.holm_p) else "")
             for name, c in shown if c is not None]
    return "  " + "; ".join(parts) if parts else ""
