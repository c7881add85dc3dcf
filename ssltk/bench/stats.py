"""Statistics of benchmark results: seed aggregates, paired comparisons, Holm's correction.

Every function takes the records of ``results.jsonl`` (dicts, one per finetuning cell, as
:func:`ssltk.bench.report.load_results` returns them) and returns plain dataclasses.

The unit of replication is the **pretraining seed**: :func:`aggregate` averages each seed's
split repeats into one value per seed before it takes the mean, std and t-interval across
seeds (Bouthillier et al., "Accounting for variance in machine learning benchmarks", MLSys
2021). ``unit="cell"`` keeps the split-level numbers, which are descriptive: split resamples
share subjects and are not independent (Nadeau & Bengio, "Inference for the generalization
error", Machine Learning 52, 2003). :func:`paired_comparison` pairs a method's cell with a
baseline's cell trained and tested on the very same split (equal ``split_hash``);
:mod:`ssltk.bench.comparisons` tests those differences across seeds.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace

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
MEAN_PREDICTOR = "mean_predictor"
"""Method id of the regression baseline that predicts the training-set mean of the target
(computed by the report from each cell's test targets, :mod:`ssltk.bench.regression`)."""
_LABELS = {(SCRATCH, "frozen"): "random init (frozen)", (RANDOM_INIT_BN, "frozen"):
           "random init, BN fitted", (RAW_INPUT, "frozen"): "raw input (linear)"}
_ANY_MODE_LABELS = {MEAN_PREDICTOR: "mean predictor (train mean)"}


def method_label(method: str, mode: str) -> str:
    """How a method is named for readers (report, console, results.csv, plots).

    In frozen mode ``scratch`` is a probe on an untrained encoder and is called
    "random init (frozen)"; in full mode it is training from scratch and keeps its name.
    """
    return _LABELS.get((method, mode), _ANY_MODE_LABELS.get(method, method))


def is_baseline(method: str) -> bool:
    """Whether ``method`` is a baseline row (an untrained encoder, the input, the mean)."""
    return method in BASELINES or method == MEAN_PREDICTOR


#: Metrics where a smaller value is better; every other metric is higher-is-better.
LOWER_IS_BETTER = frozenset({"mae", "rmse", "test_loss"})
UNIT_INTERVAL = frozenset({"roc_auc", "roc_auc_micro", "accuracy", "balanced_accuracy",
                           "sensitivity", "specificity", "f1"})
"""Metrics that live in [0, 1]: their confidence intervals are clipped to it."""
PRIMARY_METRIC = {"classification": "roc_auc", "regression": "mae"}
SECONDARY_METRIC = {"classification": "balanced_accuracy", "regression": "r2"}


@dataclass(frozen=True)
class AggregateRow:
    """One metric of one (method, mode, budget), over pretraining seeds or over cells.

    ``unit`` is ``"seed"`` (each seed's split repeats averaged first; ``n`` seeds) or
    ``"cell"`` (every (seed, repeat) cell; ``n`` cells). ``std`` is the sample standard
    deviation (ddof = 1); ``ci_low``/``ci_high`` the 95% t-interval of the mean. Both are NaN
    when ``n < 2``. ``n_nan`` counts cells whose metric was undefined (NaN, e.g. a test set
    with one class) and were left out; ``n_cells`` the cells with a finite value.
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
    unit: str = "seed"
    n_cells: int = 0


@dataclass(frozen=True)
class PairedRow:
    """One method against one baseline at one (mode, budget), over cells on identical splits.

    Split-level and descriptive: the pairs are split repeats, which share subjects.
    ``mean_diff`` is ``mean(method - baseline)`` in the metric's own units (negative is better
    for a lower-is-better metric), ``diff_ci_low``/``diff_ci_high`` its 95% t-interval (NaN
    with fewer than 2 pairs); :attr:`improvement` turns it so that positive is better.
    ``wins``/``ties``/``losses`` count pairs where the method is better / equal / worse,
    whatever the direction. ``n_unpaired`` counts the method's cells with no baseline cell on
    the same split (missing, different ``split_hash``, or NaN metric). ``seeds`` are the
    pretraining seeds of the pairs; with one seed, ``corrected_p`` is the corrected resampled
    t-test's p-value (:func:`corrected_resampled_t`, conditional on that one pretraining run)
    and ``holm_p`` its Holm adjustment over the rows of one mode (else both are NaN).
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
    baseline: str = SCRATCH
    seeds: tuple[int, ...] = ()
    corrected_p: float = math.nan
    holm_p: float = math.nan
    note: str = ""
    diff_ci_low: float = math.nan
    diff_ci_high: float = math.nan

    @property
    def improvement(self) -> float:
        """The mean difference with the sign that makes positive better."""
        return improvement_sign(self.metric) * self.mean_diff


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


