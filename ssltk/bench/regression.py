"""What a regression report needs beyond the metrics: the mean-predictor baseline and a
warning for predictions far outside the training targets.

Both read ``predictions`` of the results rows: ``y_true``, ``y_pred`` and ``train_target``
(``{"mean", "min", "max"}`` of the cell's training targets, written by the finetuning).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ssltk.bench.stats import MEAN_PREDICTOR, Budget, budget_of, method_label
from ssltk.engine.metrics import regression_metrics

RANGE_WIDTHS = 1.0
"""A prediction is flagged when it lies more than this many range-widths of the training
targets outside their range: below ``min - w * (max - min)`` or above ``max + w * (max - min)``."""
_COPIED = ("benchmark", "config_hash", "mode", "budget", "budget_label", "seed", "repeat",
           "split_hash", "task", "n_train", "n_val", "n_test")


def mean_predictor_records(results: list[dict]) -> list[dict]:
    """One results row per split and mode for the train-mean predictor.

    For each (mode, budget, seed, repeat, split) the first regression row that records its
    training targets' mean gives the test targets; the row's metrics are those of predicting
    that mean for every test subject (:func:`ssltk.engine.metrics.regression_metrics`).
    Its ``method`` is :data:`~ssltk.bench.stats.MEAN_PREDICTOR`, its ``predictions`` None.

    Returns:
        The new rows (empty for classification or rows without ``train_target``).
    """
    seen, out = set(), []
    for rec in results:
        preds = rec.get("predictions") or {}
        train = preds.get("train_target")
        key = (rec["mode"], budget_of(rec), rec.get("seed"), rec["repeat"], rec["split_hash"])
        if rec["task"] != "regression" or not train or not preds.get("y_true") or key in seen:
            continue
        seen.add(key)
        y = np.asarray(preds["y_true"], dtype=np.float64)
        out.append({k: rec.get(k) for k in _COPIED} | {
            "cell": f"{MEAN_PREDICTOR}-{rec['mode']}-{rec['split_hash'][:16]}",
            "method": MEAN_PREDICTOR, "pretrain": None, "classes": None, "predictions": None,
            "metrics": regression_metrics(y, np.full(len(y), float(train["mean"])))})
    return out


@dataclass(frozen=True)
class RangeWarning:
    """Predictions of one (method, mode, budget) far outside the training targets' range."""

    method: str
    mode: str
    budget: Budget
    n_flagged: int
    n_predictions: int
    n_cells: int
    n_cells_total: int
    worst: float
    train_low: float
    train_high: float

    def line(self) -> str:
        """One line for the report and the console."""
        return (f"{method_label(self.method, self.mode)}, {self.mode}, {self.budget.label}: "
                f"{self.n_flagged} of {self.n_predictions} test predictions in {self.n_cells} "
                f"of {self.n_cells_total} cells lie beyond the training targets' range ± "
                f"{RANGE_WIDTHS:g} range-width (most extreme {self.worst:.4g}; training range "
                f"{self.train_low:.4g} to {self.train_high:.4g})")


def range_warnings(results: list[dict]) -> list[RangeWarning]:
    """Every (method, mode, budget) with a prediction beyond the range rule (:data:`RANGE_WIDTHS`).

    Returns:
        Warnings in the order their groups first appear.
    """
    groups: dict[tuple, list] = defaultdict(list)
    for rec in results:
        preds = rec.get("predictions") or {}
        if rec["task"] == "regression" and preds.get("train_target") and preds.get("y_pred"):
            groups[(rec["method"], rec["mode"], budget_of(rec))].append(preds)
    return [w for group, cells in groups.items() if (w := _warning(group, cells)) is not None]


def _warning(group: tuple, cells: list[dict]) -> RangeWarning | None:
    flagged, worst, worst_excess, n_cells, n_pred = 0, None, 0.0, 0, 0
    lows, highs = [], []
    for preds in cells:
        f = np.asarray(preds["y_pred"], dtype=np.float64)  # (n_test,)
        low, high = float(preds["train_target"]["min"]), float(preds["train_target"]["max"])
        width = RANGE_WIDTHS * (high - low)
        excess = np.maximum(low - width - f, f - high - width)  # > 0: beyond the rule
        bad = ~(excess <= 0)  # NaN predictions count as flagged
        n_pred += len(f)
        lows.append(low)
        highs.append(high)
        if bad.any():
            flagged, n_cells = flagged + int(bad.sum()), n_cells + 1
            i = int(np.nanargmax(np.where(np.isnan(excess), np.inf, excess)))
            if worst is None or not excess[i] <= worst_excess:
                worst, worst_excess = float(f[i]), float(excess[i])
    if not flagged:
        return None
    return RangeWarning(*group, flagged, n_pred, n_cells, len(cells), worst, min(lows),
                        max(highs))
