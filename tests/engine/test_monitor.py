"""Representation monitors: metrics against hand computations, the engine hook, diagnosis."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ssltk.config import MonitorConfig, PretrainSettings
from ssltk.engine import PretrainRun, pretrain
from ssltk.engine.checkpoint import load_checkpoint
from ssltk.engine.monitor import (COLLAPSE_RANK, COLLAPSE_STD, INIT_EPOCH, diagnose, effective_rank,
                                  fixed_subset, inputs_look_constant, knn_scores,
                                  linear_probe_scores, monitor_series, normalised_std,
                                  probe_metrics)

BACKBONE = {"name": "resnet10", "widen_factor": 0.25, "norm": "group"}
LIGHT_AUG = [{"name": "flip", "p": 0.5}, {"name": "gaussian_noise", "p": 1.0}]


# -- effective rank (RankMe) --------------------------------------------------------------------
def test_effective_rank_of_a_known_spectrum():
    # singular values (3, 1, 0): p = (0.75, 0.25, 0) + 1e-7, RankMe = exp(H(p))
    z = np.array([[3.0, 0, 0], [0, 1.0, 0], [0, 0, 0], [0, 0, 0]])
    p = [0.75 + 1e-7, 0.25 + 1e-7, 1e-7]
    expected = math.exp(-sum(q * math.log(q) for q in p))  # 1.7547...
    assert effective_rank(z) == pytest.approx(expected, rel=1e-9)
    # invariant to rotations of either side and to scale
    rng = np.random.default_rng(0)
    q_left, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    q_right, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    assert effective_rank(5.0 * q_left @ z @ q_right) == pytest.approx(expected, rel=1e-6)


def test_effective_rank_extremes():
    assert effective_rank(np.eye(6)) == pytest.approx(6.0, rel=1e-5)  # k equal values -> k
    assert effective_rank(np.ones((50, 8))) == pytest.approx(1.0, abs=1e-4)  # one direction
    assert effective_rank(np.zeros((5, 4))) == 1.0
    full = effective_rank(np.random.default_rng(0).standard_normal((2000, 16)))
    assert 15.0 < full <= 16.0  # i.i.d. Gaussian: nearly full rank


# -- normalised std (SimSiam) -------------------------------------------------------------------
def test_normalised_std_by_hand():
    # unit rows ±e1, ±e2: each coordinate takes (1, -1, 0, 0): mean 0, variance 1/2
    z = np.array([[2.0, 0], [-3.0, 0], [0, 0.5], [0, -1.0]])
    assert normalised_std(z) == pytest.approx(math.sqrt(0.5), rel=1e-12)  # = 1/sqrt(d), d = 2
    assert normalised_std(np.tile([[1.0, 2.0, 3.0]], (10, 1))) == pytest.approx(0.0, abs=1e-12)
    iso = normalised_std(np.random.default_rng(1).standard_normal((5000, 64)))
    assert iso == pytest.approx(1 / 8, rel=0.05)


# -- k-NN probe ---------------------------------------------------------------------------------
def test_knn_scores_match_a_hand_computed_vote():
    # points on the unit circle at 0, 30, 60 and 180 degrees, labels 0, 1, 0, 1; k = 2, T = 0.5
    angles = np.deg2rad([0.0, 30.0, 60.0, 180.0])
    z = np.stack([np.cos(angles), np.sin(angles)], 1) * np.array([[1.0], [2.0], [0.5], [3.0]])
    scores = knn_scores(z, [0, 1, 0, 1], n_classes=2, k=2, temperature=0.5)
    # sample 0: neighbours 30 deg (class 1, cos .866) and 60 deg (class 0, cos .5)
    w1, w0 = math.exp(math.cos(math.pi / 6) / 0.5), math.exp(0.5 / 0.5)
    assert scores[0] == pytest.approx([w0 / (w0 + w1), w1 / (w0 + w1)], rel=1e-12)
    # sample 1 (30 deg): neighbours 0 and 60 deg, both class 0 (never itself)
    assert scores[1] == pytest.approx([1.0, 0.0])
    assert np.allclose(scores.sum(1), 1.0)


def test_knn_and_linear_probes_separate_two_clusters():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    z = rng.standard_normal((80, 16)) * 0.3
    z[:, 0] += np.where(y == 1, 2.0, -2.0)  # class along the first axis
    z[:, 1] += 5.0  # a common offset: cosine k-NN must still separate them
    for scores in (knn_scores(z, y, 2), linear_probe_scores(z, y, 2, folds=5)):
        auc, acc = probe_metrics(scores, y)
        assert auc > 0.99 and acc > 0.95
    shuffled = rng.permutation(y)  # labels unrelated to the features: chance level
    auc, _ = probe_metrics(knn_scores(z, shuffled, 2), shuffled)
    assert 0.25 < auc < 0.75
    again = linear_probe_scores(z, y, 2, folds=5)
    assert np.array_equal(again, linear_probe_scores(z, y, 2, folds=5))  # deterministic


def test_fixed_subset_is_the_same_for_every_caller():
    rows = np.arange(100, 300)
    a, b = fixed_subset(rows, 50), fixed_subset(rows, 50)
    assert np.array_equal(a, b) and len(np.unique(a)) == 50 and np.isin(a, rows).all()
    assert np.array_equal(fixed_subset(rows[:10], 50), rows[:10])


# -- diagnosis ----------------------------------------------------------------------------------
def _history(ranks, aucs):
    return [{"epoch": e - 1, "monitor": {"rank": r, "linear_auc": a, "knn_auc": a, "dim": 64}}
            for e, (r, a) in enumerate(zip(ranks, aucs))]


def test_a_collapse_into_a_narrow_cone_is_named_even_at_a_high_effective_rank():
    rng = np.random.default_rng(0)
    cone = np.array([1.0] + [0.0] * 63) + 0.01 * rng.standard_normal((256, 64))
    spread = normalised_std(cone) * 8.0  # sqrt(64)
    assert effective_rank(cone) > 4 * COLLAPSE_RANK and spread < COLLAPSE_STD / 2
    monitor = {"rank": 40.0, "proj_rank": effective_rank(cone), "proj_dim": 64,
               "proj_std": normalised_std(cone), "proj_std_ref": 1 / 8.0}
    history = [{"epoch": -1, "monitor": {**monitor, "proj_std": 0.1}},
               {"epoch": 0, "monitor": monitor}]
    (warning,) = diagnose(history)
    assert "narrow cone" in warning and f"{spread:.3f}" in warning and "0.25 x 0.80 at random" in warning


def test_diagnose_names_collapse_and_runs_that_end_below_random_init():
    assert diagnose(_history([10.0, 30.0, 40.0], [0.70, 0.72, 0.80])) == []
    collapsed = diagnose(_history([10.0, 3.0, 1.01], [0.70, 0.72, 0.75]))
    assert len(collapsed) == 1 and "collapsed" in collapsed[0] and "1.01" in collapsed[0]
    worse = diagnose(_history([10.0, 30.0, 40.0], [0.80, 0.75, 0.78]), label="simclr seed 0")
    assert len(worse) == 1 and worse[0].startswith("simclr seed 0 did not learn")
    assert "0.780" in worse[0] and "0.800" in worse[0]
    assert [e for e, _ in monitor_series(_history([1, 2], [0.5, 0.6]))] == [0, 1]


def _constant_init(rank=1.0, std=0.0):
    return {"epoch": -1, "monitor": {"rank": rank, "embed_std": std, "embed_std_ref": 0.125,
                                     "dim": 64, "linear_auc": 0.5}}


def test_a_random_init_already_collapsed_blames_the_inputs_not_the_objective():
    history = [_constant_init(), {"epoch": 0, "monitor": {"rank": 1.0, "embed_std": 0.0,
                                                          "embed_std_ref": 0.125,
                                                          "linear_auc": 0.4}}]
    (warning,) = diagnose(history, label="simclr (seed 0)")
    assert warning.startswith("simclr (seed 0): the random-init encoder is already collapsed")
    assert "inputs look constant" in warning and "ssltk store verify" in warning
    assert "collapsed after" not in warning and "did not learn" not in warning
    assert inputs_look_constant(history[0]["monitor"])
    # a tiny network that starts in a cone is not constant input: std·√d far above 1e-3
    assert not inputs_look_constant(_constant_init(rank=1.5, std=0.11 / 8)["monitor"])
    assert not inputs_look_constant(_constant_init(rank=3.0)["monitor"])


@pytest.mark.numerics
def test_constant_inputs_give_a_collapsed_random_init_encoder(tmp_path):
    """A store of zeros (what ``--normalize zscore`` made of binary masks): the monitors at
    random init find every sample at the same features, and the diagnosis says so."""
    from ssltk.store import StoreWriter

    store = tmp_path / "zeros.h5"
    with StoreWriter.create(store, shape=(1, 32, 32), columns={}, dtype="float32") as w:
        for i in range(16):
            w.append(np.zeros((1, 32, 32), np.float32), {"subject_id": f"s{i}"})
    result = pretrain(_run(store, epochs=1, objective="genesis"), tmp_path / "pt")
    init = result.history[0]["monitor"]
    assert init["rank"] < 1.01 and init["embed_std"] < 1e-6
    (warning,) = diagnose(result.history)
    assert "inputs look constant" in warning


# -- the engine hook ----------------------------------------------------------------------------
def _run(store, monitor=None, epochs=2, objective="simclr"):
    return PretrainRun(store=store, backbone=BACKBONE, objective={"name": objective},
                       augmentations=LIGHT_AUG, epochs=epochs, batch_size=4, seed=0,
                       monitor=monitor or {})


def test_history_holds_the_monitors_from_random_init_on(store2d, tmp_path):
    run = _run(store2d, {"target": "diagnosis", "classes": ["CN", "AD"], "knn_k": 5})
    result = pretrain(run, tmp_path / "pt")
    assert [h["epoch"] for h in result.history] == [INIT_EPOCH, 0, 1]
    init = result.history[0]
    assert init["step"] == 0 and "loss" not in init
    for h in result.history:
        m = h["monitor"]
        assert m["n"] == 16 and m["dim"] == 128 and 1.0 <= m["rank"] <= 16
        assert m["proj_dim"] == 128 and 1.0 <= m["proj_rank"] <= 16 and m["proj_std"] > 0
        assert m["embed_std_ref"] == pytest.approx(1 / math.sqrt(128))
        assert 0.0 <= m["knn_auc"] <= 1.0 and 0.0 <= m["linear_auc"] <= 1.0
    lines = [json.loads(x) for x in (tmp_path / "pt" / "history.jsonl").read_text().splitlines()]
    assert lines[0]["epoch"] == INIT_EPOCH


def test_monitors_do_not_change_the_weights_nor_the_run_hash(store2d, tmp_path):
    on = _run(store2d, {"target": "diagnosis", "every": 1}, objective="moco")
    off = _run(store2d, {"enabled": False}, objective="moco")
    assert on.content_hash() == off.content_hash()
    a, b = pretrain(on, tmp_path / "on"), pretrain(off, tmp_path / "off")
    wa, wb = (load_checkpoint(r.encoder_path)[0]["backbone"] for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all("monitor" not in h for h in b.history)
    assert "monitor" in PretrainSettings.hash_exclude


def test_every_n_epochs_and_always_the_last(store2d, tmp_path):
    result = pretrain(_run(store2d, {"every": 2}, epochs=3, objective="genesis"), tmp_path / "pt")
    assert [h["epoch"] for h in result.history if "monitor" in h] == [INIT_EPOCH, 1, 2]
    assert "knn_auc" not in result.history[0]["monitor"]  # no target: no probes
    assert "proj_rank" not in result.history[0]["monitor"]  # genesis has no embeddings


def test_a_bad_monitor_target_is_a_clear_error(store2d, tmp_path):
    from ssltk.errors import SsltkError

    with pytest.raises(SsltkError, match="no column 'dx'"):
        pretrain(_run(store2d, {"target": "dx"}), tmp_path / "pt")


def test_benchmark_monitors_probe_its_own_task():
    from ssltk.config import BenchmarkConfig

    raw = {"name": "b", "data": {"pretrain_store": "p.h5", "finetune_store": "f.h5",
                                 "target": "diagnosis", "classes": ["CN", "AD"]},
           "backbone": {"name": "resnet10"}, "pretrain": {"objectives": [{"name": "simclr"}]},
           "finetune": {"label_fractions": [1.0]}}
    m = BenchmarkConfig.model_validate(raw).pretrain.monitor
    assert (m.target, m.classes, str(m.store)) == ("diagnosis", ["CN", "AD"], "f.h5")
    raw["pretrain"]["monitor"] = {"probes": False}
    assert BenchmarkConfig.model_validate(raw).pretrain.monitor.target is None
    assert MonitorConfig().enabled and COLLAPSE_RANK > 1
