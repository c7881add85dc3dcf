"""The report of a benchmark run: ``results.jsonl`` -> ``report.md``, ``results.csv``, figures.

The grid runner appends one JSON line per finished finetuning cell to ``RUN_DIR/results.jsonl``
(see ``docs/report.md`` for the schema). This module reads it back tolerantly (a resumed run may
hold a cell twice; a run killed mid-write may leave a half line), aggregates the seeds with
:mod:`ssltk.bench.stats`, draws :mod:`ssltk.bench.plots` and writes the report files.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from rich.table import Table

from ssltk.bench import plots
from ssltk.bench.monitors import find_runs, monitor_markdown
from ssltk.bench.stats import (PRIMARY_METRIC, SCRATCH, SECONDARY_METRIC, AggregateRow,
                               PairedRow, aggregate, budget_of, lower_is_better,
                               paired_comparison)
from ssltk.bench.results import RESULTS_FILE, read_results
from ssltk.errors import SsltkError, did_you_mean

__all__ = ["aggregate", "load_results", "paired_comparison", "primary_metric", "summary_table",
           "write_csv", "write_report"]

log = logging.getLogger(__name__)

_CSV_KEYS = ("cell", "method", "mode", "budget_label", "budget_kind", "budget_value", "seed",
             "repeat", "split_hash", "task", "n_train", "n_val", "n_test")
_DASH = "–"


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
        row = {k: r.get(k) for k in _CSV_KEYS}
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


def _fmt(value: float, digits: int) -> str:
    return _DASH if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_cell(row: AggregateRow) -> str:
    """``"0.812 ± 0.031 [0.77, 0.85]"``: mean ± std [95% CI]; ``–`` where undefined."""
    return (f"{_fmt(row.mean, 3)} ± {_fmt(row.std, 3)} "
            f"[{_fmt(row.ci_low, 2)}, {_fmt(row.ci_high, 2)}]")


def _best(rows: list[AggregateRow]) -> set[AggregateRow]:
    """The best row of each budget, by the metric's direction (ties all count as best)."""
    by_budget = defaultdict(list)
    for r in rows:
        if math.isfinite(r.mean):
            by_budget[r.budget].append(r)
    sign = -1 if rows and lower_is_better(rows[0].metric) else 1
    best = set()
    for group in by_budget.values():
        top = max(sign * r.mean for r in group)
        best |= {r for r in group if sign * r.mean == top}
    return best


def _grid(rows: list[AggregateRow], mode: str):
    """``(budgets, methods, {(method, budget): row}, best rows)`` of one mode."""
    rows = [r for r in rows if r.mode == mode]
    budgets = sorted({r.budget for r in rows}, key=lambda b: b.sort_key)
    methods = list(dict.fromkeys(r.method for r in rows))  # aggregate() sorted them
    return budgets, methods, {(r.method, r.budget): r for r in rows}, _best(rows)


