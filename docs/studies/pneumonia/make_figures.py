"""Figures of docs/studies/pneumonia.md from the study's recorded results.

    python docs/studies/pneumonia/make_figures.py

Reads ``histories/<run>.jsonl`` (the pretraining runs' history.jsonl, monitors from random init
on) and ``probe.csv`` (frozen-probe ROC-AUC per method and label budget, with the paired
comparison against the random-init encoder) next to this script; writes ``monitors.png`` and
``probe.png`` there.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
PANELS = (("knn_auc", "k-NN ROC-AUC (monitor subset)"),
          ("linear_auc", "linear-probe ROC-AUC (monitor subset)"),
          ("proj_spread", "objective embeddings: std·√d"))


def load_history(path: Path) -> list[tuple[int, dict]]:
    """``(epoch, monitor)`` pairs, epoch -1 being random init."""
    out = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        m = dict(record.get("monitor") or {})
        if "proj_std" in m:
            m["proj_spread"] = m["proj_std"] / m["proj_std_ref"]
        if m:
            out.append((record["epoch"], m))
    return out


def monitors_figure(out: Path) -> None:
    runs = sorted((HERE / "histories").glob("*.jsonl"))
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4))
    for i, path in enumerate(runs):
        series = load_history(path)
        for ax, (key, _) in zip(axes, PANELS):  # one colour per run in every panel
            pts = [(e, m[key]) for e, m in series if key in m]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, color=f"C{i}", label=path.stem)
    for ax, (_, title) in zip(axes, PANELS):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch (-1 = random init)")
        ax.grid(alpha=0.3)
    axes[2].axhline(0.25, color="k", ls=":", lw=1)  # COLLAPSE_STD
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def probe_figure(out: Path) -> None:
    rows = list(csv.DictReader((HERE / "probe.csv").open()))
    methods = [r["short"] for r in rows if r["fraction"] == "0.01"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for ax, frac in zip(axes, ("0.01", "0.1")):
        sel = {r["short"]: r for r in rows if r["fraction"] == frac}
        means = [float(sel[m]["mean"]) for m in methods]
        sds = [float(sel[m]["sd"]) for m in methods]
        colours = ["grey" if m == "random init" else "tab:blue" for m in methods]
        ax.bar(range(len(methods)), means, yerr=sds, color=colours, capsize=3)
        ax.axhline(float(sel["random init"]["mean"]), color="k", ls="--", lw=1)
        ax.set_xticks(range(len(methods)), methods, rotation=40, ha="right", fontsize=8)
        lo = min(m - s for m, s in zip(means, sds))
        ax.set_ylim(max(0.5, lo - 0.02), 1.0)
        ax.set_title(f"frozen probe ROC-AUC, {float(frac):.0%} of labels\n"
                     f"(mean ± sd over {sel[methods[0]]['n']} splits; dashed: random init)",
                     fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    monitors_figure(HERE / "monitors.png")
    probe_figure(HERE / "probe.png")
    print(f"wrote {HERE / 'monitors.png'} and {HERE / 'probe.png'}")
