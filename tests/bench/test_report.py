"""The benchmark report, on synthetic but schema-exact ``results.jsonl`` files written here.

Expected statistics are computed by hand (plain loops and the t quantile from scipy) or by
calling scipy's tests directly on difference vectors built by hand, never by the code tested.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import zlib

import numpy as np
import pytest
import typer
from rich.console import Console
from scipy import stats
from typer.testing import CliRunner

from ssltk.bench.plots import macro_roc
from ssltk.bench.report import (aggregate, load_results, paired_comparison, primary_metric,
                                summary_table, write_report)
from ssltk.bench.comparisons import seed_comparisons
from ssltk.budgets import Budget
from ssltk.cli import _Group
from ssltk.cli.report import command
from ssltk.engine.metrics import classification_metrics, regression_metrics
from ssltk.errors import SsltkError

pytestmark = pytest.mark.numerics

BUDGETS = [({"kind": "n_per_class", "value": 5}, "5/class"),
           ({"kind": "n_per_class", "value": 20}, "20/class")]  # "20" < "5" as text
SEEDS = (0, 1, 2)
MODES = ("frozen", "full")
# Known primary metric: BASE[method] + GAIN[budget label] + NOISE[method][seed] (+0.05 if full)
BASE = {"simclr": 0.70, "yaware": 0.74, "scratch": 0.62}
GAIN = {"5/class": 0.0, "20/class": 0.1}
NOISE = {"simclr": (0.00, 0.03, -0.02), "yaware": (0.01, -0.01, 0.04),
         "scratch": (0.02, 0.00, -0.01)}


def sha(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def known_value(method: str, mode: str, label: str, seed: int) -> float:
    return BASE[method] + GAIN[label] + NOISE[method][seed] + (0.05 if mode == "full" else 0.0)


def make_record(method, mode, budget, label, seed, repeat=0, *, task="classification",
                value=None, split_hash=None) -> dict:
    """One schema-exact record whose primary metric is ``value``."""
    rng = np.random.default_rng([seed, zlib.crc32(method.encode())])
    y = np.array([0, 1] * 6)
    pretrain = None if method == "scratch" else {
        "objective": method, "hash": sha("pre", method, seed), "store": "data/x.h5",
        "augmentations": "default"}
    rec = {
        "cell": sha(method, mode, label, seed, repeat)[:16], "benchmark": "quickstart",
        "config_hash": sha("config"), "method": method, "pretrain": pretrain, "mode": mode,
        "budget": budget, "budget_label": label, "seed": seed, "repeat": repeat,
        "split_hash": split_hash or sha("split", label, seed, repeat),
        "n_train": 10, "n_val": 6, "n_test": len(y), "task": task,
        "timings": {"pretrain_s": 12.3, "finetune_s": 1.2},
        "versions": {"python": "3.11.7", "torch": "2.13.0"}, "created": "2026-11-22T04:00:00Z"}
    if task == "classification":
        p1 = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.25, len(y)), 0.01, 0.99)
        proba = np.stack([1 - p1, p1], axis=1)
        metrics = classification_metrics(y, proba, ["CN", "AD"])
        metrics.update(roc_auc=value, balanced_accuracy=value - 0.1)
        preds = {"y_true": y.tolist(), "proba": proba.tolist()}
        rec["classes"] = ["CN", "AD"]
    else:
        age = 60 + 10 * rng.random(len(y))
        pred = age + rng.normal(0, 3, len(y))
        metrics = regression_metrics(age, pred)
        metrics.update(mae=value)
        preds = {"y_true": age.tolist(), "y_pred": pred.tolist()}
        rec["classes"] = None
    rec["metrics"] = metrics
    rec["predictions"] = {"rows": list(range(len(y))), "classes": rec["classes"], **preds}
    return rec


def grid_records(task="classification") -> list[dict]:
    return [make_record(m, mode, b, label, s, task=task,
                        value=known_value(m, mode, label, s) * (10 if task == "regression" else 1))
            for m in BASE for mode in MODES for b, label in BUDGETS for s in SEEDS]


def write_jsonl(run_dir, records, tail: str = ""):
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records) + tail
    (run_dir / "results.jsonl").write_text(text)
    return run_dir


@pytest.fixture
def run_dir(tmp_path):
    return write_jsonl(tmp_path / "run", grid_records())


def find(rows, **where):
    (row,) = [r for r in rows if all(getattr(r, k) == v for k, v in where.items())]
    return row


def hand_mean_std_ci(values):
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


# --- loading -----------------------------------------------------------------------------------

def test_duplicate_cell_keeps_last_and_truncated_line_is_skipped(tmp_path, caplog):
    records = grid_records()
    again = dict(records[0], metrics=dict(records[0]["metrics"], roc_auc=0.123))
    run = write_jsonl(tmp_path / "run", records + [again], tail='{"cell": "abc", "meth')
    with caplog.at_level(logging.WARNING, logger="ssltk.bench.report"):
        loaded = load_results(run)
    assert len(loaded) == len(records)
    assert [r for r in loaded if r["cell"] == records[0]["cell"]][0]["metrics"]["roc_auc"] == 0.123
    # line 38: after the 36 records and the duplicate
    assert "not JSON" in caplog.text and ":38:" in caplog.text


@pytest.mark.parametrize("content", [None, "", '{"cell": "ab'])
def test_missing_or_empty_results_is_one_line_error(tmp_path, content):
    if content is not None:
        (tmp_path / "results.jsonl").write_text(content)
    with pytest.raises(SsltkError) as info:
        load_results(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "results.jsonl" in message and "ssltk run CONFIG" in message


# --- aggregates --------------------------------------------------------------------------------

def test_aggregate_matches_hand_computed_mean_std_ci(run_dir):
    results = load_results(run_dir)
    assert primary_metric(results) == "roc_auc"
    rows = aggregate(results, "roc_auc")
    assert len(rows) == 3 * 2 * 2
    for method, mode, label in [("simclr", "frozen", "5/class"), ("yaware", "full", "20/class")]:
        row = find(rows, method=method, mode=mode, budget=Budget("n_per_class",
                                                                  int(label.split("/")[0]), label))
        expected = hand_mean_std_ci([known_value(method, mode, label, s) for s in SEEDS])
        assert row.n == 3
        assert (row.mean, row.std, row.ci_low, row.ci_high) == pytest.approx(expected, abs=1e-12)
    # budgets in numeric order (5 before 20) within each (mode, method), scratch last
    frozen = [(r.method, r.budget.label) for r in rows if r.mode == "frozen"]
    assert frozen[:2] == [("simclr", "5/class"), ("simclr", "20/class")]
    assert frozen[-1][0] == "scratch"


def test_single_run_has_nan_std_and_ci_and_nan_metrics_are_left_out():
    b, label = BUDGETS[0]
    recs = [make_record("simclr", "frozen", b, label, 0, value=0.8),
            make_record("simclr", "frozen", b, label, 1, value=math.nan)]
    (row,) = aggregate(recs, "roc_auc")
    assert row.n == 1 and row.n_nan == 1 and row.mean == 0.8
    assert math.isnan(row.std) and math.isnan(row.ci_low) and math.isnan(row.ci_high)


def test_budget_sort_is_numeric_and_by_kind():
    budgets = [Budget("fraction", 0.5, "50%"), Budget("n_per_class", 100, "100/class"),
               Budget("fraction", 0.1, "10%"), Budget("n_per_class", 9, "9/class")]
    assert [b.label for b in sorted(budgets, key=lambda b: b.sort_key)] == [
        "9/class", "100/class", "10%", "50%"]


# --- paired comparison -------------------------------------------------------------------------

def test_pairs_only_on_equal_split_hash(run_dir):
    results = load_results(run_dir)
    moved = next(r for r in results if (r["method"], r["mode"], r["budget_label"], r["seed"])
                 == ("simclr", "frozen", "5/class", 1))
    moved["split_hash"] = sha("another split")
    row = find(paired_comparison(results, "roc_auc"), method="simclr", mode="frozen",
               budget=Budget("n_per_class", 5, "5/class"))
    assert row.n_pairs == 2 and row.n_unpaired == 1
    a = [known_value("simclr", "frozen", "5/class", s) for s in (0, 2)]
    b = [known_value("scratch", "frozen", "5/class", s) for s in (0, 2)]
    diff = [x - y for x, y in zip(a, b)]
    assert row.mean_diff == pytest.approx(sum(diff) / 2)
    assert (row.wins, row.ties, row.losses) == (2, 0, 0)
    assert row.seeds == (0, 2) and math.isnan(row.corrected_p)  # two seeds: no split-level test


def test_p_values_match_scipy_on_hand_built_differences():
    b, label = BUDGETS[1]
    method = [0.81, 0.78, 0.85, 0.80, 0.79, 0.83, 0.77, 0.84]
    scratch = [0.75, 0.79, 0.80, 0.80, 0.70, 0.81, 0.78, 0.76]
    recs = [make_record(m, "full", b, label, s, value=v)
            for s in range(8) for m, v in (("simclr", method[s]), ("scratch", scratch[s]))]
    (row,) = paired_comparison(recs, "roc_auc")
    diff = [x - y for x, y in zip(method, scratch)]
    assert row.n_pairs == 8 and row.note == ""
    (seed_row,) = seed_comparisons(recs, "roc_auc")  # one repeat: a seed's value is its cell
    assert seed_row.n_seeds == 8 and seed_row.holm_p == pytest.approx(seed_row.p)  # m = 1
    assert seed_row.p == pytest.approx(stats.ttest_rel(method, scratch).pvalue)
    assert (row.wins, row.ties, row.losses) == (5, 1, 2)
    # 95% t-interval of the mean difference, restated: mean ± t(0.975, 7) s / sqrt(8)
    mean = sum(diff) / 8
    s = math.sqrt(sum((d - mean) ** 2 for d in diff) / 7)
    half = stats.t.ppf(0.975, 7) * s / math.sqrt(8)
    assert row.diff_ci_low == pytest.approx(mean - half)
    assert row.diff_ci_high == pytest.approx(mean + half)


def test_gain_section_reads_the_seed_comparisons():
    """The report opens with each method's improvement over random init, per mode and budget,
    tested across seeds."""
    from ssltk.bench.comparisons import gains
    from ssltk.bench.tables import gain_markdown

    b, label = BUDGETS[1]
    method = [0.81, 0.78, 0.85, 0.80, 0.79, 0.83, 0.77, 0.84, 0.80, 0.82]
    scratch = [0.75, 0.79, 0.80, 0.80, 0.70, 0.81, 0.78, 0.76, 0.71, 0.72]
    recs = [make_record(m, "frozen", b, label, s, value=v)
            for s in range(10) for m, v in (("simclr", method[s]), ("scratch", scratch[s]))]
    text = gain_markdown(gains(recs, "roc_auc"), "frozen")
    diff = [x - y for x, y in zip(method, scratch)]
    p = stats.ttest_rel(method, scratch).pvalue
    mean, std, lo, hi = hand_mean_std_ci(diff)
    assert f"| method | {label} |" in text
    assert (f"| simclr | vs random init (frozen): {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] "
            f"p={p:.3f}, Holm {p:.3f} (the best baseline) |") in text


def test_all_zero_differences_give_nan_with_a_note():
    b, label = BUDGETS[0]
    recs = [make_record(m, "frozen", b, label, 0, r, value=v, split_hash=sha(r))
            for r, v in enumerate([0.7, 0.8, 0.9]) for m in ("simclr", "scratch")]
    (row,) = paired_comparison(recs, "roc_auc")
    assert math.isnan(row.corrected_p) and "zero" in row.note


def test_lower_is_better_direction_for_regression():
    b, label = BUDGETS[0]
    recs = [make_record(m, "frozen", b, label, s, task="regression", value=v)
            for s, (ours, base) in enumerate([(4.0, 5.0), (3.0, 4.5), (6.0, 5.0)])
            for m, v in (("yaware", ours), ("scratch", base))]
    assert primary_metric(recs) == "mae"
    (row,) = paired_comparison(recs, "mae")
    assert row.mean_diff == pytest.approx(-0.5)
    assert (row.wins, row.ties, row.losses) == (2, 0, 1)  # lower MAE wins


# --- report files ------------------------------------------------------------------------------

def test_write_report_tables_csv_and_figures(run_dir):
    path = write_report(run_dir, {"benchmark file": "benchmarks/quickstart.toml"})
    text = path.read_text()
    assert path == run_dir / "report.md"
    assert "config hash" in text and sha("config") in text and "torch 2.13.0" in text
    assert "benchmarks/quickstart.toml" in text
    assert "### frozen finetuning" in text and "### full finetuning" in text
    assert "| method | 5/class | 20/class |" in text  # budgets in numeric order
    assert "## balanced_accuracy" in text and "## Split-level detail (descriptive)" in text
    assert text.index("## Gains across pretraining seeds") < text.index("## roc_auc")
    assert "### frozen probe" in text and "seeds** (the unit of replication): 3" in text
    mean, std, lo, hi = hand_mean_std_ci([known_value("yaware", "full", "20/class", s)
                                          for s in SEEDS])
    assert f"**{mean:.3f} ± {std:.3f} [{lo:.2f}, {hi:.2f}]**" in text  # best of its column
    links = [line.split("](")[1].rstrip(")") for line in text.splitlines()
             if line.startswith("![")]
    assert {"figures/label_efficiency.png", "figures/roc.png", "figures/confusion.png"} <= set(
        links)
    assert all((run_dir / link).stat().st_size > 10_000 for link in links)
    assert "## Subjects" in text and "| 5/class | 10 | 6 |" in text  # train, validation
    with (run_dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 36
    for col in ("method", "mode", "budget_label", "budget_kind", "budget_value", "seed",
                "repeat", "split_hash", "roc_auc", "balanced_accuracy", "accuracy", "f1"):
        assert col in rows[0]
    assert "confusion_matrix" not in rows[0] and "auc_per_class" not in rows[0]
    row = next(r for r in rows if (r["method"], r["mode"], r["budget_label"], r["seed"])
               == ("simclr", "full", "20/class", "2"))
    assert float(row["roc_auc"]) == pytest.approx(known_value("simclr", "full", "20/class", 2))


def test_regression_report_uses_mae_lower_is_better(tmp_path):
    run = write_jsonl(tmp_path / "run", grid_records("regression"))
    text = write_report(run).read_text()
    assert "## mae (lower is better)" in text and "## r2" in text
    # lowest MAE (scratch has the lowest BASE) is the bold one
    mean, std, lo, hi = hand_mean_std_ci([10 * known_value("scratch", "frozen", "5/class", s)
                                          for s in SEEDS])
    assert f"**{mean:.3f} ± {std:.3f} [{lo:.2f}, {hi:.2f}]**" in text
    assert (run / "figures" / "predicted_vs_true.png").is_file()
    assert not (run / "figures" / "roc.png").exists()


def test_summary_table_bolds_best_per_column(run_dir):
    table = summary_table(load_results(run_dir))
    assert [c.header for c in table.columns] == ["mode", "method", "5/class", "20/class"]
    methods, cells = table.columns[1]._cells, table.columns[3]._cells
    bold = [m for m, c in zip(methods, cells) if c.startswith("[bold]")]
    assert bold == ["yaware", "yaware"]  # frozen and full
    assert "random init (frozen)" in methods and "scratch" in methods  # frozen / full
    console = Console(record=True, width=150)
    console.print(table)
    assert "roc_auc (higher is better)" in console.export_text()
    simclr_frozen = cells[methods.index("simclr")]
    (gain,) = [r for r in seed_comparisons(load_results(run_dir), "roc_auc")
               if (r.method, r.mode, r.budget.label) == ("simclr", "frozen", "20/class")]
    assert simclr_frozen.endswith(f"RI {gain.improvement:+.3f} p_H={gain.holm_p:.3f}")
    assert "RI" not in cells[methods.index("random init (frozen)")]


def test_macro_roc_auc_is_mean_of_one_vs_rest_aucs():
    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    logits = rng.normal(size=(30, 3)) + 1.5 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    fpr, tpr, auc = macro_roc(y, proba, ["CN", "MCI", "AD"])
    assert auc == pytest.approx(classification_metrics(y, proba)["roc_auc"])
    assert fpr[0] == 0 and fpr[-1] == 1 and np.all(np.diff(tpr) >= 0)


# --- CLI ---------------------------------------------------------------------------------------

def cli_app() -> typer.Typer:
    app = typer.Typer(cls=_Group)  # the real root group: SsltkError -> one line, exit 1
    app.callback()(lambda: None)
    app.command("report")(command)
    return app


def test_cli_report_prints_table_and_path(run_dir):
    result = CliRunner().invoke(cli_app(), ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "roc_auc" in result.output and "yaware" in result.output
    assert "report.md" in result.output and (run_dir / "report.md").is_file()


def test_cli_missing_results_is_one_line_error(tmp_path):
    result = CliRunner().invoke(cli_app(), ["report", str(tmp_path / "nowhere")])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "results.jsonl" in lines[0] and "ssltk run CONFIG" in lines[0]


def test_unit_interval_metrics_have_their_interval_clipped():
    from ssltk.bench.stats import aggregate as agg

    records = [{"method": "m", "mode": "frozen", "budget": {"kind": "fraction", "value": 1.0},
                "budget_label": "100%", "seed": seed, "metrics": {"roc_auc": v, "mae": v}}
               for seed, v in enumerate((0.2, 0.95))]
    auc, = agg(records, "roc_auc")
    assert (auc.ci_low, auc.ci_high) == (0.0, 1.0)  # unclipped: -4.2 .. 5.3 (t(0.975, 1) = 12.7)
    mae, = agg(records, "mae")
    assert mae.ci_low < 0 < 1 < mae.ci_high  # an unbounded metric keeps its t-interval