def aggregate_markdown(rows: list[AggregateRow], mode: str) -> str:
    """Markdown table of one mode: methods x budgets, best of each budget in bold."""
    budgets, methods, cells, best = _grid(rows, mode)
    n_max = max(r.n for r in cells.values())
    lines = ["| method | " + " | ".join(b.label for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for method in methods:
        out = []
        for b in budgets:
            r = cells.get((method, b))
            text = "" if r is None else format_cell(r) + (f" (n={r.n})" if r.n != n_max else "")
            out.append(f"**{text}**" if r in best else text)
        lines.append(f"| {method} | " + " | ".join(out) + " |")
    lines.append(f"\nn = {n_max} runs (seeds × repeats) per cell unless stated.")
    return "\n".join(lines)


def _p(value: float) -> str:
    return _DASH if not math.isfinite(value) else "<0.001" if value < 1e-3 else f"{value:.3f}"


def _signed(value: float) -> str:
    return _DASH if not math.isfinite(value) else f"{value:+.3f}"


def _diff_ci(r: PairedRow) -> str:
    return f"[{_signed(r.diff_ci_low)}, {_signed(r.diff_ci_high)}]"


def paired_markdown(rows: list[PairedRow]) -> str:
    """Markdown table of the paired comparisons against scratch."""
    lines = ["| method | mode | budget | pairs | Δ mean (method − scratch) | 95% CI of Δ "
             "| wins / ties / losses | Wilcoxon p | paired t p | note |",
             "|---|---|---|---:|---:|---:|:---:|---:|---:|---|"]
    for r in rows:
        note = "; ".join(filter(None, [r.note, f"{r.n_unpaired} unpaired runs excluded"
                                       if r.n_unpaired else ""]))
        lines.append(f"| {r.method} | {r.mode} | {r.budget.label} | {r.n_pairs} | "
                     f"{_signed(r.mean_diff)} | {_diff_ci(r)} | {r.wins} / {r.ties} / {r.losses}"
                     f" | {_p(r.wilcoxon_p)} | {_p(r.ttest_p)} | {note} |")
    return "\n".join(lines)


def gain_markdown(rows: list[PairedRow], mode: str) -> str:
    """Markdown table of one mode: each method's paired gain over scratch, method x budget.

    A cell reads ``Δ [95% CI] p=… (wins/losses of n)``: Δ is the mean of the per-split
    differences method − scratch, p the two-sided Wilcoxon signed-rank p-value.
    """
    rows = [r for r in rows if r.mode == mode]
    budgets = sorted({r.budget for r in rows}, key=lambda b: b.sort_key)
    cells = {(r.method, r.budget): r for r in rows}
    lines = ["| method | " + " | ".join(b.label for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for method in dict.fromkeys(r.method for r in rows):
        out = []
        for b in budgets:
            r = cells.get((method, b))
            out.append("" if r is None else
                       f"{_signed(r.mean_diff)} {_diff_ci(r)} p={_p(r.wilcoxon_p)} "
                       f"({r.wins}/{r.losses} of {r.n_pairs})")
        lines.append(f"| {method} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def _distinct(results: list[dict], key: str) -> list[str]:
    return sorted({str(r.get(key)) for r in results if r.get(key) is not None})


def _header(results: list[dict], config_summary: dict | None) -> list[str]:
    benchmarks, hashes = _distinct(results, "benchmark"), _distinct(results, "config_hash")
    versions: dict[str, set] = defaultdict(set)
    for r in results:
        for k, v in (r.get("versions") or {}).items():
            versions[k].add(str(v))
    lines = [f"# Benchmark report: {', '.join(benchmarks) or 'unnamed'}", "",
             f"- **config hash**: {', '.join(f'`{h}`' for h in hashes) or _DASH}"
             + (" (several configs in one run folder!)" if len(hashes) > 1 else ""),
             f"- **cells**: {len(results)}, task: {task_of(results)}",
             "- **versions**: " + (", ".join(f"{k} {' / '.join(sorted(v))}"
                                             for k, v in sorted(versions.items())) or _DASH)]
    lines += [f"- **{k}**: {v}" for k, v in (config_summary or {}).items()]
    return lines


_HOW_TO_READ = """\
## How to read this report

- Each table cell is `mean ± std [95% CI]` of the metric over the runs (seeds × split repeats)
  of one method, mode and budget; the CI is the t-interval of the mean,
  `mean ± t(0.975, n−1) · std / √n`, and `–` where undefined (n = 1). Bold: best per budget.
- The paired table compares each method with scratch on the *same* splits (equal split hash):
  Δ is the mean of per-split differences, wins/ties/losses count splits where the method is
  better/equal/worse ({direction}). The Wilcoxon signed-rank test assumes only symmetric
  differences; the paired t-test assumes roughly normal differences. With fewer than 6 pairs
  Wilcoxon cannot reach p < 0.05, and the p-values are not corrected for multiple comparisons.
- ROC and precision-recall curves and confusion matrices pool the test predictions of every
  run at the largest budget, so their AUC can differ from the mean AUC of the tables. With more
  than two classes the curves show macro (solid) and micro (dotted) averages.
- In frozen mode, scratch is a linear probe on a randomly initialised, untrained encoder: the
  figures call it "random init (frozen)".
"""


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
    results = load_results(run_dir) if results is None else results
    metric = metric or primary_metric(results)
    _check_metric(results, metric)
    rows = aggregate(results, metric)
    write_csv(results, run_dir / "results.csv")
    monitored = find_runs(run_dir, results)
    figures = write_figures(results, rows, run_dir / "figures", monitored)
    arrow = "lower is better" if lower_is_better(metric) else "higher is better"
    md = _header(results, config_summary) + [""] + _gain_section(results, metric)
    md += [f"## {metric} ({arrow})", ""]
    for mode in sorted({r.mode for r in rows}):
        md += [f"### {mode} finetuning", "", aggregate_markdown(rows, mode), ""]
    md += _secondary_section(results, metric)
    md += ["## Paired comparison with scratch", "", _paired_section(results, metric), ""]
    if monitored:
        md += monitor_markdown(monitored) + [""]
        for warning in (w for run in monitored for w in run.warnings()):
            log.warning(warning)
    md += ["## Figures", ""]
    md += [f"![{p.stem.replace('_', ' ')}]({p.relative_to(run_dir).as_posix()})\n"
           for p in figures]
    md += [_HOW_TO_READ.format(direction=arrow), "Per-run values: [results.csv](results.csv)."]
    path = run_dir / "report.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    log.info("wrote %s", path)
    return path


def _secondary_section(results: list[dict], metric: str) -> list[str]:
    second = SECONDARY_METRIC.get(task_of(results))
    rows = aggregate(results, second) if second and second != metric else []
    if not any(r.n for r in rows):
        return []
    md = [f"## {second}", ""]
    for mode in sorted({r.mode for r in rows}):
        md += [f"### {mode} finetuning", "", aggregate_markdown(rows, mode), ""]
    return md


_GAIN_TITLE = {"frozen": "frozen probe: gain over the random-init encoder",
               "full": "full finetuning: gain over training from scratch"}


def _gain_section(results: list[dict], metric: str) -> list[str]:
    """Each method's paired gain over scratch, per mode (empty without scratch runs)."""
    rows = paired_comparison(results, metric)
    if not rows:
        return []
    md = [f"## Gain over {SCRATCH} ({metric}, paired on identical splits)", "",
          "Cells: mean of (method − scratch) over paired splits [95% CI], two-sided Wilcoxon "
          "p, (wins/losses of pairs). In frozen mode scratch is a linear probe on the "
          "untrained, randomly initialised encoder.", ""]
    for mode in sorted({r.mode for r in rows}):
        md += [f"### {_GAIN_TITLE.get(mode, mode)}", "", gain_markdown(rows, mode), ""]
    return md


def _paired_section(results: list[dict], metric: str) -> str:
    rows = paired_comparison(results, metric)
    if not rows:
        return f"No `{SCRATCH}` runs in this folder: nothing to compare with."
    return f"Metric: {metric}.\n\n" + paired_markdown(rows)


def summary_table(results: list[dict], metric: str | None = None) -> Table:
    """A rich table for the terminal: method x budget of the metric per mode, best in bold,
    with each method's paired gain over scratch and its Wilcoxon p.

    Args:
        results: records of :func:`load_results`.
        metric: default :func:`primary_metric`.
    """
    metric = metric or primary_metric(results)
    rows = aggregate(results, metric)
    gains = {(r.method, r.mode, r.budget): r for r in paired_comparison(results, metric)}
    budgets = sorted({r.budget for r in rows}, key=lambda b: b.sort_key)
    arrow = "lower is better" if lower_is_better(metric) else "higher is better"
    table = Table(title=f"{metric} ({arrow}): mean ± std over seeds × repeats; Δ: paired "
                        f"gain over {SCRATCH}, Wilcoxon p")
    for col in ("mode", "method", *(b.label for b in budgets)):
        table.add_column(col, justify="left" if col in ("mode", "method") else "right")
    for mode in sorted({r.mode for r in rows}):
        _, methods, cells, best = _grid(rows, mode)
        for method in methods:
            out = []
            for b in budgets:
                r = cells.get((method, b))
                text = "" if r is None else f"{_fmt(r.mean, 3)} ± {_fmt(r.std, 3)}"
                gain = gains.get((method, mode, b))
                text = f"[bold]{text}[/bold]" if r in best else text
                if gain is not None:
                    text += f"  Δ {_signed(gain.mean_diff)} p={_p(gain.wilcoxon_p)}"
                out.append(text)
            table.add_row(mode, method, *out)
        table.add_section()
    return table
