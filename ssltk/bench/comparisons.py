"""Each method against each baseline, with the pretraining seed as the unit of replication.

For one (method, mode, budget) and one baseline, each pretraining seed gives one value: the
mean over its split repeats of ``method - baseline`` on identical splits
(:func:`ssltk.bench.stats.paired_cells`). The baselines are trained with the same seeds, so the
seeds pair; the paired t-test runs across those ``n`` seed values (Bouthillier et al., MLSys
2021: the unit of replication is the source of variance one claims to average over). The
p-values of one mode's comparisons (methods x budgets x baselines) form one family, adjusted
with Holm's method. With one seed no test across pretraining runs is possible:
:data:`ONE_SEED_NOTE`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ssltk.bench.stats import (BASELINES, MEAN_PREDICTOR, SCRATCH, AggregateRow, Budget,
                               PairedRow, aggregate, holm_by_mode, improvement_sign, mean_ci,
                               paired_cells, paired_comparison, paired_t)

ONE_SEED_NOTE = ("1 pretraining seed: no test across pretraining runs is possible; "
                 "split-level numbers below are descriptive")
"""What the report and the console say when a comparison has one pretraining seed."""


@dataclass(frozen=True)
class SeedComparison:
    """One method against one baseline at one (mode, budget), across pretraining seeds.

    ``improvement`` is the mean over seeds of each seed's mean difference, signed so that
    positive is better for every metric (``baseline - method`` for MAE);
    ``ci_low``/``ci_high`` its 95% t-interval across seeds; ``p`` the two-sided paired
    t-test across the ``n_seeds`` seeds and ``holm_p`` its Holm adjustment over the mode's
    comparisons (NaN with fewer than 2 seeds). ``n_splits`` counts the paired cells behind the
    seed values.
    """

    method: str
    mode: str
    budget: Budget
    metric: str
    baseline: str
    n_seeds: int
    n_splits: int
    improvement: float
    ci_low: float
    ci_high: float
    p: float
    holm_p: float = math.nan
    note: str = ""


def baselines_of(results: list[dict]) -> list[str]:
    """The baseline method ids present in ``results``, in reading order."""
    present = {r["method"] for r in results}
    return [b for b in (*BASELINES, MEAN_PREDICTOR) if b in present]


def seed_comparisons(results: list[dict], metric: str) -> list[SeedComparison]:
    """Every non-baseline method against every baseline present, across seeds, with Holm.

    Returns:
        Rows sorted by mode, method, budget and baseline (reading order); Holm families are
        the modes.
    """
    rows = []
    for baseline in baselines_of(results):
        groups, _ = paired_cells(results, metric, baseline)
        rows += [_seed_row(group, pairs, metric, baseline) for group, pairs in groups.items()]
    order = baselines_of(results)
    rows.sort(key=lambda r: (r.mode, r.method, r.budget.sort_key, order.index(r.baseline)))
    return holm_by_mode(rows, "p")


def _seed_row(group: tuple, pairs: list, metric: str, baseline: str) -> SeedComparison:
    method, mode, budget = group
    by_seed: dict = defaultdict(list)
    for value, base, seed, _ in pairs:
        by_seed[seed].append(improvement_sign(metric) * (value - base))
    per_seed = [float(np.mean(d)) for d in by_seed.values()]  # (n_seeds,)
    mean, _, lo, hi = mean_ci(per_seed)
    note = ("no pairs on identical splits" if not per_seed else
            "1 pretraining seed: no test across pretraining runs" if len(per_seed) == 1 else
            "the seeds' differences are all equal" if not np.ptp(per_seed) > 0 else "")
    return SeedComparison(method, mode, budget, metric, baseline, len(per_seed), len(pairs),
                          mean, lo, hi, paired_t(per_seed), note=note)


def split_comparisons(results: list[dict], metric: str) -> list[PairedRow]:
    """Split-level (descriptive) rows against every baseline present, Holm over each mode's
    corrected resampled p-values (finite only where the pairs come from one seed)."""
    rows = [r for b in baselines_of(results) for r in paired_comparison(results, metric, b)]
    order = baselines_of(results)
    rows.sort(key=lambda r: (r.mode, r.method, r.budget.sort_key, order.index(r.baseline)))
    return holm_by_mode(rows, "corrected_p")


def best_baselines(rows: list[AggregateRow]) -> dict[tuple[str, Budget], str]:
    """``{(mode, budget): baseline id}``: the baseline with the best mean there, by the
    metric's direction (the first in reading order on a tie)."""
    best: dict[tuple[str, Budget], tuple[float, int, str]] = {}
    order = (*BASELINES, MEAN_PREDICTOR)
    for r in rows:
        if r.method in order and math.isfinite(r.mean):
            key = (-improvement_sign(r.metric) * r.mean, order.index(r.method), r.method)
            if (r.mode, r.budget) not in best or key < best[(r.mode, r.budget)]:
                best[(r.mode, r.budget)] = key
    return {where: key[2] for where, key in best.items()}


def n_seeds(results: list[dict]) -> int:
    """The number of distinct pretraining seeds of the run."""
    return len({r.get("seed") for r in results})


@dataclass(frozen=True)
class Gain:
    """A method's improvement at one (mode, budget) over random init (``scratch``) and over
    the best baseline there (which may be random init itself)."""

    method: str
    mode: str
    budget: Budget
    over_random: SeedComparison | None
    best_baseline: str | None
    over_best: SeedComparison | None


def gains(results: list[dict], metric: str,
          comparisons: list[SeedComparison] | None = None) -> list[Gain]:
    """Each non-baseline method's :class:`Gain` per (mode, budget), from
    :func:`seed_comparisons` (computed when not given)."""
    comparisons = seed_comparisons(results, metric) if comparisons is None else comparisons
    best = best_baselines(aggregate(results, metric))
    index = {(c.method, c.mode, c.budget, c.baseline): c for c in comparisons}
    out = []
    for method, mode, budget in dict.fromkeys((c.method, c.mode, c.budget) for c in comparisons):
        b = best.get((mode, budget))
        out.append(Gain(method, mode, budget, index.get((method, mode, budget, SCRATCH)), b,
                        index.get((method, mode, budget, b))))
    return out
