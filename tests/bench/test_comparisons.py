"""Seeds as the unit, each baseline, Holm, the one-seed note and the regression baselines, on
``results.jsonl`` records written by hand here.

Expected values come from plain loops, hand arithmetic and scipy's tests on vectors built here,
never from the code tested.
"""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console
from scipy import stats
from typer.testing import CliRunner

from ssltk.bench.comparisons import ONE_SEED_NOTE, gains, seed_comparisons, split_comparisons
from ssltk.bench.regression import RANGE_WIDTHS, mean_predictor_records, range_warnings
from ssltk.bench.report import load_results, summary_table, write_report
from ssltk.bench.stats import corrected_resampled_t, holm, method_label, paired_t
from ssltk.engine.finetuning import result_of
from ssltk.engine.targets import Targets

pytestmark = pytest.mark.numerics

BUDGET = ({"kind": "n_per_class", "value": 10}, "10/class")
# frozen ROC-AUC per method, seed and repeat: (seed 0, seed 1, seed 2) x (repeat 0, repeat 1)
AUC = {"simclr": [(0.80, 0.78), (0.74, 0.76), (0.83, 0.85)],
       "scratch": [(0.60, 0.62), (0.66, 0.64), (0.61, 0.59)],
       "random_init_bn": [(0.70, 0.72), (0.69, 0.73), (0.70, 0.66)],
       "raw_input": [(0.84, 0.86), (0.80, 0.82), (0.85, 0.83)]}


def record(method, seed, repeat, metrics, *, mode="frozen", task="classification",
           predictions=None, n_train=20, n_test=60) -> dict:
    """One results row with the fields the report reads."""
    return {"cell": f"{method}-{mode}-{seed}-{repeat}", "method": method, "mode": mode,
            "budget": BUDGET[0], "budget_label": BUDGET[1], "seed": seed, "repeat": repeat,
            "split_hash": f"split-{seed}-{repeat}", "task": task, "n_train": n_train,
            "n_val": 10, "n_test": n_test, "metrics": metrics, "predictions": predictions,
            "pretrain": None, "classes": None}


def auc_records(seeds=(0, 1, 2)) -> list[dict]:
    return [record(m, s, r, {"roc_auc": AUC[m][s][r], "balanced_accuracy": AUC[m][s][r]})
            for m in AUC for s in seeds for r in (0, 1)]


