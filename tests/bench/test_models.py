"""``[finetune] save_models`` and the report's Grad-CAM panel; PR curves and labels of plots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssltk.bench.models import CANDIDATES, saved_bundles
from ssltk.bench.plots import method_label, micro_roc, pr_curves
from ssltk.bench.report import write_report
from ssltk.bench.results import read_results
from ssltk.bench.runner import run_benchmark
from ssltk.config import load_config
from ssltk.errors import ConfigError

def write_config(make_benchmark, folder, store, seeds=(0, 1, 2), name="tiny.toml", **changes):
    """The tiny benchmark (tests/conftest.py) with SimCLR, budgets 2 and 4 per class."""
    finetune = {"n_per_class": [2, 4]} | changes.pop("finetune", {})
    return make_benchmark(folder / name, store, output_dir=folder / "runs", seeds=list(seeds),
                          finetune=finetune, **changes)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, make_tiny_store):
    return make_tiny_store(tmp_path_factory.mktemp("models") / "tiny.h5", (1, 16, 16, 16), n=32)


@pytest.mark.slow
def test_best_keeps_the_best_validation_cell_at_the_largest_budget(tmp_path, tiny_store,
                                                                  make_benchmark):
    cfg = write_config(make_benchmark, tmp_path, tiny_store, finetune={"save_models": "best"},
                       report={"gradcam": True, "gradcam_subjects": 2})
    root = run_benchmark(cfg)
    results = read_results(root / "results.jsonl")
    bundles = {p.name: json.loads((p / "model.json").read_text()) for p in saved_bundles(root)}
    assert set(bundles) == {"scratch-frozen", "simclr-frozen"}
    assert not (root / "models" / CANDIDATES).exists()
    for name, meta in bundles.items():
        method = name.removesuffix("-frozen")
        largest = [r for r in results if r["method"] == method and r["budget_label"] == "4/class"]
        assert len(largest) == 3  # one per seed
        best = max(largest, key=lambda r: (r["val_score"], -r["seed"]))
        assert meta["info"]["cell"] == best["cell"] and meta["val_score"] == best["val_score"]
        assert meta["metrics"] == best["metrics"] and meta["info"]["budget_label"] == "4/class"
    assert (root / "figures" / "gradcam_frozen.png").stat().st_size > 5000
    report = write_report(root).read_text()
    assert "figures/gradcam_frozen.png" in report
    again = run_benchmark(cfg)  # nothing left to run: the kept bundles stay
    assert {p.name for p in saved_bundles(again)} == set(bundles)


def test_all_saves_every_cell_and_gradcam_needs_saved_models(tmp_path, tiny_store,
                                                            make_benchmark):
    cfg = write_config(make_benchmark, tmp_path, tiny_store, seeds=[0],
                       finetune={"save_models": "all"})
    root = run_benchmark(cfg)
    names = sorted(p.name for p in saved_bundles(root))
    assert names == ["scratch-frozen-n_per_class2-seed0-rep0",
                     "scratch-frozen-n_per_class4-seed0-rep0",
                     "simclr-frozen-n_per_class2-seed0-rep0",
                     "simclr-frozen-n_per_class4-seed0-rep0"]
    bad = write_config(make_benchmark, tmp_path, tiny_store, name="bad.toml",
                       report={"gradcam": True})
    with pytest.raises(ConfigError, match="report.gradcam needs saved models"):
        load_config(bad)


def test_precision_recall_and_micro_averages_match_scikit_learn():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    proba = rng.dirichlet(np.ones(3), 120)
    proba[np.arange(120), y] += 0.6
    proba /= proba.sum(1, keepdims=True)
    onehot = np.eye(3)[y]
    curves = pr_curves(y, proba, ["CN", "MCI", "AD"])
    assert curves["macro"][2] == pytest.approx(average_precision_score(onehot, proba,
                                                                       average="macro"))
    assert curves["micro"][2] == pytest.approx(average_precision_score(onehot, proba,
                                                                       average="micro"))
    assert micro_roc(y, proba, ["CN", "MCI", "AD"])[2] == pytest.approx(
        roc_auc_score(onehot, proba, average="micro"))
    recall, precision, _ = curves["macro"]
    assert np.all(np.diff(precision) <= 1e-12)  # interpolated precision never rises
    from sklearn.metrics import precision_recall_curve

    for r in (0.25, 0.5, 0.9):  # a plain restatement: mean over classes of max precision
        want = []                # among the points whose recall is at least r
        for k in range(3):
            prec, rec, _ = precision_recall_curve(y == k, proba[:, k])
            want.append(max(p for p, q in zip(prec, rec) if q >= r))
        assert precision[np.searchsorted(recall, r)] == pytest.approx(np.mean(want))
    assert precision[-1] < 0.95  # not the trivial curve at 1
    yb = (y == 1).astype(int)
    pb = np.c_[1 - proba[:, 1], proba[:, 1]]
    (binary,) = pr_curves(yb, pb, ["no", "yes"]).values()
    assert binary[2] == pytest.approx(average_precision_score(yb, pb[:, 1]))


def test_scratch_is_called_random_init_in_frozen_mode():
    assert method_label("scratch", "frozen") == "random init (frozen)"
    assert method_label("scratch", "full") == "scratch"
    assert method_label("simclr", "frozen") == "simclr"
