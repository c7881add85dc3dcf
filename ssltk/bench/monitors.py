"""The pretraining monitors of a benchmark run, for its report.

Each pretraining job writes ``RUN_DIR/pretrain/<method>-seed<seed>-<hash[:8]>/history.jsonl``
(see :mod:`ssltk.engine.monitor`). This module finds the history of every pretraining run that
has results, summarises its monitors (random init -> end) and names the runs that collapsed or
ended below their own random-init probe.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ssltk.bench.stats import method_sort_key
from ssltk.engine.monitor import (COLLAPSE_DROP, COLLAPSE_RANK, COLLAPSE_STD, diagnose,
                                  monitor_series)

_DASH = "–"


@dataclass
class MonitoredRun:
    """One pretraining run's history (epoch records, random init first)."""

    method: str
    seed: int
    history: list[dict]

    @property
    def label(self) -> str:
        return f"{self.method} (seed {self.seed})"

    @property
    def series(self) -> list[tuple[int, dict]]:
        return monitor_series(self.history)

    def warnings(self) -> list[str]:
        return diagnose(self.history, label=self.label)


def read_history(path: Path) -> list[dict]:
    """Records of ``history.jsonl``, the last one per epoch (tolerates a torn last line)."""
    records: dict[int, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "epoch" in rec:
            records[int(rec["epoch"])] = rec
    return [records[k] for k in sorted(records)]


def find_runs(run_dir: str | Path, results: list[dict]) -> list[MonitoredRun]:
    """The monitored pretraining runs behind ``results`` (sorted by method, then seed)."""
    seen, runs = set(), []
    for r in results:
        job = r.get("pretrain")
        if not job or not job.get("hash"):
            continue
        key = (r["method"], r.get("seed"), job["hash"])
        if key in seen:
            continue
        seen.add(key)
        for folder in sorted((Path(run_dir) / "pretrain").glob(f"*-{job['hash'][:8]}")):
            path = folder / "history.jsonl"
            if path.is_file():
                runs.append(MonitoredRun(r["method"], int(r.get("seed") or 0),
                                         read_history(path)))
                break
    runs = [run for run in runs if run.series]
    return sorted(runs, key=lambda run: (method_sort_key(run.method), run.seed))


def _pair(first: dict, last: dict, key: str, digits: int, scale: str | None = None) -> str:
    def value(m: dict) -> float:
        v = m.get(key, math.nan)
        return v / m[scale] if scale and m.get(scale) else v

    a, b = value(first), value(last)
    if not (math.isfinite(a) and math.isfinite(b)):
        return _DASH
    return f"{a:.{digits}f} → {b:.{digits}f} ({b - a:+.{digits}f})"


def _status(warning: str) -> str:
    if "inputs look constant" in warning:
        return "**inputs constant**"
    return "**collapsed**" if "collapsed" in warning else "**below random init**"


def monitor_markdown(runs: list[MonitoredRun]) -> list[str]:
    """The report's section: one row per run (random init -> end), then the warnings."""
    lines = ["## Pretraining monitors", "",
             "Measured on the backbone's representation of a fixed monitor subset, at random "
             "init and after each epoch (docs/engine.md#representation-monitors). Values: "
             "random init → end of pretraining (change).", "",
             "| run | epochs | effective rank | objective's embeddings: std · √d "
             "| k-NN ROC-AUC | linear ROC-AUC | status |", "|---|---:|---:|---:|---:|---:|---|"]
    for run in runs:
        (_, first), (epochs, last) = run.series[0], run.series[-1]
        warns = run.warnings()
        status = "ok" if not warns else ", ".join(_status(w) for w in warns)
        spread = "head" if "head_std" in last else "proj"  # before the head's output norm
        lines.append(f"| {run.label} | {epochs} | {_pair(first, last, 'rank', 1)} "
                     f"| {_pair(first, last, f'{spread}_std', 2, f'{spread}_std_ref')} "
                     f"| {_pair(first, last, 'knn_auc', 3)} | {_pair(first, last, 'linear_auc', 3)} "
                     f"| {status} |")
    warnings = [w for run in runs for w in run.warnings()]
    lines += ["", f"Effective rank: RankMe of the backbone's representation. std · √d of the "
                  "objective's projection before any output batch norm of its head (after it, "
                  "std · √d is 1 by construction): 1 for isotropic features, 0 for complete "
                  f"collapse. Collapsed: effective rank below {COLLAPSE_RANK:g}, or std · √d "
                  f"below {COLLAPSE_STD:g} and below {COLLAPSE_DROP:g} x its random-init "
                  "value. Inputs constant: the random-init encoder already gives every sample "
                  "the same features (check the store with 'ssltk store verify')."]
    if warnings:
        lines += ["", "**Warnings**", ""] + [f"- {w}" for w in warnings]
    return lines
