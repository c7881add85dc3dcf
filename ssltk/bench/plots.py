"""Figures of a benchmark report: label efficiency, ROC and precision-recall curves, confusion
matrices.

Figures are drawn with matplotlib's object API on an Agg canvas (``matplotlib.figure.Figure``,
never ``pyplot``), so nothing here touches the global backend or leaks open figures.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from ssltk.bench.stats import (SCRATCH, AggregateRow, Budget, budget_of, is_baseline,
                               lower_is_better, method_label, method_sort_key)
from ssltk.engine.metrics import roc_curve_points

_PANEL = (5.2, 4.2)  # inches per panel
_FPR_GRID = np.linspace(0.0, 1.0, 201)
_UNIT_AXIS = {"seed": "across pretraining seeds",
              "cell": "across split repeats of one seed, descriptive"}


def _figure(n_rows: int, n_cols: int, title: str) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(_PANEL[0] * n_cols, _PANEL[1] * n_rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    fig.suptitle(title, fontsize=13)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def largest_budget(results: list[dict], mode: str) -> Budget | None:
    """The largest budget (by kind order, then value) run in ``mode``."""
    budgets = {budget_of(r) for r in results if r["mode"] == mode}
    return max(budgets, key=lambda b: b.sort_key) if budgets else None


def plot_label_efficiency(rows: list[AggregateRow], path: Path) -> Path:
    """Mean metric against budget, one line per method with its 95% CI band, one panel per mode.

    The axis names the rows' unit: across pretraining seeds, or across the split repeats of
    one seed (descriptive). Baselines are dashed (random init black).

    Budgets are placed at evenly spaced positions in numeric order and labelled with their
    ``budget_label`` (budgets of different kinds cannot share a numeric axis).

    Args:
        rows: :func:`ssltk.bench.stats.aggregate` rows of one metric.
        path: PNG to write.

    Returns:
        ``path``.
    """
    metric = rows[0].metric
    modes = sorted({r.mode for r in rows})
    budgets = sorted({r.budget for r in rows}, key=lambda b: b.sort_key)
    x_of = {b: i for i, b in enumerate(budgets)}
    arrow = "lower is better" if lower_is_better(metric) else "higher is better"
    fig, axes = _figure(1, len(modes), f"Label efficiency: {metric} ({arrow})")
    for ax, mode in zip(axes[0], modes):
        by_method = defaultdict(list)
        for r in rows:
            if r.mode == mode:
                by_method[r.method].append(r)
        methods = sorted(by_method, key=method_sort_key)
        for i, method in enumerate(methods):
            # methods side by side at each budget, so that their error bars do not overlap
            dodge = 0.03 * max(1, len(budgets) - 1) * (i - (len(methods) - 1) / 2)
            _draw_efficiency_line(ax, by_method[method], x_of, dodge, mode)
        ax.set_xticks(range(len(budgets)), [b.label for b in budgets])
        ax.set(title=f"{mode} finetuning", xlabel="labelled training budget",
               ylabel=f"{metric} (mean, 95% CI) {_UNIT_AXIS[rows[0].unit]}")
        ax.grid(alpha=0.3)
        ax.legend(title="method", fontsize=9)
    return _save(fig, path)


def _draw_efficiency_line(ax, rows: list[AggregateRow], x_of: dict, dodge: float,
                          mode: str = "") -> None:
    """One method's mean line, CI band (between finite neighbours) and CI error bars."""
    pts = sorted(rows, key=lambda r: r.budget.sort_key)
    x = np.array([x_of[r.budget] for r in pts]) + dodge
    mean = np.array([r.mean for r in pts])
    lo, hi = np.array([r.ci_low for r in pts]), np.array([r.ci_high for r in pts])
    method = pts[0].method
    style = ({"color": "black", "linestyle": "--"} if method == SCRATCH else
             {"linestyle": "--"} if is_baseline(method) else {})
    line, = ax.plot(x, mean, marker="o", label=method_label(pts[0].method, mode), **style)
    ax.fill_between(x, lo, hi, where=np.isfinite(lo) & np.isfinite(hi),
                    color=line.get_color(), alpha=0.12, linewidth=0)
    # the bars also show a finite CI whose neighbours have none (n = 1), where no band is drawn
    ax.errorbar(x, mean, yerr=np.nan_to_num([mean - lo, hi - mean]), fmt="none",
                ecolor=line.get_color(), capsize=4, alpha=0.7)


