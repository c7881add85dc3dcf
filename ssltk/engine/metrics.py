"""Evaluation metrics of finetuned models, computed with scikit-learn.

Every function returns plain Python floats, ints, lists and dicts, so results go to JSON as they
are (``json.dumps`` writes NaN as ``NaN``, which Python, pandas and JavaScript read back).

Undefined values are NaN, never an exception: with few-shot test sets a class can be missing
from ``y_true``; its ROC-AUC and sensitivity are then undefined (there are no positives to rank)
and reported as NaN, and macro averages are taken over the classes where the value is defined.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, log_loss, r2_score, roc_auc_score, roc_curve

_SUM_TOLERANCE = 1e-3


def _check_inputs(y_true, proba, class_names: list[str] | None):
    """Validate and convert: ``y_true (N,)`` int64, ``proba (N, K)`` float64 rows summing to ~1."""
    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2 or len(p) != len(y) or len(y) == 0:
        raise ValueError(f"expected y_true (N,) and proba (N, K>=2) with N>0, got shapes "
                         f"{np.shape(y_true)} and {np.shape(proba)}")
    k = p.shape[1]
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true holds labels outside [0, {k}) (proba has {k} columns)")
    if not np.isfinite(p).all():
        raise ValueError("proba holds NaN or Inf")
    sums = p.sum(axis=1)
    if np.abs(sums - 1).max() > _SUM_TOLERANCE:
        raise ValueError("proba rows do not sum to 1; pass probabilities (softmax), not logits")
    names = [str(i) for i in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} proba columns")
    return y, p, names


def _nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """AUC of ``score`` for the boolean ``positive``; NaN when only one kind is present."""
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, score))


def _safe_ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def _sens_spec(cm: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-class one-vs-rest sensitivity (recall) and specificity from a confusion matrix."""
    n = cm.sum()
    tp = np.diag(cm)
    fn = cm.sum(axis=1) - tp
    fp = cm.sum(axis=0) - tp
    tn = n - tp - fn - fp
    sens = [_safe_ratio(tp[k], tp[k] + fn[k]) for k in range(len(cm))]
    spec = [_safe_ratio(tn[k], tn[k] + fp[k]) for k in range(len(cm))]
    return sens, spec


def classification_metrics(y_true, proba, class_names: list[str] | None = None) -> dict:
    """Metrics of predicted class probabilities.

    Predictions are ``argmax(proba)``. In the binary case (K = 2) the positive class is column 1:
    ``roc_auc``, ``sensitivity``, ``specificity`` and ``f1`` are those of class 1. With K > 2
    they are macro averages (``roc_auc`` is the macro one-vs-rest AUC, ``roc_auc_micro`` the
    micro one) and ``f1`` is scikit-learn's macro F1 over the classes seen in ``y_true`` or in
    the predictions.

    A class absent from ``y_true`` has NaN AUC and sensitivity (and a class that is the only one
    present has NaN AUC and specificity); macro averages ignore NaNs, and are NaN only when no
    class has a defined value. ``balanced_accuracy`` is the mean sensitivity over the classes
    present in ``y_true``, as in scikit-learn.

    Args:
        y_true: ``(N,)`` integer labels in ``[0, K)``.
        proba: ``(N, K)`` probabilities, rows summing to 1.
        class_names: names of the K classes (default ``"0"``, ``"1"``...), keys of the
            ``*_per_class`` dicts.

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``roc_auc``, ``roc_auc_micro`` (K > 2 only),
        ``auc_per_class``, ``sensitivity``, ``specificity``, ``sensitivity_per_class``,
        ``specificity_per_class``, ``f1``, ``f1_per_class``, ``confusion_matrix`` (K x K list,
        rows = true class, columns = predicted), ``test_loss`` (log loss) and ``n_samples``.

    Raises:
        ValueError: shapes disagree, labels out of range, or rows of ``proba`` do not sum to 1.
    """
    y, p, names = _check_inputs(y_true, proba, class_names)
    k = p.shape[1]
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    sens, spec = _sens_spec(cm)
    aucs = [_binary_auc(y == c, p[:, c]) for c in range(k)]
    f1s = f1_score(y, pred, labels=list(range(k)), average=None, zero_division=np.nan)
    out = {
        "n_samples": len(y),
        "accuracy": float(np.mean(pred == y)),
        "balanced_accuracy": _nanmean(sens),
        "auc_per_class": dict(zip(names, aucs)),
        "sensitivity_per_class": dict(zip(names, sens)),
        "specificity_per_class": dict(zip(names, spec)),
        "f1_per_class": dict(zip(names, map(float, f1s))),
        "confusion_matrix": cm.astype(int).tolist(),
        # renormalised only here: rescaling every row would break score ties that AUC counts
        "test_loss": float(log_loss(y, p / p.sum(axis=1, keepdims=True), labels=list(range(k)))),
    }
    if k == 2:
        out.update(roc_auc=aucs[1], sensitivity=sens[1], specificity=spec[1], f1=float(f1s[1]))
    else:
        onehot = np.eye(k, dtype=bool)[y]  # (N, K): micro AUC ranks all N*K (sample, class) pairs
        out.update(roc_auc=_nanmean(aucs), roc_auc_micro=_binary_auc(onehot.ravel(), p.ravel()),
                   sensitivity=_nanmean(sens), specificity=_nanmean(spec),
                   f1=float(f1_score(y, pred, average="macro", zero_division=0)))
    return out


def regression_metrics(y_true, y_pred) -> dict:
    """Mean absolute error, root mean squared error, R² and Pearson's r.

    Args:
        y_true: ``(N,)`` true values.
        y_pred: ``(N,)`` predictions.

    Returns:
        ``{"mae", "rmse", "r2", "pearson_r", "n_samples"}``; ``r2`` is NaN when N < 2 and
        ``pearson_r`` is NaN when either array is constant.
    """
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    f = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if len(y) != len(f) or len(y) == 0:
        raise ValueError(f"expected two (N,) arrays with N>0, got shapes {np.shape(y_true)} and "
                         f"{np.shape(y_pred)}")
    err = f - y
    constant = np.ptp(y) == 0 or np.ptp(f) == 0
    return {
        "n_samples": len(y),
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err ** 2))),
        "r2": float(r2_score(y, f)) if len(y) >= 2 else float("nan"),
        "pearson_r": float("nan") if constant else float(np.corrcoef(y, f)[0, 1]),
    }


def roc_curve_points(y_true, proba, class_names: list[str] | None = None) -> dict:
    """One-vs-rest ROC curve of each class, for plotting.

    Args:
        y_true: ``(N,)`` integer labels in ``[0, K)``.
        proba: ``(N, K)`` probabilities.
        class_names: names of the K classes (default ``"0"``, ``"1"``...).

    Returns:
        ``{class_name: {"fpr": [...], "tpr": [...], "auc": float}}``. A class absent from
        ``y_true`` (or the only one present) has empty lists and a NaN AUC. In the binary case
        the curve usually plotted is that of class 1 (the positive class).
    """
    y, p, names = _check_inputs(y_true, proba, class_names)
    curves = {}
    for c, name in enumerate(names):
        positive = y == c
        auc = _binary_auc(positive, p[:, c])
        if math.isnan(auc):
            curves[name] = {"fpr": [], "tpr": [], "auc": auc}
            continue
        fpr, tpr, _ = roc_curve(positive, p[:, c])
        curves[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": auc}
    return curves
