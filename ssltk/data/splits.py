"""Subject-level splits: train/val/test, few-shot budgets, label fractions, stable hashes.

Everything works on per-subject arrays (one entry per subject), so no subject can ever be on
two sides; :func:`subject_rows` maps subjects back to all their rows (every session of a
subject on the same side) and :func:`first_rows` to one scan each.

>>> pool, val, test = stratified_split(labels, val_fraction=0.2, test_fraction=0.3, seed=0)
>>> train = draw_budget(labels, pool, "n_per_class", 10)          # balanced few-shot
>>> train = draw_budget(labels, pool, "fraction", 0.1)            # 10 % of the pool
>>> train = draw_spread(quantile_bins(ages), pool, "n_total", 20)  # regression: over the range
>>> split_hash(subjects, train, val, test)                        # stable id of the split

Budgets drawn from the same pool nest: the subjects of a smaller budget are a subset of a
larger one's (each class's pool order is fixed), which keeps label-efficiency curves paired.
A regression target has no classes: its budgets are drawn by :func:`draw_spread` over
:data:`REGRESSION_BINS` quantile bins of the target, so 20 subjects span the target's range.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np

from ssltk.budgets import BUDGET_KINDS
from ssltk.errors import ConfigError


def first_rows(subject_ids: Sequence[str], rows: Sequence[int] | None = None) -> np.ndarray:
    """The first of ``rows`` (all rows if None) of each subject, in store order."""
    subject_ids = np.asarray(subject_ids).astype(str)
    rows = np.arange(len(subject_ids)) if rows is None else np.asarray(rows, dtype=np.int64)
    _, first = np.unique(subject_ids[rows], return_index=True)
    return np.sort(rows[first])


def subject_rows(subject_ids: Sequence[str], subjects: Sequence[str]) -> np.ndarray:
    """Every row (session) of ``subjects``: ``(R,)`` sorted row indices."""
    return np.flatnonzero(np.isin(np.asarray(subject_ids).astype(str), np.asarray(subjects)))


def stratified_split(strata: Sequence, val_fraction: float, test_fraction: float, seed: int,
                     repeat: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split subjects into (pool, val, test), stratified by ``strata`` (e.g. class, or class x site).

    Args:
        strata: ``(S,)`` one stratum per subject.
        val_fraction, test_fraction: shares of each stratum (rounded per stratum).
        seed, repeat: the draw; the same pair always gives the same split.

    Returns:
        Index arrays into the subjects. ``pool`` (what budgets draw from) is in a random order;
        ``val`` and ``test`` are sorted.
    """
    strata = np.asarray(strata)
    rng = np.random.default_rng([seed, repeat, 0x5EED])
    pool, val, test = [], [], []
    for stratum in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == stratum))
        n_test = int(round(test_fraction * len(idx)))
        n_val = int(round(val_fraction * len(idx)))
        test += idx[:n_test].tolist()
        val += idx[n_test:n_test + n_val].tolist()
        pool += idx[n_test + n_val:].tolist()
    return (rng.permutation(np.asarray(pool, dtype=np.int64)), np.sort(val).astype(np.int64),
            np.sort(test).astype(np.int64))


def draw_budget(labels: Sequence[int], pool: Sequence[int], kind: str, value: float,
                field: str = "budget", class_names: Sequence[str] | None = None) -> np.ndarray:
    """Training subjects of a label budget, drawn from ``pool`` (in its order, so budgets nest).

    Args:
        labels: ``(S,)`` class index per subject.
        pool: candidate subject indices, in the order to draw them.
        kind: ``n_per_class`` (balanced), ``n_total`` (stratified, >= 1 per class) or
            ``fraction`` of the pool (stratified, >= 1 per class).
        value: the count or fraction.
        field: the config field named in errors.
        class_names: names of the class indices, for errors.

    Raises:
        ConfigError: the budget needs more subjects than the pool has (naming the class).
    """
    labels, pool = np.asarray(labels), np.asarray(pool, dtype=np.int64)
    by_class = {c: pool[labels[pool] == c] for c in np.unique(labels[pool])}
    if class_names is not None:
        absent = [name for c, name in enumerate(class_names) if c not in by_class]
        if absent:
            raise ConfigError(f"{field}: class '{absent[0]}' has no subject in the training "
                              "pool; use more subjects or smaller validation/test fractions")
    if kind == "n_per_class":
        n = int(value)
        for c, members in by_class.items():
            if len(members) < n:
                name = class_names[c] if class_names is not None else c
                raise ConfigError(f"{field}: {n} per class, but class '{name}' has only "
                                  f"{len(members)} subject(s) in the training pool; lower it")
        return np.sort(np.concatenate([m[:n] for m in by_class.values()]))
    if kind not in BUDGET_KINDS:
        raise ValueError(f"budget kind must be one of {BUDGET_KINDS}, got {kind!r}")
    n_total = (int(value) if kind == "n_total"
               else max(int(round(value * len(pool))), len(by_class)))
    if n_total > len(pool):
        raise ConfigError(f"{field}: {n_total} subjects, but the training pool has only "
                          f"{len(pool)} (after the validation and test sets); lower it")
    counts = allocate(n_total, {c: len(m) for c, m in by_class.items()})
    return np.sort(np.concatenate([by_class[c][:k] for c, k in counts.items()]))


