"""Statistics of benchmark results: seed aggregates with t confidence intervals, paired tests.

Every function takes the records of ``results.jsonl`` (dicts, one per finetuning cell, as
:func:`ssltk.bench.report.load_results` returns them) and returns plain dataclasses.

The unit of replication is one finetuning cell: a (seed, split repeat) pair of one
(method, mode, budget). Aggregates are taken over those cells; the paired comparison pairs a
method's cell with the scratch cell trained and tested on the very same split (equal
``split_hash``), so the split-to-split variance cancels out of the difference.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ssltk.budgets import Budget

SCRATCH = "scratch"
"""Method id of the random-init encoder (always a row of the grid): a probe on the untrained
encoder in frozen mode, supervised training from random init in full mode."""
RANDOM_INIT_BN = "random_init_bn"
"""Method id of the frozen baseline whose batch-norm statistics are re-estimated on the
pretraining pool (no gradient step)."""
RAW_INPUT = "raw_input"
"""Method id of the frozen baseline that probes the (average-pooled) input itself."""
BASELINES = (SCRATCH, RANDOM_INIT_BN, RAW_INPUT)
"""Method ids that are baselines, not pretrained encoders."""
_LABELS = {(SCRATCH, "frozen"): "random init (frozen)", (RANDOM_INIT_BN, "frozen"):
           "random init, BN fitted", (RAW_INPUT, "frozen"): "raw input (linear)"}


def method_label(method: str, mode: str) -> str:
    """How a method is named for readers (report, console, results.csv, plots).

    In frozen mode ``scratch`` is a probe on an untrained encoder and is called
    "random init (frozen)"; in full mode it is training from scratch and keeps its name.
    """
    return _LABELS.get((method, mode), method)
#: Metrics where a smaller value is better; every other metric is higher-is-better.
LOWER_IS_BETTER = frozenset({"mae", "rmse", "test_loss"})
UNIT_INTERVAL = frozenset({"roc_auc", "roc_auc_micro", "accuracy", "balanced_accuracy",
                           "sensitivity", "specificity", "f1"})
"""Metrics that live in [0, 1]: their confidence intervals are clipped to it."""
PRIMARY_METRIC = {"classification": "roc_auc", "regression": "mae"}
SECONDARY_METRIC = {"classification": "balanced_accuracy", "regression": "r2"}
#: Below this many pairs the Wilcoxon test cannot reach p < 0.05 (two-sided, exact).
MIN_WILCOXON_PAIRS = 6


@dataclass(frozen=True)
class AggregateRow:
    """One metric over the seeds x repeats of one (method, mode, budget).

    ``std`` is the sample standard deviation (ddof = 1); ``ci_low``/``ci_high`` the 95%
    t-interval of the mean. Both are NaN when ``n < 2``. ``n_nan`` counts cells whose metric
    was undefined (NaN, e.g. a test set with one class) and were left out.
    """

    method: str
    mode: str
    budget: Budget
    metric: str
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    n_nan: int = 0


@dataclass(frozen=True)
class PairedRow:
    """One method against scratch at one (mode, budget), over cells on identical splits.

    ``mean_diff`` is ``mean(method - scratch)`` in the metric's own units (negative is better
    for a lower-is-better metric), ``diff_ci_low``/``diff_ci_high`` its 95% t-interval (NaN
    with fewer than 2 pairs); in frozen mode scratch is the random-init encoder, so
    ``mean_diff`` is the method's gain over random init; ``wins``/``ties``/``losses`` count
    pairs where the method is better / equal / worse, whatever the direction. ``n_unpaired`` counts the method's cells
    with no scratch cell on the same split (missing, different ``split_hash``, or NaN metric).
    """

    method: str
    mode: str
    budget: Budget
    metric: str
    n_pairs: int
    n_unpaired: int
    mean_diff: float
    wins: int
    ties: int
    losses: int
    wilcoxon_p: float
    ttest_p: float
    note: str = ""
    diff_ci_low: float = math.nan
    diff_ci_high: float = math.nan


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better (MAE, RMSE, test loss)."""
    return metric in LOWER_IS_BETTER


def budget_of(record: dict) -> Budget:
    """The :class:`Budget` of a results record."""
    b = record["budget"]
    return Budget(str(b["kind"]), float(b["value"]), str(record.get("budget_label", b["value"])))


