"""The report's pretraining-monitor section and figure, on hand-written histories."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

from ssltk.bench.monitors import MonitoredRun, find_runs, monitor_markdown, read_history
from ssltk.bench.report import write_report
from ssltk.engine.metrics import classification_metrics


def _sha(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _record(method: str, seed: int, repeat: int) -> dict:
    y = np.array([0, 1] * 5)
    p1 = np.clip(0.5 + 0.2 * (y - 0.5) + 0.1 * np.sin(np.arange(10) + seed), 0.01, 0.99)
    proba = np.stack([1 - p1, p1], 1)
    pretrain = None if method == "scratch" else {
        "objective": method, "hash": _sha(method, seed), "store": "x.h5", "augmentations": "default"}
    return {"cell": _sha(method, seed, repeat)[:16], "benchmark": "b", "config_hash": "c",
            "method": method, "pretrain": pretrain, "mode": "frozen",
            "budget": {"kind": "fraction", "value": 0.5}, "budget_label": "50%", "seed": seed,
            "repeat": repeat, "split_hash": _sha("split", seed, repeat), "n_train": 5,
            "n_val": 5, "n_test": 10, "task": "classification", "classes": ["CN", "AD"],
            "metrics": classification_metrics(y, proba, ["CN", "AD"]),
            "predictions": {"rows": list(range(10)), "classes": ["CN", "AD"],
                            "y_true": y.tolist(), "proba": proba.tolist()},
            "timings": {}, "versions": {}, "created": "2026-01-01T00:00:00Z"}


def _history(ranks, aucs, losses, spread):
    lines = [{"epoch": -1, "step": 0, "monitor": {"rank": ranks[0], "linear_auc": aucs[0],
                                                   "knn_auc": aucs[0], "proj_std": 0.07,
                                                   "proj_std_ref": 0.1, "dim": 100}}]
    for e, (r, a, l) in enumerate(zip(ranks[1:], aucs[1:], losses)):
        lines.append({"epoch": e, "step": 10 * (e + 1), "loss": l,
                      "monitor": {"rank": r, "linear_auc": a, "knn_auc": a - 0.01,
                                  "proj_std": spread, "proj_std_ref": 0.1, "dim": 100}})
    return lines


def _run_dir(tmp_path):
    run = tmp_path / "run"
    records = [_record(m, s, r) for m in ("scratch", "simclr", "yaware") for s in (0, 1)
               for r in (0, 1)]
    run.mkdir()
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    histories = {"simclr": ([8.0, 20.0, 30.0], [0.70, 0.72, 0.78], [5.0, 4.0], 0.05),
                 "yaware": ([8.0, 1.5, 1.02], [0.70, 0.65, 0.60], [6.9, 6.87], 0.01)}
    for method, (ranks, aucs, losses, spread) in histories.items():
        for seed in (0, 1):
            folder = run / "pretrain" / f"{method}-seed{seed}-{_sha(method, seed)[:8]}"
            folder.mkdir(parents=True)
            text = "".join(json.dumps(h) + "\n" for h in _history(ranks, aucs, losses, spread))
            (folder / "history.jsonl").write_text(text + '{"epoch": 1, "lo')  # torn last line
    return run, records


def test_report_has_the_monitor_table_figure_and_warnings(tmp_path, caplog):
    run, records = _run_dir(tmp_path)
    runs = find_runs(run, records)
    assert [(r.method, r.seed) for r in runs] == [("simclr", 0), ("simclr", 1), ("yaware", 0),
                                                  ("yaware", 1)]
    assert [e for e, _ in runs[0].series] == [0, 1, 2]
    with caplog.at_level(logging.WARNING, logger="ssltk.bench.report"):
        path = write_report(run)
    text = path.read_text()
    assert "## Pretraining monitors" in text and "figures/monitors.png" in text
    assert (run / "figures" / "monitors.png").stat().st_size > 10_000
    simclr_row = next(line for line in text.splitlines() if line.startswith("| simclr (seed 0)"))
    assert "8.0 → 30.0 (+22.0)" in simclr_row and "0.700 → 0.780 (+0.080)" in simclr_row
    assert simclr_row.endswith("| ok |") and "0.70 → 0.50" in simclr_row  # std · sqrt(d)
    yaware_row = next(line for line in text.splitlines() if line.startswith("| yaware (seed 1)"))
    assert "**collapsed**" in yaware_row and "**below random init**" in yaware_row
    assert "yaware (seed 0) collapsed after 2 epoch(s): effective rank 1.02 < 2" in caplog.text
    assert "narrow cone: std·√d 0.100 < 0.25 and < 0.25 x 0.70 at random init" in caplog.text
    assert "yaware (seed 1) did not learn: linear-probe ROC-AUC 0.600" in caplog.text
    assert "simclr" not in caplog.text


def test_a_run_without_histories_has_no_monitor_section(tmp_path):
    run, records = _run_dir(tmp_path)
    for path in (run / "pretrain").rglob("history.jsonl"):
        path.unlink()
    assert find_runs(run, records) == []
    assert "Pretraining monitors" not in write_report(run).read_text()


def test_read_history_keeps_the_last_record_of_each_epoch_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"epoch": -1, "monitor": {"rank": 3}}\n{"epoch": 0, "loss": 2}\n'
                    '{"epoch": 0, "loss": 1}\n{"epoch": 1, "lo')
    assert read_history(path) == [{"epoch": -1, "monitor": {"rank": 3}}, {"epoch": 0, "loss": 1}]


def test_a_run_on_constant_inputs_is_reported_as_such_not_as_collapsed():
    flat = {"rank": 1.0, "embed_std": 0.0, "embed_std_ref": 0.1, "dim": 100}
    run = MonitoredRun("simclr", 0, [{"epoch": -1, "step": 0, "monitor": flat},
                                     {"epoch": 0, "step": 10, "loss": 5.0, "monitor": flat}])
    text = "\n".join(monitor_markdown([run]))
    row = next(line for line in text.splitlines() if line.startswith("| simclr (seed 0)"))
    assert row.endswith("| **inputs constant** |") and "collapsed" not in row
    assert "- simclr (seed 0): the random-init encoder is already collapsed" in text
    assert "inputs look constant; check the store ('ssltk store verify')" in text