def allocate(n: int, sizes: dict) -> dict:
    """Stratified counts summing to ``n``: proportional (largest remainder), >= 1 per class."""
    total = sum(sizes.values())
    exact = {c: n * s / total for c, s in sizes.items()}
    counts = {c: max(1, min(sizes[c], int(e))) for c, e in exact.items()}
    order = sorted(sizes, key=lambda c: exact[c] - int(exact[c]), reverse=True)
    while sum(counts.values()) < n:
        for c in order:
            if sum(counts.values()) < n and counts[c] < sizes[c]:
                counts[c] += 1
    while sum(counts.values()) > n:
        c = max(counts, key=lambda k: counts[k])
        counts[c] -= 1
    return counts


REGRESSION_BINS = 5
"""Quantile bins of a regression target that its splits and budgets are stratified on."""


def quantile_bins(values: Sequence[float], n_bins: int = REGRESSION_BINS) -> np.ndarray:
    """``(S,)`` bin index in ``[0, n_bins)`` of each value: the target's quantiles as edges."""
    values = np.asarray(values, dtype=np.float64)
    edges = np.quantile(values, np.arange(1, n_bins) / n_bins)
    return np.digitize(values, edges)


def draw_spread(strata: Sequence, pool: Sequence[int], kind: str, value: float,
                field: str = "budget") -> np.ndarray:
    """Training subjects of a budget spread evenly over ``strata`` (a regression target's bins).

    The pool is put in one stratified order (:func:`spread_order`); a budget is the first
    ``n`` of that order. So a budget holds exactly ``n`` subjects, each stratum within one
    subject of its share ``n * n_stratum / len(pool)``, and budgets nest for every ``n``.

    Args:
        strata: ``(S,)`` stratum per subject (bins of the target, or bin x site).
        pool: candidate subject indices, in the order to draw them within a stratum.
        kind: ``n_total`` (``value`` subjects) or ``fraction`` (``round(value * len(pool))``,
            at least 1).
        field: the config field named in errors.

    Raises:
        ConfigError: the budget needs more subjects than the pool has, or is ``n_per_class``.
    """
    if kind not in ("n_total", "fraction"):
        raise ConfigError(f"{field}: a regression target has no classes; use finetune.n_total "
                          "or finetune.label_fractions")
    strata, pool = np.asarray(strata), np.asarray(pool, dtype=np.int64)
    n = int(value) if kind == "n_total" else max(1, int(round(value * len(pool))))
    if n > len(pool):
        raise ConfigError(f"{field}: {n} subjects, but the training pool has only "
                          f"{len(pool)} (after the validation and test sets); lower it")
    return np.sort(spread_order(strata[pool], pool)[:n])


def spread_order(strata: np.ndarray, items: np.ndarray) -> np.ndarray:
    """``items`` reordered so that every prefix of length ``h`` holds each stratum ``s`` of
    ``m_s`` of the ``N`` items within one item of its share ``h * m_s / N`` (strictly).

    A house-monotone apportionment that stays within quota (Balinski & Young 1975; Tijdeman's
    chairman assignment, 1980): the ``k``-th item of stratum ``s`` may take position ``h``
    only from ``floor((k - 1) N / m_s) + 1`` on (no stratum above its upper quota) and must by
    ``ceil(k N / m_s)`` (none below its lower quota); earliest-deadline-first meets every
    deadline. Within a stratum, items keep their order; ties go to the stratum seen first.
    """
    names, first = np.unique(strata, return_index=True)
    names = names[np.argsort(first)]  # strata in order of first appearance
    members = [items[strata == name] for name in names]
    n, taken, out = len(items), [0] * len(members), []
    for h in range(1, n + 1):
        best = None
        for s, group in enumerate(members):
            k, m = taken[s] + 1, len(group)
            if k > m or (k - 1) * n // m + 1 > h:
                continue
            deadline = -(-k * n // m)
            if best is None or deadline < best[0]:
                best = (deadline, s)
        taken[best[1]] += 1
        out.append(members[best[1]][taken[best[1]] - 1])
    return np.asarray(out, dtype=items.dtype)


def split_hash(subjects: Sequence[str], train, val, test, salt: dict | None = None) -> str:
    """sha256 of the sorted subject ids of each side: the same split always has the same hash.

    Args:
        salt: JSON-able facts of how the split was made that must change its hash (a
            predefined test set's column and value); None leaves the hash as it always was.
    """
    subjects = np.asarray(subjects).astype(str)
    sides = {name: sorted(subjects[np.asarray(idx, dtype=np.int64)].tolist())
             for name, idx in (("train", train), ("val", val), ("test", test))}
    if salt is not None:
        sides["salt"] = salt
    return hashlib.sha256(json.dumps(sides, sort_keys=True).encode()).hexdigest()