def hand_holm(p: list[float]) -> list[float]:
    """Holm by its definition: the i-th smallest p times (m - i), running maximum, capped."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


# --- Holm, the t-tests ------------------------------------------------------------------------

def test_holm_on_the_textbook_example_and_by_hand():
    # Holm-Bonferroni's textbook example (four hypotheses, alpha = 0.05): H4 and H1 rejected.
    # By hand: sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(0.06, 1*0.04)
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [p < 0.05 for p in adjusted] == [True, False, False, True]
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # monotone: max(2*0.4, 1*0.5)
    assert holm([0.9, 0.6]) == [1.0, 1.0]  # capped at 1
    nan_in = holm([0.02, math.nan, 0.03])  # NaN is not counted in m
    assert nan_in[0] == pytest.approx(0.04) and math.isnan(nan_in[1])
    assert nan_in[2] == pytest.approx(0.04)


def test_paired_t_is_scipys_one_sample_t():
    d = [0.02, 0.05, -0.01, 0.04, 0.03]
    assert paired_t(d) == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
    assert math.isnan(paired_t([0.1])) and math.isnan(paired_t([0.1, 0.1]))


def test_corrected_resampled_t_inflates_the_variance_by_hand():
    d = [0.02, 0.05, -0.01, 0.04, 0.03]
    # mean 0.026; squared deviations sum to 0.00212, s^2 = 0.00053; (1/5 + 0.5) s^2 = 0.000371
    t = 0.026 / math.sqrt(0.000371)
    assert corrected_resampled_t(d, 0.5) == pytest.approx(2 * stats.t.sf(t, df=4))
    assert corrected_resampled_t(d, 0.0) == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
    assert corrected_resampled_t(d, 0.5) > corrected_resampled_t(d, 0.0)


# --- seeds as the unit, each baseline -------------------------------------------------------

def test_each_method_is_tested_across_seeds_against_each_baseline():
    rows = seed_comparisons(auc_records(), "roc_auc")
    assert [r.baseline for r in rows] == ["scratch", "random_init_bn", "raw_input"]
    raw = []
    for r in rows:
        per_seed = [np.mean([a - b for a, b in zip(AUC["simclr"][s], AUC[r.baseline][s])])
                    for s in range(3)]
        assert (r.n_seeds, r.n_splits) == (3, 6)
        assert r.improvement == pytest.approx(np.mean(per_seed))
        assert r.p == pytest.approx(stats.ttest_1samp(per_seed, 0.0).pvalue)
        raw.append(r.p)
    assert [r.holm_p for r in rows] == pytest.approx(hand_holm(raw))
    assert rows[2].improvement < 0  # the raw input beats simclr here


def test_gain_over_random_init_and_over_the_best_baseline():
    (gain,) = gains(auc_records(), "roc_auc")
    assert gain.over_random.baseline == "scratch"
    assert gain.best_baseline == "raw_input"  # highest mean of the three baselines
    assert gain.over_best.baseline == "raw_input" and gain.over_best.improvement < 0


def test_lower_is_better_improvement_is_positive_when_the_error_drops():
    recs = [record(m, s, 0, {"mae": v}, task="regression")
            for s, (ours, base) in enumerate([(4.0, 5.0), (3.0, 4.5), (6.0, 5.0)])
            for m, v in (("yaware", ours), ("scratch", base))]
    (row,) = seed_comparisons(recs, "mae")
    assert row.improvement == pytest.approx((1.0 + 1.5 - 1.0) / 3)  # scratch - yaware
    (split,) = split_comparisons(recs, "mae")
    assert split.mean_diff == pytest.approx(-0.5) and split.improvement == pytest.approx(0.5)


def test_one_seed_says_so_and_gives_the_corrected_split_test(tmp_path):
    recs = auc_records(seeds=(0,))
    rows = seed_comparisons(recs, "roc_auc")
    assert all(r.n_seeds == 1 and math.isnan(r.p) and math.isnan(r.holm_p) for r in rows)
    split = split_comparisons(recs, "roc_auc")
    raw = []
    for r in split:
        d = [a - b for a, b in zip(AUC["simclr"][0], AUC[r.baseline][0])]
        mean, var = np.mean(d), np.var(d, ddof=1)
        t = mean / math.sqrt((1 / 2 + 60 / 20) * var)  # J = 2, n_test / n_train = 3
        assert r.corrected_p == pytest.approx(2 * stats.t.sf(abs(t), df=1))
        raw.append(r.corrected_p)
    assert [r.holm_p for r in split] == pytest.approx(hand_holm(raw))
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = write_report(run).read_text()
    assert f"> **{ONE_SEED_NOTE}**" in text and "conditional on this one pretraining run" in text
    from ssltk.cli import app

    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert ONE_SEED_NOTE in " ".join(result.output.split())


def test_report_labels_every_baseline_and_states_unit_and_n(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in auc_records()))
    text = write_report(run).read_text()
    for method in ("scratch", "random_init_bn", "raw_input"):
        assert f"| {method_label(method, 'frozen')} |" in text
    assert "| scratch |" not in text  # frozen mode only: "scratch" is random init here
    assert "Unit: pretraining seed, n = 3" in text and "Holm over the 3 tested" in text
    assert "Unit: split repeat" in text and "vs best baseline (raw input (linear))" in text
    with (run / "results.csv").open() as f:
        labels = {r["method"]: r["method_label"] for r in csv.DictReader(f)}
    assert labels["scratch"] == "random init (frozen)"
    assert labels["random_init_bn"] == "random init, BN fitted"
    console = Console(record=True, width=200)
    console.print(summary_table(load_results(run)))
    out = console.export_text()
    assert "raw input (linear)" in out and "pretraining seeds (n = 3)" in out


# --- regression: mean predictor, R², out-of-range ---------------------------------------------

def regression_record(method, seed, y_pred, *, y_true=(40.0, 50.0, 60.0, 70.0),
                      train=(45.0, 30.0, 80.0)) -> dict:
    y, f = np.asarray(y_true), np.asarray(y_pred, dtype=float)
    metrics = {"mae": float(np.mean(np.abs(f - y))),
               "r2": float(1 - np.sum((f - y) ** 2) / np.sum((y - y.mean()) ** 2))}
    preds = {"y_true": list(y_true), "y_pred": list(y_pred),
             "train_target": dict(zip(("mean", "min", "max"), train))}
    return record(method, seed, 0, metrics, task="regression", predictions=preds)


def test_mean_predictor_row_is_the_train_mean_on_the_test_targets():
    recs = [regression_record(m, s, (41.0, 52.0, 58.0, 69.0)) for m in ("scratch", "yaware")
            for s in (0, 1)]
    rows = mean_predictor_records(recs)
    assert len(rows) == 2 and {r["seed"] for r in rows} == {0, 1}  # one per split, not method
    m = rows[0]["metrics"]
    assert m["mae"] == pytest.approx((5 + 5 + 15 + 25) / 4)  # |y - 45|
    # R² = 1 - sum (y - 45)^2 / sum (y - 55)^2 = 1 - 900 / 500
    assert m["r2"] == pytest.approx(1 - 900 / 500)
    assert method_label(rows[0]["method"], "frozen") == "mean predictor (train mean)"


def test_predictions_far_outside_the_training_range_are_flagged():
    width = RANGE_WIDTHS * (80.0 - 30.0)  # training range 30-80: flagged below -20, above 130
    recs = [regression_record("scratch", 0, (-220.0, 50.0, 60.0, 129.0)),
            regression_record("scratch", 1, (40.0, 50.0, 60.0, 70.0)),
            regression_record("yaware", 0, (30.0 - width + 1, 50.0, 60.0, 80.0 + width - 1))]
    (warning,) = range_warnings(recs)
    assert (warning.method, warning.n_flagged, warning.n_predictions) == ("scratch", 1, 8)
    assert (warning.n_cells, warning.n_cells_total, warning.worst) == (1, 2, -220.0)
    assert "random init (frozen)" in warning.line() and "-220" in warning.line()


def test_regression_report_shows_mean_predictor_r2_and_the_warning(tmp_path):
    recs = [regression_record("scratch", s, (-220.0, 50.0, 60.0, 70.0)) for s in (0, 1, 2)]
    recs += [regression_record("yaware", s, (42.0 + s, 50.0, 61.0, 69.0)) for s in (0, 1, 2)]
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = write_report(run).read_text()
    assert "| mean predictor (train mean) |" in text and ", r2 " in text
    console = Console(record=True, width=250)
    console.print(summary_table(load_results(run)))
    shown = console.export_text()
    assert "mean predictor (train mean)" in shown and ", r2 " in shown
    assert "improvement = baseline − method in mae (positive = better)" in text
    assert "beyond the training targets' range ± 1 range-width" in text
    (gain,) = gains(load_results(run) + mean_predictor_records(recs), "mae")
    assert gain.best_baseline == "mean_predictor" and gain.over_best.improvement > 0


def test_finetuning_records_the_training_targets_for_the_report():
    targets = Targets("age", "regression", np.array([30.0, 50.0, 70.0, 41.0, 62.0]))
    run = SimpleNamespace(task="regression", train_rows=[0, 1, 2], test_rows=[3, 4])
    out = result_of(run, targets, targets.values([3, 4]), np.array([40.0, 60.0]), None, [])
    assert out.predictions["train_target"] == {"mean": 50.0, "min": 30.0, "max": 70.0}
