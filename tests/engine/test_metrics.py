"""Metrics against values computed by hand on tiny arrays."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ssltk.engine.metrics import classification_metrics, regression_metrics, roc_curve_points

pytestmark = pytest.mark.numerics


def auc_by_counting(positive, score) -> float:
    """P(score of a positive > score of a negative), ties counting 1/2: plain pair loop."""
    pos = [s for s, t in zip(score, positive) if t]
    neg = [s for s, t in zip(score, positive) if not t]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def assert_plain(value) -> None:
    """Only JSON types all the way down (no numpy scalars)."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert type(k) is str
            assert_plain(v)
    elif isinstance(value, list):
        for v in value:
            assert_plain(v)
    else:
        assert type(value) in (float, int, str), (value, type(value))


# y:      0    0    0    1    1    1    1
# p(1): .2   .7   .4   .8   .3   .9   .6   -> predicted 0 1 0 1 0 1 1
Y_BIN = np.array([0, 0, 0, 1, 1, 1, 1])
P1 = np.array([0.2, 0.7, 0.4, 0.8, 0.3, 0.9, 0.6])
PROBA_BIN = np.stack([1 - P1, P1], axis=1)


def test_binary_by_hand():
    m = classification_metrics(Y_BIN, PROBA_BIN, ["CN", "AD"])
    assert m["confusion_matrix"] == [[2, 1], [1, 3]]  # rows = true class
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["sensitivity"] == pytest.approx(3 / 4)  # TP / (TP + FN) of class 1
    assert m["specificity"] == pytest.approx(2 / 3)  # TN / (TN + FP)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert m["f1"] == pytest.approx(3 / 4)  # precision 3/4, recall 3/4
    # concordant pairs: .8 beats 3 negatives, .3 beats 1, .9 beats 3, .6 beats 2 -> 9 of 12
    assert m["roc_auc"] == pytest.approx(9 / 12)
    assert m["roc_auc"] == pytest.approx(auc_by_counting(Y_BIN == 1, P1))
    assert set(m["auc_per_class"]) == {"CN", "AD"}
    assert "roc_auc_micro" not in m
    p_true = np.where(Y_BIN == 1, P1, 1 - P1)
    assert m["test_loss"] == pytest.approx(-np.mean(np.log(p_true)))
    assert m["n_samples"] == 7
    assert_plain(m)


def test_auc_counts_ties_as_half():
    y = np.array([0, 1, 0, 1])
    p1 = np.array([0.5, 0.5, 0.2, 0.9])
    m = classification_metrics(y, np.stack([1 - p1, p1], 1))
    assert m["roc_auc"] == pytest.approx(auc_by_counting(y == 1, p1)) == pytest.approx(3.5 / 4)


# y: 0 1 2 2 1 0; predicted: 0 1 2 1 0 0
Y_MC = np.array([0, 1, 2, 2, 1, 0])
PROBA_MC = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7],
                     [0.3, 0.4, 0.3], [0.5, 0.4, 0.1], [0.7, 0.2, 0.1]])


def test_multiclass_by_hand():
    m = classification_metrics(Y_MC, PROBA_MC, ["CN", "MCI", "AD"])
    assert m["confusion_matrix"] == [[2, 0, 0], [1, 1, 0], [0, 1, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity_per_class"] == pytest.approx({"CN": 1, "MCI": 1 / 2, "AD": 1 / 2})
    assert m["specificity_per_class"] == pytest.approx({"CN": 3 / 4, "MCI": 3 / 4, "AD": 1})
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["f1_per_class"] == pytest.approx({"CN": 0.8, "MCI": 0.5, "AD": 2 / 3})
    assert m["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    per_class = [auc_by_counting(Y_MC == k, PROBA_MC[:, k]) for k in range(3)]
    assert list(m["auc_per_class"].values()) == pytest.approx(per_class)
    assert m["roc_auc"] == pytest.approx(np.mean(per_class))
    onehot = np.eye(3, dtype=bool)[Y_MC]
    assert m["roc_auc_micro"] == pytest.approx(auc_by_counting(onehot.ravel(), PROBA_MC.ravel()))
    # and scikit-learn's own multi-class averages agree when every class is present
    assert m["roc_auc"] == pytest.approx(roc_auc_score(Y_MC, PROBA_MC, multi_class="ovr"))
    assert m["roc_auc_micro"] == pytest.approx(roc_auc_score(onehot, PROBA_MC, average="micro"))
    assert_plain(m)


def test_class_absent_from_y_true_gives_nan_without_warnings():
    y = np.array([0, 1, 0, 1])
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.4, 0.1, 0.5], [0.1, 0.8, 0.1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y, proba, ["a", "b", "c"])
    assert math.isnan(m["auc_per_class"]["c"]) and math.isnan(m["sensitivity_per_class"]["c"])
    defined = [auc_by_counting(y == k, proba[:, k]) for k in (0, 1)]
    assert m["roc_auc"] == pytest.approx(np.mean(defined))  # macro over the classes present
    assert m["specificity_per_class"]["c"] == pytest.approx(3 / 4)  # predicted once, wrongly
    assert m["confusion_matrix"][2] == [0, 0, 0]
    assert math.isfinite(m["roc_auc_micro"]) and math.isfinite(m["test_loss"])
    json.dumps(m)  # NaN is allowed in the JSON we write


def test_binary_single_class_present():
    y = np.zeros(3, dtype=int)
    m = classification_metrics(y, np.array([[0.9, 0.1], [0.4, 0.6], [0.8, 0.2]]))
    assert math.isnan(m["roc_auc"]) and math.isnan(m["sensitivity"])
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)


def test_rejects_logits_and_bad_shapes():
    with pytest.raises(ValueError, match="logits"):
        classification_metrics([0, 1], np.array([[2.0, -1.0], [0.5, 3.0]]))
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 2], PROBA_BIN[:2])
    with pytest.raises(ValueError, match="class names"):
        classification_metrics(Y_BIN, PROBA_BIN, ["only-one"])


def test_regression_by_hand():
    m = regression_metrics([1, 2, 3, 4], [1, 3, 2, 5])  # errors 0, 1, -1, 1
    assert m["mae"] == pytest.approx(3 / 4)
    assert m["rmse"] == pytest.approx(math.sqrt(3 / 4))
    assert m["r2"] == pytest.approx(1 - 3 / 5)  # SS_res 3, SS_tot 5
    assert m["pearson_r"] == pytest.approx(5.5 / math.sqrt(5 * 8.75))
    assert_plain(m)


def test_regression_constant_prediction():
    m = regression_metrics([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert math.isnan(m["pearson_r"])
    assert m["r2"] == pytest.approx(0.0)
    assert math.isnan(regression_metrics([1.0], [2.0])["r2"])


def test_roc_curve_points():
    curves = roc_curve_points(Y_BIN, PROBA_BIN, ["CN", "AD"])
    ad = curves["AD"]
    assert (ad["fpr"][0], ad["tpr"][0]) == (0.0, 0.0)
    assert (ad["fpr"][-1], ad["tpr"][-1]) == (1.0, 1.0)
    assert np.trapezoid(ad["tpr"], ad["fpr"]) == pytest.approx(ad["auc"]) == pytest.approx(0.75)
    absent = roc_curve_points([0, 1], [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])["2"]
    assert absent["fpr"] == [] and math.isnan(absent["auc"])
    json.dumps(curves)
