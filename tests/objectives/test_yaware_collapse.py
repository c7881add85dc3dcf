"""y-Aware at a small scale: its defaults must not collapse (issue 12, docs/methods/yaware.md).

A small cohort (32 subjects aged 60-97, 2D, batch 16) puts y-Aware's published kernel (RBF on
age, sigma = 5 years) in the regime of the quickstart: the target of each view spreads over the
whole batch, and the published head (Linear, ReLU, Linear) drives the projections into a narrow
cone where the loss sits at its collapse value 2 ln(2N - 1). The default head ends with a
batch norm (``proj_output_norm``) that makes such a cone impossible.
"""

from __future__ import annotations

import math

import pytest

from ssltk.engine import PretrainRun, pretrain
from ssltk.engine.monitor import COLLAPSE_RANK, COLLAPSE_STD, diagnose

BATCH = 16


def _run(store, epochs: int, **objective) -> PretrainRun:
    return PretrainRun(store=store, backbone={"name": "resnet10", "widen_factor": 0.25},
                       objective={"name": "yaware", **objective}, epochs=epochs,
                       batch_size=BATCH, seed=0, monitor={"size": 32, "proj_size": 32})


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, make_tiny_store):
    return make_tiny_store(tmp_path_factory.mktemp("cohort") / "c.h5", (1, 32, 32), n=32)


def _spread(history) -> float:
    m = history[-1]["monitor"]
    return m["proj_std"] / m["proj_std_ref"]


def test_yaware_defaults_keep_the_effective_rank_and_spread_above_collapse(cohort, tmp_path):
    result = pretrain(_run(cohort, epochs=10), tmp_path / "pt")
    last = result.history[-1]["monitor"]
    assert last["rank"] > 2 * COLLAPSE_RANK  # measured 9-12 (2.3 at random init)
    assert last["proj_rank"] > 5 * COLLAPSE_RANK  # measured 27.7 (published head: 12.4)
    assert _spread(result.history) > 2 * COLLAPSE_STD  # measured 0.998 (published head: 0.249)
    assert diagnose(result.history) == []


@pytest.mark.slow
def test_the_published_head_collapses_in_the_same_setting(cohort, tmp_path):
    """The control: the test above can fail (published head and tau, 60 steps: std·√d 0.17-0.18)."""
    result = pretrain(_run(cohort, epochs=30, proj_output_norm=False, temperature=0.1),
                      tmp_path / "pt")
    assert _spread(result.history) < COLLAPSE_STD
    assert result.history[-1]["loss"] == pytest.approx(2 * math.log(2 * BATCH - 1), abs=0.05)
    assert "collapsed" in diagnose(result.history)[0]
