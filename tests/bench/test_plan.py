"""``ssltk run --dry-run``'s plan counts exactly the cells the grid runs, on every shipped benchmark.

The shipped benchmarks name stores that do not exist here (real data, or synthetic cohorts built
on the first run), so the grid is expanded on an in-memory stand-in of the labelled cohort: the
only data ``expand`` reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssltk.bench.cohort import Cohort
from ssltk.bench.grid import cell_axes, expand
from ssltk.bench.plan import plan
from ssltk.config import load_config
from ssltk.errors import ConfigError

BENCHMARKS = sorted((Path(__file__).parents[2] / "benchmarks").glob("*.toml"))


def stand_in_cohort(classes: list[str] | None, subjects: int = 600) -> Cohort:
    """``subjects`` labelled subjects, balanced over ``classes`` (4 when the TOML keeps all)."""
    classes = classes or ["c0", "c1", "c2", "c3"]
    labels = np.arange(subjects) % len(classes)
    return Cohort(subjects=np.array([f"sub-{i:04d}" for i in range(subjects)]),
                  rows=np.arange(subjects), labels=labels, strata=labels, classes=classes)


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_plan_counts_the_cells_expand_makes(path, registry, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the stores are absent: the plan must not need them
    config = load_config(path, registry)
    planned = plan(config, registry)
    grid = expand(config, cohort=stand_in_cohort(config.data.classes))
    assert planned.cells == len(grid.cells) > 0
    assert [(c.method, c.mode, c.budget, c.seed, c.repeat) for c in grid.cells] == \
        [(a.method, a.mode, a.budget, a.seed, a.repeat)
         for a in cell_axes(config, grid.jobs)]
    assert len(planned.rows) == len(grid.pretrain_jobs)
    assert len(planned.missing) == len(config.data.stores())  # one line per store to build
    assert len({c.key for c in grid.cells}) == len(grid.cells)


def test_a_budget_larger_than_the_pool_names_its_field(registry):
    config = load_config(next(p for p in BENCHMARKS if p.stem == "adni_fewshot"), registry)
    # 200 subjects: 140 in the training pool after 10 % validation and 20 % test
    with pytest.raises(ConfigError, match=r"^finetune\.n_total\[1\]: 200 subjects, but the "
                                          r"training pool has only 140"):
        expand(config, cohort=stand_in_cohort(config.data.classes, subjects=200))
