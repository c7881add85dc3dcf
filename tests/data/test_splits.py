"""Subject-level splits: property tests (hypothesis) and exact cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssltk.data.splits import (allocate, draw_budget, first_rows, split_hash, stratified_split,
                               subject_rows)
from ssltk.errors import ConfigError


@st.composite
def cohorts(draw):
    """Subjects with 1-3 sessions each and a class per subject (2-4 classes, >= 3 per class)."""
    n_classes = draw(st.integers(2, 4))
    per_class = draw(st.lists(st.integers(3, 25), min_size=n_classes, max_size=n_classes))
    labels = np.repeat(np.arange(n_classes), per_class)
    sessions = draw(st.lists(st.integers(1, 3), min_size=len(labels), max_size=len(labels)))
    subject_of_row = np.repeat([f"sub-{i:03d}" for i in range(len(labels))], sessions)
    return labels, subject_of_row


@settings(max_examples=60, deadline=None)
@given(cohorts(), st.floats(0.1, 0.3), st.floats(0.1, 0.4), st.integers(0, 10**6),
       st.integers(0, 4))
def test_no_subject_on_two_sides(cohort, val_f, test_f, seed, repeat):
    labels, subject_of_row = cohort
    subjects = np.unique(subject_of_row)
    pool, val, test = stratified_split(labels, val_f, test_f, seed, repeat)
    sides = [set(pool.tolist()), set(val.tolist()), set(test.tolist())]
    assert sides[0].isdisjoint(sides[1]) and sides[0].isdisjoint(sides[2])
    assert sides[1].isdisjoint(sides[2])
    assert set.union(*sides) == set(range(len(labels)))  # every subject somewhere
    # at row level every session of a subject lands on its subject's side
    row_sides = [set(subject_rows(subject_of_row, subjects[list(s)]).tolist()) for s in sides]
    assert sum(len(s) for s in row_sides) == len(subject_of_row)
    assert row_sides[0].isdisjoint(row_sides[2]) and row_sides[1].isdisjoint(row_sides[2])


@settings(max_examples=60, deadline=None)
@given(cohorts(), st.integers(0, 10**6))
def test_stratified_sizes_and_determinism(cohort, seed):
    labels, _ = cohort
    pool, val, test = stratified_split(labels, 0.2, 0.3, seed)
    for c in np.unique(labels):
        n = int((labels == c).sum())
        assert int((labels[test] == c).sum()) == round(0.3 * n)
        assert int((labels[val] == c).sum()) == round(0.2 * n)
    again = stratified_split(labels, 0.2, 0.3, seed)
    assert all(np.array_equal(a, b) for a, b in zip((pool, val, test), again))


@settings(max_examples=60, deadline=None)
@given(cohorts(), st.integers(0, 10**6), st.data())
def test_budgets_nest_and_keep_every_class(cohort, seed, data):
    labels, _ = cohort
    pool, _, _ = stratified_split(labels, 0.0, 0.2, seed)
    smallest = min(int((labels[pool] == c).sum()) for c in np.unique(labels))
    n_small = data.draw(st.integers(1, smallest))
    n_large = data.draw(st.integers(n_small, smallest))
    small = draw_budget(labels, pool, "n_per_class", n_small)
    large = draw_budget(labels, pool, "n_per_class", n_large)
    assert set(small.tolist()) <= set(large.tolist())
    assert np.bincount(labels[small]).tolist() == [n_small] * len(np.unique(labels))
    frac = data.draw(st.floats(0.01, 1.0))
    chosen = draw_budget(labels, pool, "fraction", frac)
    assert set(np.unique(labels[chosen])) == set(np.unique(labels))  # >= 1 per class
    assert len(chosen) == max(round(frac * len(pool)), len(np.unique(labels)))
    assert set(chosen.tolist()) <= set(pool.tolist())


def test_n_total_is_stratified_by_largest_remainder():
    labels = np.array([0] * 30 + [1] * 10)
    pool = np.random.default_rng(0).permutation(40)
    chosen = draw_budget(labels, pool, "n_total", 8)
    assert np.bincount(labels[chosen]).tolist() == [6, 2]
    assert allocate(7, {"a": 30, "b": 10}) == {"a": 5, "b": 2}
    assert allocate(3, {"a": 100, "b": 1, "c": 1}) == {"a": 1, "b": 1, "c": 1}


def test_budget_errors_name_the_field_and_the_class():
    labels = np.array([0] * 10 + [1] * 3)
    pool = np.arange(13)
    with pytest.raises(ConfigError, match=r"finetune.n_per_class\[0\]: 5 per class, but class "
                                          r"'AD' has only 3 subject\(s\)"):
        draw_budget(labels, pool, "n_per_class", 5, "finetune.n_per_class[0]", ["CN", "AD"])
    with pytest.raises(ConfigError, match="20 subjects, but the training pool has only 13"):
        draw_budget(labels, pool, "n_total", 20, "finetune.n_total[0]")
    with pytest.raises(ConfigError, match="class 'MCI' has no subject in the training pool"):
        draw_budget(labels, pool, "n_total", 4, "x", ["CN", "AD", "MCI"])


def test_split_hash_is_stable_and_order_free():
    subjects = np.array(["a", "b", "c", "d"])
    h = split_hash(subjects, [0, 1], [2], [3])
    assert h == split_hash(subjects, [1, 0], [2], [3])
    assert h != split_hash(subjects, [0, 2], [1], [3])
    # pinned: a change of the hash format would orphan every recorded result
    assert h == "9eae5679c0ba827e3eeabfbfd715279959a0686078a0f851a4994967dfd2db60"


def test_first_rows_keeps_one_scan_per_subject_in_store_order():
    subject_of_row = np.array(["s2", "s1", "s2", "s3", "s1"])
    assert first_rows(subject_of_row).tolist() == [0, 1, 3]
    assert first_rows(subject_of_row, [2, 3, 4]).tolist() == [2, 3, 4]
    assert subject_rows(subject_of_row, ["s1"]).tolist() == [1, 4]


def test_spread_order_keeps_every_prefix_within_quota():
    """Every prefix of the order holds each stratum within one item of its share (strictly):
    the property regression budgets rely on, over many random stratifications."""
    from ssltk.data.splits import spread_order

    rng = np.random.default_rng(0)
    for _ in range(300):
        sizes = rng.integers(1, 30, rng.integers(1, 12))
        strata = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
        order = spread_order(strata, np.arange(len(strata)))
        assert sorted(order.tolist()) == list(range(len(strata)))
        counts = np.zeros(len(sizes))
        for h, item in enumerate(order, 1):
            counts[strata[item]] += 1
            assert np.abs(counts - h * sizes / len(strata)).max() < 1
        for s in range(len(sizes)):  # within a stratum, items keep their order
            mine = order[strata[order] == s]
            assert (np.diff(mine) > 0).all()