def metric_value(record: dict, metric: str) -> float:
    """The scalar ``metric`` of a record as a float; NaN when absent or not a number."""
    value = record.get("metrics", {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return float("nan")
    return float(value)


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, sample std and the t confidence interval of the mean.

    ``mean ± t_{(1+confidence)/2, n-1} * std / sqrt(n)``, the interval for the mean of ``n``
    independent, roughly normal values. With one value the std and the interval are NaN.

    Args:
        values: ``(n,)`` finite values.
        confidence: coverage of the interval.

    Returns:
        ``(mean, std, ci_low, ci_high)``.
    """
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, df=len(x) - 1)) * std / math.sqrt(len(x))
    return mean, std, mean - half, mean + half


def aggregate(results: list[dict], metric: str) -> list[AggregateRow]:
    """Mean, std, n and 95% CI of ``metric`` per (method, mode, budget).

    Args:
        results: records of ``results.jsonl``.
        metric: a scalar key of the records' ``metrics`` (``roc_auc``, ``mae``...).

    Returns:
        Rows sorted by mode, method (scratch last) and budget.
    """
    groups: dict[tuple, list[float]] = defaultdict(list)
    for rec in results:
        groups[(rec["method"], rec["mode"], budget_of(rec))].append(metric_value(rec, metric))
    rows = []
    for (method, mode, budget), values in groups.items():
        finite = [v for v in values if math.isfinite(v)]
        mean, std, lo, hi = mean_ci(finite)
        if metric in UNIT_INTERVAL:  # with few seeds the t-interval overshoots [0, 1]
            lo, hi = max(lo, 0.0), min(hi, 1.0)
        rows.append(AggregateRow(method, mode, budget, metric, len(finite), mean, std, lo, hi,
                                 n_nan=len(values) - len(finite)))
    return sorted(rows, key=lambda r: (r.mode, method_sort_key(r.method), r.budget.sort_key))


def method_sort_key(method: str) -> tuple:
    """Methods alphabetically, the scratch baseline last."""
    return method == SCRATCH, method


def paired_comparison(results: list[dict], metric: str) -> list[PairedRow]:
    """Compare every method with scratch on identical splits.

    A method's cell pairs with the scratch cell of the same (mode, budget, seed, repeat) only
    when both have the same ``split_hash``; cells are never paired across splits.

    Args:
        results: records of ``results.jsonl``.
        metric: the metric compared; its direction comes from :func:`lower_is_better`.

    Returns:
        One row per (method, mode, budget) of a non-scratch method, sorted like
        :func:`aggregate`. Empty when there are no scratch cells.
    """
    scratch = {_pair_key(r): r for r in results if r["method"] == SCRATCH}
    if not scratch:
        return []
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    unpaired: dict[tuple, int] = defaultdict(int)
    for rec in results:
        if rec["method"] == SCRATCH:
            continue
        group = (rec["method"], rec["mode"], budget_of(rec))
        pairs = groups[group]  # a group with no pair at all still gets its row
        base = scratch.get(_pair_key(rec))
        pair = (metric_value(rec, metric), metric_value(base, metric)) if base else (math.nan,)
        if base is None or base["split_hash"] != rec["split_hash"] or not all(
                math.isfinite(v) for v in pair):
            unpaired[group] += 1
        else:
            pairs.append(pair)
    rows = [_paired_row(g, pairs, unpaired[g], metric) for g, pairs in groups.items()]
    return sorted(rows, key=lambda r: (r.mode, r.method, r.budget.sort_key))


def _pair_key(record: dict) -> tuple:
    return record["mode"], budget_of(record), record["seed"], record["repeat"]


def _paired_row(group: tuple, pairs: list, n_unpaired: int, metric: str) -> PairedRow:
    method, mode, budget = group
    pairs_arr = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    diff = pairs_arr[:, 0] - pairs_arr[:, 1]  # (n_pairs,) method - scratch
    better = -diff if lower_is_better(metric) else diff
    wilcoxon_p, ttest_p, note = paired_tests(pairs_arr[:, 0], pairs_arr[:, 1])
    mean, _, lo, hi = mean_ci(diff)
    return PairedRow(
        method, mode, budget, metric, n_pairs=len(diff), n_unpaired=n_unpaired,
        mean_diff=mean, wins=int((better > 0).sum()), ties=int((better == 0).sum()),
        losses=int((better < 0).sum()), wilcoxon_p=wilcoxon_p, ttest_p=ttest_p, note=note,
        diff_ci_low=lo, diff_ci_high=hi)


def paired_tests(a, b) -> tuple[float, float, str]:
    """Two-sided Wilcoxon signed-rank and paired t-test p-values of ``a`` against ``b``.

    ``scipy.stats.wilcoxon(a - b)`` with its defaults: zero differences are dropped and the
    p-value is exact for small samples without ties. ``scipy.stats.ttest_rel(a, b)``.

    Args:
        a: ``(n,)`` metric of the method.
        b: ``(n,)`` metric of scratch on the same splits.

    Returns:
        ``(wilcoxon_p, ttest_p, note)``; a p-value is NaN when the test is undefined (no
        pairs, all differences zero, fewer than two pairs for the t-test), and ``note`` says
        why, or warns that fewer than 6 pairs cannot reach p < 0.05 with Wilcoxon.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = a - b
    if len(diff) == 0:
        return math.nan, math.nan, "no pairs on identical splits"
    if not diff.any():
        return math.nan, math.nan, "all differences are zero"
    wilcoxon_p = float(stats.wilcoxon(diff).pvalue)
    ttest_p = math.nan
    if len(diff) >= 2:
        with warnings.catch_warnings():  # zero-variance differences give NaN with a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            ttest_p = float(stats.ttest_rel(a, b).pvalue)
    notes = []
    n_nonzero = int(np.count_nonzero(diff))  # Wilcoxon drops zero differences
    if n_nonzero < MIN_WILCOXON_PAIRS:
        plural = "s" if n_nonzero != 1 else ""
        notes.append(f"{n_nonzero} non-zero pair{plural}: Wilcoxon p cannot go below "
                     f"{2 / 2 ** n_nonzero:.3g}")
    if len(diff) < 2:
        notes.append("t-test needs 2 pairs")
    return wilcoxon_p, ttest_p, "; ".join(notes)