def _pooled(results: list[dict], mode: str, budget: Budget) -> dict[str, list[dict]]:
    """Records with predictions of ``mode`` at ``budget``, per method (sorted, scratch last)."""
    out = defaultdict(list)
    for r in results:
        if r["mode"] == mode and budget_of(r) == budget and r.get("predictions"):
            out[r["method"]].append(r)
    return {m: out[m] for m in sorted(out, key=method_sort_key)}


def macro_roc(y_true, proba, class_names: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
    """The ROC curve to draw for one method: class 1's when binary, else the macro OvR mean.

    The macro curve averages the per-class one-vs-rest TPRs (from
    :func:`ssltk.engine.metrics.roc_curve_points`) on a common FPR grid; its AUC is the mean of
    the per-class AUCs, as in ``classification_metrics``.

    Returns:
        ``(fpr, tpr, auc)``; empty arrays and NaN when no class has a defined curve.
    """
    curves = roc_curve_points(y_true, proba, class_names)
    if len(class_names) == 2:
        c = curves[class_names[1]]
        return np.asarray(c["fpr"]), np.asarray(c["tpr"]), c["auc"]
    defined = [c for c in curves.values() if not math.isnan(c["auc"])]
    if not defined:
        return np.array([]), np.array([]), math.nan
    tpr = np.mean([np.interp(_FPR_GRID, c["fpr"], c["tpr"]) for c in defined], axis=0)
    return _FPR_GRID, tpr, float(np.mean([c["auc"] for c in defined]))


def micro_roc(y_true, proba, class_names: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
    """Micro-averaged one-vs-rest ROC: every (scan, class) decision pooled into one curve."""
    from sklearn.metrics import roc_auc_score, roc_curve

    onehot = np.eye(len(class_names))[np.asarray(y_true, dtype=int)].ravel()
    score = np.asarray(proba, dtype=float).ravel()
    if onehot.min() == onehot.max():
        return np.array([]), np.array([]), math.nan
    fpr, tpr, _ = roc_curve(onehot, score)
    return fpr, tpr, float(roc_auc_score(onehot, score))


_RECALL_GRID = np.linspace(0.0, 1.0, 201)


def _pr(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    if positive.all() or not positive.any():
        return None
    precision, recall, _ = precision_recall_curve(positive, score)
    return recall, precision, float(average_precision_score(positive, score))


def pr_curves(y_true, proba, class_names: list[str]) -> dict[str, tuple]:
    """Precision-recall curves to draw for one method: ``{label: (recall, precision, AP)}``.

    Binary: the positive class (class 1). More classes: ``micro`` (every (scan, class)
    decision pooled) and ``macro`` (the mean over classes of the interpolated precision,
    ``max precision at recall >= r``, on a common recall grid; its AP is the mean of the
    per-class average precisions, as scikit-learn's ``average="macro"``).
    """
    y, p = np.asarray(y_true, dtype=int), np.asarray(proba, dtype=float)
    if len(class_names) == 2:
        curve = _pr(y == 1, p[:, 1])
        return {} if curve is None else {"": curve}
    out = {}
    micro = _pr(np.eye(len(class_names))[y].ravel().astype(bool), p.ravel())
    if micro is not None:
        out["micro"] = micro
    per_class = [c for c in (_pr(y == k, p[:, k]) for k in range(len(class_names))) if c]
    if per_class:
        interp = []
        for recall, precision, _ in per_class:
            # scikit-learn lists recall decreasing (from 1): the points with recall >= r are
            # a prefix, so a running maximum is the interpolated precision
            best = np.maximum.accumulate(precision)
            first = np.searchsorted(recall[::-1], _RECALL_GRID, side="left")
            interp.append(best[::-1][first])
        out["macro"] = (_RECALL_GRID, np.mean(interp, axis=0),
                        float(np.mean([ap for _, _, ap in per_class])))
    return out


def plot_roc(results: list[dict], path: Path) -> Path | None:
    """ROC and precision-recall curves per method, pooled over every run at the largest budget.

    One row per mode: ROC on the left, precision-recall on the right. With more than two
    classes each method has a macro (solid) and a micro (dotted) average. Pooling concatenates
    the test predictions of all seeds and repeats, so a curve and its AUC describe all test
    predictions together (not the mean of per-run AUCs in the tables).

    Returns:
        ``path``, or None when no record holds predictions.
    """
    modes = sorted({r["mode"] for r in results})
    panels = [(m, largest_budget(results, m)) for m in modes]
    if not any(_pooled(results, m, b) for m, b in panels):
        return None
    classes = [str(c) for c in next(r["classes"] for r in results if r.get("classes"))]
    kind = (f"positive class: {classes[1]}" if len(classes) == 2
            else "one-vs-rest, macro solid, micro dotted")
    fig, axes = _figure(len(modes), 2, "ROC and precision-recall curves (test predictions "
                                       "pooled over runs)")
    for (roc_ax, pr_ax), (mode, budget) in zip(axes, panels):
        prevalence = []
        for method, recs in _pooled(results, mode, budget).items():
            y = np.concatenate([r["predictions"]["y_true"] for r in recs]).astype(int)
            p = np.concatenate([np.asarray(r["predictions"]["proba"], float) for r in recs])
            prevalence.append(float(np.mean(y == 1)))
            _draw_roc_pr(roc_ax, pr_ax, y, p, classes, f"{method_label(method, mode)}, "
                         f"{len(recs)} runs", method == SCRATCH)
        roc_ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":", label="chance")
        roc_ax.set(title=f"ROC, {mode}, {budget.label} ({kind})", xlabel="false positive rate",
                   ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
        if len(classes) == 2 and prevalence:
            pr_ax.axhline(prevalence[0], color="grey", linewidth=0.8, linestyle=":",
                          label=f"chance ({classes[1]} prevalence)")
        pr_ax.set(title=f"Precision-recall, {mode}, {budget.label}", xlabel="recall",
                  ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
        roc_ax.legend(loc="lower right", fontsize=7)
        pr_ax.legend(loc="lower left", fontsize=7)
    return _save(fig, path)


def _draw_roc_pr(roc_ax, pr_ax, y, p, classes: list[str], label: str, scratch: bool) -> None:
    style = {"color": "black", "linestyle": "--"} if scratch else {}
    fpr, tpr, auc = macro_roc(y, p, classes)
    avg = "" if len(classes) == 2 else " macro"
    line, = roc_ax.plot(fpr, tpr, label=f"{label}{avg} (AUC {auc:.3f})", **style)
    color = line.get_color()
    if len(classes) > 2:
        fpr, tpr, auc = micro_roc(y, p, classes)
        roc_ax.plot(fpr, tpr, color=color, linestyle=":", label=f"{label} micro (AUC {auc:.3f})")
    for avg, (recall, precision, ap) in pr_curves(y, p, classes).items():
        dotted = avg == "micro"
        pr_ax.plot(recall, precision, color=color, linestyle=":" if dotted else
                   style.get("linestyle", "-"), drawstyle="steps-post" if avg == "" else None,
                   label=f"{label}{' ' + avg if avg else ''} (AP {ap:.3f})")


def plot_confusion(results: list[dict], path: Path) -> Path | None:
    """Confusion matrices summed over runs at the largest budget, row-normalised and annotated.

    One row of panels per mode, one column per method. Each cell shows the fraction of the
    true class (row) predicted as the column's class, and the count.

    Returns:
        ``path``, or None when no record holds a confusion matrix.
    """
    modes = sorted({r["mode"] for r in results})
    sums: dict[tuple[str, str], np.ndarray] = {}
    for mode in modes:
        budget = largest_budget(results, mode)
        for r in results:
            cm = r.get("metrics", {}).get("confusion_matrix")
            if r["mode"] == mode and budget_of(r) == budget and cm is not None:
                key = (mode, r["method"])
                sums[key] = sums.get(key, 0) + np.asarray(cm, dtype=np.int64)
    if not sums:
        return None
    methods = sorted({m for _, m in sums}, key=method_sort_key)
    classes = next(r["classes"] for r in results if r.get("classes"))
    fig, axes = _figure(len(modes), len(methods), "Confusion matrices (summed over runs, "
                                                  "rows normalised to the true class)")
    for i, mode in enumerate(modes):
        label = largest_budget(results, mode).label
        for j, method in enumerate(methods):
            _draw_confusion(axes[i, j], sums.get((mode, method)), classes,
                            f"{method_label(method, mode)}, {mode}, {label}")
    return _save(fig, path)


def _draw_confusion(ax, cm: np.ndarray | None, classes: list[str], title: str) -> None:
    if cm is None:
        ax.set_axis_off()
        ax.set_title(f"{title}: no results", fontsize=10)
        return
    totals = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros(cm.shape), where=totals > 0)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for (t, p), value in np.ndenumerate(norm):
        ax.text(p, t, f"{value:.2f}\n({cm[t, p]})", ha="center", va="center", fontsize=9,
                color="white" if value > 0.6 else "black")
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes)
    ax.set_yticks(ticks, classes)
    ax.set(title=title, xlabel="predicted class", ylabel="true class")


def plot_regression_scatter(results: list[dict], path: Path) -> Path | None:
    """Predicted against true values, pooled over runs at the largest budget, per method and mode.

    Returns:
        ``path``, or None when no record holds predictions.
    """
    modes = sorted({r["mode"] for r in results})
    panels = [(m, largest_budget(results, m)) for m in modes]
    pooled = {m: _pooled(results, m, b) for m, b in panels}
    methods = sorted({k for v in pooled.values() for k in v}, key=method_sort_key)
    if not methods:
        return None
    fig, axes = _figure(len(modes), len(methods), "Predicted vs true (test predictions pooled "
                                                  "over runs)")
    for i, (mode, budget) in enumerate(panels):
        for j, method in enumerate(methods):
            ax, recs = axes[i, j], pooled[mode].get(method)
            ax.set(title=f"{method_label(method, mode)}, {mode}, {budget.label}", xlabel="true",
                   ylabel="predicted")
            if not recs:
                ax.set_axis_off()
                continue
            y = np.concatenate([r["predictions"]["y_true"] for r in recs]).astype(float)
            f = np.concatenate([r["predictions"]["y_pred"] for r in recs]).astype(float)
            ax.scatter(y, f, s=12, alpha=0.6, label=f"{len(recs)} runs, MAE "
                                                    f"{np.mean(np.abs(f - y)):.2f}")
            lo, hi = min(y.min(), f.min()), max(y.max(), f.max())
            lims = (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
            ax.plot(lims, lims, color="grey", linestyle=":", label="identity")
            ax.set(xlim=lims, ylim=lims, aspect="equal")
            ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_monitors(runs: list, path: Path) -> Path | None:
    """Pretraining monitors against epochs: one row per method, one line per seed.

    Columns: training loss; effective rank (log scale, collapse threshold dashed); probe ROC-AUC
    (linear solid, k-NN dotted) with the random-init value as epoch 0.

    Args:
        runs: :class:`ssltk.bench.monitors.MonitoredRun` objects.

    Returns:
        ``path``, or None when no run has monitors.
    """
    from ssltk.engine.monitor import COLLAPSE_RANK

    methods = list(dict.fromkeys(run.method for run in runs))
    if not methods:
        return None
    fig, axes = _figure(len(methods), 3, "Pretraining monitors (epoch 0 = random init)")
    for i, method in enumerate(methods):
        ax_loss, ax_rank, ax_probe = axes[i]
        for j, run in enumerate(r for r in runs if r.method == method):
            color = f"C{j}"
            epochs = [(int(h["epoch"]) + 1, h["loss"]) for h in run.history if "loss" in h]
            if epochs:
                ax_loss.plot(*zip(*epochs), color=color, marker=".", label=f"seed {run.seed}")
            series = run.series
            x = [e for e, _ in series]
            ax_rank.plot(x, [m.get("rank", np.nan) for _, m in series], color=color, marker=".")
            for key, style in (("linear_auc", "-"), ("knn_auc", ":")):
                y = [m.get(key, np.nan) for _, m in series]
                if np.isfinite(y).any():
                    ax_probe.plot(x, y, color=color, linestyle=style, marker=".",
                                  label=f"{key.split('_')[0]}, seed {run.seed}")
        ax_rank.axhline(COLLAPSE_RANK, color="red", linestyle="--", linewidth=0.8,
                        label="collapse")
        ax_rank.set_yscale("log")
        ax_rank.yaxis.set_major_formatter(ScalarFormatter())
        ax_loss.set(title=f"{method}: training loss", xlabel="epochs trained", ylabel="loss")
        ax_rank.set(title=f"{method}: effective rank (RankMe)", xlabel="epochs trained")
        ax_probe.set(title=f"{method}: monitor probes", xlabel="epochs trained",
                     ylabel="ROC-AUC")
        for ax in (ax_loss, ax_rank, ax_probe):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    return _save(fig, path)