def improvement_sign(metric: str) -> int:
    """+1 when higher is better, -1 when lower is better: ``sign * (method - baseline)`` is
    the improvement, positive = better, for every metric."""
    return -1 if lower_is_better(metric) else 1


def seed_values(results: list[dict], metric: str) -> dict[tuple, dict[int, list[float]]]:
    """``{(method, mode, budget): {seed: [finite values of its repeats]}}``."""
    out: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for rec in results:
        value = metric_value(rec, metric)
        group = out[(rec["method"], rec["mode"], budget_of(rec))][rec.get("seed")]
        if math.isfinite(value):
            group.append(value)
    return out


def aggregate(results: list[dict], metric: str, unit: str = "seed") -> list[AggregateRow]:
    """Mean, std, n and 95% CI of ``metric`` per (method, mode, budget).

    Args:
        results: records of ``results.jsonl``.
        metric: a scalar key of the records' ``metrics`` (``roc_auc``, ``mae``...).
        unit: ``"seed"``: the mean of each pretraining seed's repeats is one value (``n``
            seeds); ``"cell"``: every cell is one value (descriptive, split level).

    Returns:
        Rows sorted by mode, method (baselines last) and budget.
    """
    rows = []
    for (method, mode, budget), by_seed in seed_values(results, metric).items():
        cells = [v for values in by_seed.values() for v in values]
        n_all = sum(1 for r in results if (r["method"], r["mode"], budget_of(r))
                    == (method, mode, budget))
        values = cells if unit == "cell" else [float(np.mean(v)) for v in by_seed.values() if v]
        mean, std, lo, hi = mean_ci(values)
        if metric in UNIT_INTERVAL:  # with few seeds the t-interval overshoots [0, 1]
            lo, hi = max(lo, 0.0), min(hi, 1.0)
        rows.append(AggregateRow(method, mode, budget, metric, len(values), mean, std, lo, hi,
                                 n_nan=n_all - len(cells), unit=unit, n_cells=len(cells)))
    return sorted(rows, key=lambda r: (r.mode, method_sort_key(r.method), r.budget.sort_key))


def method_sort_key(method: str) -> tuple:
    """Methods alphabetically, then the baselines (scratch, BN fitted, raw input, mean)."""
    order = (*BASELINES, MEAN_PREDICTOR)
    return (order.index(method) + 1 if method in order else 0), method


def holm(pvalues) -> list[float]:
    """Holm's step-down adjustment of ``m`` p-values (Holm 1979, Scand. J. Statist. 6).

    Sorted ascending, ``p_(i)`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``; rejecting
    where the adjusted p is below alpha controls the family-wise error rate at alpha. NaN
    p-values (untestable comparisons) are left NaN and not counted in ``m``.

    Args:
        pvalues: ``(n,)`` p-values of one family.

    Returns:
        The adjusted p-values, in the input order.
    """
    p = [float(v) for v in pvalues]
    finite = sorted((v, i) for i, v in enumerate(p) if math.isfinite(v))
    out, running = [math.nan] * len(p), 0.0
    for rank, (value, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * value))
        out[i] = running
    return out


def paired_t(diff) -> float:
    """Two-sided p of the one-sample t-test of ``diff`` against 0 (the paired t-test).

    NaN with fewer than 2 differences or when they do not vary.
    """
    d = np.asarray(diff, dtype=np.float64)
    if len(d) < 2 or not np.ptp(d) > 0:
        return math.nan
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    return float(2 * stats.t.sf(abs(t), df=len(d) - 1))


def corrected_resampled_t(diff, test_train_ratio: float) -> float:
    """Two-sided p of Nadeau & Bengio's corrected resampled t-test (Machine Learning 52, 2003).

    ``J`` random train/test resamples of one data set overlap, so their differences are
    correlated; the test inflates the variance of the mean difference from ``s^2 / J`` to
    ``(1/J + n_test/n_train) s^2``: ``t = mean(d) / sqrt((1/J + n_test/n_train) s^2)`` with
    ``J - 1`` degrees of freedom.

    Args:
        diff: ``(J,)`` per-split differences, method - baseline.
        test_train_ratio: ``n_test / n_train`` of the splits.

    Returns:
        The p-value; NaN with fewer than 2 splits or when the differences do not vary.
    """
    d = np.asarray(diff, dtype=np.float64)
    if len(d) < 2 or not np.ptp(d) > 0:
        return math.nan
    t = d.mean() / math.sqrt((1 / len(d) + test_train_ratio) * d.var(ddof=1))
    return float(2 * stats.t.sf(abs(t), df=len(d) - 1))


