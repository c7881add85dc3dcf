"""The markdown tables of a benchmark report. Every table names its unit and n; methods are
shown by :func:`ssltk.bench.stats.method_label`; improvements are signed so that positive is
better, for every metric."""

from __future__ import annotations

import math
from collections import defaultdict

from ssltk.bench.comparisons import Gain, SeedComparison
from ssltk.bench.stats import SCRATCH, AggregateRow, PairedRow, lower_is_better, method_label

DASH = "–"
UNIT_TEXT = {"seed": "pretraining seed (each seed's split repeats averaged first)",
             "cell": "split repeat (seeds × repeats; descriptive: splits share subjects)"}


def fmt(value: float | None, digits: int) -> str:
    return DASH if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def fmt_p(value: float) -> str:
    return DASH if not math.isfinite(value) else "<0.001" if value < 1e-3 else f"{value:.3f}"


def signed(value: float) -> str:
    return DASH if not math.isfinite(value) else f"{value:+.3f}"


def direction(metric: str) -> str:
    return "lower is better" if lower_is_better(metric) else "higher is better"


def improvement_text(metric: str) -> str:
    """What "improvement" means for ``metric``, spelled out."""
    how = "baseline − method" if lower_is_better(metric) else "method − baseline"
    return f"improvement = {how} in {metric} (positive = better)"


def format_cell(row: AggregateRow) -> str:
    """``"0.812 ± 0.031 [0.77, 0.85]"``: mean ± std [95% CI]; ``–`` where undefined."""
    return (f"{fmt(row.mean, 3)} ± {fmt(row.std, 3)} "
            f"[{fmt(row.ci_low, 2)}, {fmt(row.ci_high, 2)}]")


def n_line(ns, unit: str) -> str:
    """``"Unit: pretraining seed (...), n = 3 per cell unless stated."``"""
    n_max = max(ns, default=0)
    return f"Unit: {UNIT_TEXT[unit]}, n = {n_max} per cell unless stated."


def best_rows(rows: list[AggregateRow]) -> set[AggregateRow]:
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


def mode_grid(rows: list[AggregateRow], mode: str):
    """``(budgets, methods, {(method, budget): row}, best rows)`` of one mode."""
    rows = [r for r in rows if r.mode == mode]
    budgets = sorted({r.budget for r in rows}, key=lambda b: b.sort_key)
    methods = list(dict.fromkeys(r.method for r in rows))  # aggregate() sorted them
    return budgets, methods, {(r.method, r.budget): r for r in rows}, best_rows(rows)


def aggregate_markdown(rows: list[AggregateRow], mode: str,
                       beside: list[AggregateRow] | None = None) -> str:
    """Methods x budgets of one mode, best of each budget in bold; ``beside``: a second
    metric's rows (R² beside MAE) appended to each cell as ``metric mean``."""
    budgets, methods, cells, best = mode_grid(rows, mode)
    extra = {(r.method, r.mode, r.budget): r for r in beside or []}
    n_max = max(r.n for r in cells.values())
    lines = ["| method | " + " | ".join(b.label for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for method in methods:
        out = []
        for b in budgets:
            r = cells.get((method, b))
            text = "" if r is None else format_cell(r) + (f" (n={r.n})" if r.n != n_max else "")
            text = f"**{text}**" if r in best else text
            second = extra.get((method, mode, b))
            out.append(text + (f", {second.metric} {fmt(second.mean, 3)}" if second else ""))
        lines.append(f"| {method_label(method, mode)} | " + " | ".join(out) + " |")
    lines.append(f"\n{n_line([r.n for r in cells.values()], rows[0].unit)}")
    return "\n".join(lines)


def _ci(low: float, high: float) -> str:
    return f"[{signed(low)}, {signed(high)}]"


def comparison_markdown(rows: list[SeedComparison], mode: str) -> str:
    """Every comparison of one mode across seeds: improvement, paired t p and Holm p."""
    rows = [r for r in rows if r.mode == mode]
    family = sum(math.isfinite(r.p) for r in rows)
    lines = [f"Unit: pretraining seed, n = {max((r.n_seeds for r in rows), default=0)} unless "
             f"stated; paired t-test across seeds; Holm over the {family} tested comparisons "
             f"of this table; {improvement_text(rows[0].metric)}.", "",
             "| method | budget | baseline | n (seeds) | splits | improvement [95% CI] | "
             "p | Holm p | note |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {method_label(r.method, mode)} | {r.budget.label} | "
                     f"{method_label(r.baseline, mode)} | {r.n_seeds} | {r.n_splits} | "
                     f"{signed(r.improvement)} {_ci(r.ci_low, r.ci_high)} | {fmt_p(r.p)} | "
                     f"{fmt_p(r.holm_p)} | {r.note} |")
    return "\n".join(lines)


def _gain_text(c: SeedComparison | None) -> str:
    if c is None:
        return DASH
    tested = f" p={fmt_p(c.p)}, Holm {fmt_p(c.holm_p)}" if math.isfinite(c.p) else ""
    return f"{signed(c.improvement)} {_ci(c.ci_low, c.ci_high)}{tested}"


def gain_markdown(rows: list[Gain], mode: str) -> str:
    """Methods x budgets of one mode: improvement over random init and over the best baseline.

    A cell reads ``vs random init: +0.18 [CI] p=…, Holm …; vs best baseline (name): …``; the
    p-values and Holm p are those of :func:`comparison_markdown` (same family).
    """
    rows = [r for r in rows if r.mode == mode]
    budgets = sorted({r.budget for r in rows}, key=lambda b: b.sort_key)
    cells = {(r.method, r.budget): r for r in rows}
    lines = ["| method | " + " | ".join(b.label for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for method in dict.fromkeys(r.method for r in rows):
        out = []
        for b in budgets:
            g = cells.get((method, b))
            out.append("" if g is None else _gain_cell(g, mode))
        lines.append(f"| {method_label(method, mode)} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def _gain_cell(g: Gain, mode: str) -> str:
    random = f"vs {method_label(SCRATCH, mode)}: {_gain_text(g.over_random)}"
    if g.best_baseline is None or g.best_baseline == SCRATCH:
        return random + (" (the best baseline)" if g.best_baseline else "")
    return (f"{random}; vs best baseline ({method_label(g.best_baseline, mode)}): "
            f"{_gain_text(g.over_best)}")


def paired_markdown(rows: list[PairedRow]) -> str:
    """Split-level comparisons with each baseline (descriptive; with one pretraining seed the
    corrected resampled t-test, conditional on that run, and its Holm p per mode)."""
    lines = ["| method | mode | budget | baseline | pairs (splits) | improvement, mean over "
             "splits [95% CI] | wins / ties / losses | corrected resampled t p | Holm p | "
             "note |", "|---|---|---|---|---:|---:|:---:|---:|---:|---|"]
    for r in rows:
        sign = -1 if lower_is_better(r.metric) else 1
        lo, hi = sorted((sign * r.diff_ci_low, sign * r.diff_ci_high))
        note = "; ".join(filter(None, [r.note, f"{r.n_unpaired} unpaired runs excluded"
                                       if r.n_unpaired else ""]))
        lines.append(f"| {method_label(r.method, r.mode)} | {r.mode} | {r.budget.label} | "
                     f"{method_label(r.baseline, r.mode)} | {r.n_pairs} | "
                     f"{signed(r.improvement)} {_ci(lo, hi)} | {r.wins} / {r.ties} / "
                     f"{r.losses} | {fmt_p(r.corrected_p)} | {fmt_p(r.holm_p)} | {note} |")
    return "\n".join(lines)