Pair = tuple[float, float, int | None, float]
"""One pair of cells on one split: ``(method value, baseline value, seed, n_test/n_train)``."""


def paired_cells(results: list[dict], metric: str, baseline: str
                 ) -> tuple[dict[tuple, list[Pair]], dict[tuple, int]]:
    """Each non-baseline method's cells paired with ``baseline``'s cells on identical splits.

    A method's cell pairs with the baseline cell of the same (mode, budget, seed, repeat) only
    when both have the same ``split_hash`` and finite values; cells are never paired across
    splits. Only (mode, budget)s where ``baseline`` has cells are considered.

    Returns:
        ``({(method, mode, budget): [pairs]}, {(method, mode, budget): unpaired cells})``; a
        group whose cells found no partner has an empty list.
    """
    base = {_pair_key(r): r for r in results if r["method"] == baseline}
    where = {(k[0], k[1]) for k in base}
    groups: dict[tuple, list[Pair]] = defaultdict(list)
    unpaired: dict[tuple, int] = defaultdict(int)
    for rec in results:
        if is_baseline(rec["method"]) or (rec["mode"], budget_of(rec)) not in where:
            continue
        group = (rec["method"], rec["mode"], budget_of(rec))
        pairs = groups[group]  # a group with no pair at all still gets its row
        other = base.get(_pair_key(rec))
        pair = (metric_value(rec, metric), metric_value(other, metric)) if other else ()
        if other is None or other["split_hash"] != rec["split_hash"] or not all(
                math.isfinite(v) for v in pair):
            unpaired[group] += 1
        else:
            pairs.append((*pair, rec.get("seed"), _test_train_ratio(rec)))
    return groups, unpaired


def paired_comparison(results: list[dict], metric: str,
                      baseline: str = SCRATCH) -> list[PairedRow]:
    """Split-level comparison of every non-baseline method with ``baseline``
    (:func:`paired_cells`). Rows whose pairs all come from one pretraining seed get the
    corrected resampled t-test (``holm_p`` is left to the caller, who knows the family:
    :func:`holm_by_mode`).

    Args:
        results: records of ``results.jsonl``.
        metric: the metric compared; its direction comes from :func:`lower_is_better`.
        baseline: the baseline method id.

    Returns:
        One row per (method, mode, budget), sorted by mode, method and budget.
    """
    groups, unpaired = paired_cells(results, metric, baseline)
    rows = [_paired_row(g, pairs, unpaired[g], metric, baseline) for g, pairs in groups.items()]
    return sorted(rows, key=lambda r: (r.mode, r.method, r.budget.sort_key))


def _pair_key(record: dict) -> tuple:
    return record["mode"], budget_of(record), record.get("seed"), record["repeat"]


def _test_train_ratio(record: dict) -> float:
    n_train, n_test = record.get("n_train"), record.get("n_test")
    return n_test / n_train if n_train and n_test else math.nan


def _paired_row(group: tuple, pairs: list[Pair], n_unpaired: int, metric: str,
                baseline: str) -> PairedRow:
    method, mode, budget = group
    values = np.asarray([p[:2] for p in pairs], dtype=np.float64).reshape(-1, 2)
    diff = values[:, 0] - values[:, 1]  # (n_pairs,) method - baseline
    better = improvement_sign(metric) * diff
    seeds = tuple(sorted({p[2] for p in pairs}, key=str))
    corrected = math.nan
    if len(seeds) == 1:  # split repeats of one pretraining run
        corrected = corrected_resampled_t(diff, float(np.mean([p[3] for p in pairs])))
    mean, _, lo, hi = mean_ci(diff)
    note = "no pairs on identical splits" if not len(diff) else (
        "all differences are zero" if not diff.any() else "")
    return PairedRow(
        method, mode, budget, metric, n_pairs=len(diff), n_unpaired=n_unpaired,
        mean_diff=mean, wins=int((better > 0).sum()), ties=int((better == 0).sum()),
        losses=int((better < 0).sum()), baseline=baseline, seeds=seeds, corrected_p=corrected,
        note=note, diff_ci_low=lo, diff_ci_high=hi)


def holm_by_mode(rows: list, p_field: str) -> list:
    """``rows`` (dataclasses with ``mode``, ``p_field`` and ``holm_p``) with ``holm_p`` set to
    the Holm adjustment of ``p_field`` over the rows of the same mode: one table, one family."""
    adjusted = {}
    for mode in dict.fromkeys(r.mode for r in rows):
        family = [i for i, r in enumerate(rows) if r.mode == mode]
        adjusted |= dict(zip(family, holm(getattr(rows[i], p_field) for i in family)))
    return [replace(r, holm_p=adjusted[i]) for i, r in enumerate(rows)]
