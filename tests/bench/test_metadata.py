"""Metadata checked before any work (missing values, label leakage, exclude_test), the
pretraining cache shared across run folders, and grids of external encoders alone."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ssltk.bench.cohort import all_test_subjects, load_cohort
from ssltk.bench.metadata import check_metadata
from ssltk.bench.results import read_results
from ssltk.bench.runner import prepare, run_benchmark
from ssltk.cli import app
from ssltk.config import ComponentSpec, load_config
from ssltk.errors import ConfigError
from ssltk.store import VolumeStore

YAWARE_AGE = {"name": "yaware", "anchor": {"name": "rbf", "columns": ["age"], "sigma": 5.0}}
NO_AGE = [0, 5, 6, 11]
"""Rows of the store without an age."""


@pytest.fixture(scope="module")
def store(tmp_path_factory, make_tiny_store):
    """The tiny store (24 subjects) with ages removed from rows NO_AGE."""
    import h5py

    path = make_tiny_store(tmp_path_factory.mktemp("meta") / "tiny.h5", (1, 16, 16, 16), n=24)
    with h5py.File(path, "r+") as f:
        ages = f["meta/age"][...]
        ages[NO_AGE] = np.nan
        f["meta/age"][...] = ages
    return path


def write(tmp_path, make_benchmark, store, name="tiny.toml", objectives=None, data=None,
          pretrain=None, **changes):
    return make_benchmark(
        tmp_path / name, store, output_dir=tmp_path / "runs",
        data={"target": "age", "task": "regression", "classes": None} | (data or {}),
        pretrain={"objectives": objectives or [YAWARE_AGE]} | (pretrain or {}),
        finetune={"n_per_class": None, "n_total": [6]}, **changes)


def one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_missing_anchor_values_fail_validate_naming_the_keys(tmp_path, make_benchmark, store):
    path = write(tmp_path, make_benchmark, store)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    line = one_line(result)
    assert line.startswith("Error: pretrain.objectives[0].anchor: column 'age' has 4 missing")
    assert 'data.missing = "drop"' in line
    assert 'pretrain.objectives[0].anchor.missing = "neutral"' in line
    dry = CliRunner().invoke(app, ["run", "--dry-run", str(path)])
    assert dry.exit_code == 2 and "pretrain.objectives[0].anchor: column 'age'" in dry.output


def test_drop_policy_pretrains_without_those_rows_and_counts_them(tmp_path, make_benchmark,
                                                                  store, registry):
    path = write(tmp_path, make_benchmark, store, data={"missing": "drop"})
    config = load_config(path, registry)
    check = check_metadata(config, registry)
    (use,) = check.stores
    assert use.dropped == {"age": 4} and use.missing == {"age": 4}
    assert sorted(set(range(24)) - set(use.kept)) == NO_AGE
    _, grid = prepare(path, registry)
    assert all(job.run.rows == use.kept for job in grid.pretrain_jobs)
    assert check.target_missing == 4  # the target is age too: those rows are not labelled
    dry = CliRunner().invoke(app, ["run", "--dry-run", str(path)])
    assert dry.exit_code == 0 and "4 row(s) dropped for a missing 'age'" in dry.output


def test_a_neutral_anchor_reads_missing_values_and_a_head_skips_them(tmp_path, make_benchmark,
                                                                    store, registry):
    neutral = {"name": "yaware", "anchor": {"name": "rbf", "columns": ["age"],
                                            "missing": "neutral"}}
    supervised = {"name": "supervised",
                  "tasks": [{"column": "age", "kind": "regression"}]}
    path = write(tmp_path, make_benchmark, store, objectives=[neutral, supervised])
    (use,) = check_metadata(load_config(path, registry), registry).stores
    assert use.kept is None and use.dropped == {} and use.missing == {"age": 4}


def test_leakage_line_and_exclude_test(tmp_path, make_benchmark, store, registry):
    path = write(tmp_path, make_benchmark, store, data={"missing": "drop"})
    dry = CliRunner().invoke(app, ["run", "--dry-run", str(path)])
    leak = [line for line in dry.output.splitlines() if "label leakage" in line]
    assert len(leak) == 1 and "pretrain.objectives[0].anchor reads 'age'" in leak[0]
    assert "pretrain.exclude_test = true" in leak[0]

    path = write(tmp_path, make_benchmark, store, data={"missing": "drop"},
                 pretrain={"exclude_test": True}, seeds=[0, 1])
    dry = CliRunner().invoke(app, ["run", "--dry-run", str(path)])
    assert dry.exit_code == 0 and "label leakage" not in dry.output
    config, grid = prepare(path, registry)
    test = all_test_subjects(config, load_cohort(config))
    assert len(test) > 0
    with VolumeStore.open(store) as s:
        subjects = np.asarray(s.meta["subject_id"]).astype(str)
    for job in grid.pretrain_jobs:
        pretrained = set(subjects[job.run.rows].tolist())
        assert pretrained.isdisjoint(test) and pretrained
    assert grid.metadata.leaks == []


def test_all_test_subjects_is_every_repeats_test_set(tmp_path, make_benchmark, store, registry):
    path = write(tmp_path, make_benchmark, store, seeds=[0, 1])
    config = load_config(path, registry)
    cohort = load_cohort(config)
    tests = [set(cohort.subjects[cohort.sides(config.finetune, seed, 0)[2]].tolist())
             for seed in (0, 1)]
    assert all_test_subjects(config, cohort) == tests[0] | tests[1]
    assert tests[0] != tests[1]


@pytest.mark.slow
def test_a_second_task_reuses_the_pretraining(tmp_path, make_benchmark, store, caplog):
    """Two TOMLs on the same store and [pretrain], another finetuning task: one pretraining."""
    common = {"objectives": [{"name": "simclr"}], "data": {"missing": "drop"}}
    age = write(tmp_path, make_benchmark, store, name="age.toml", **common)
    sex = write(tmp_path, make_benchmark, store, name="sex.toml", **common)
    text = sex.read_text().replace('target = "age"', 'target = "sex"').replace(
        'task = "regression"', 'task = "classification"').replace('name = "tiny"',
                                                                   'name = "tiny-sex"')
    sex.write_text(text)
    first = run_benchmark(age)
    cache = tmp_path / "runs" / ".pretrain-cache"
    (trained,) = [p for p in cache.iterdir() if p.is_dir()]
    assert (trained / "encoder.pt").is_file()
    stamp = (trained / "encoder.pt").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="ssltk.engine.pretraining"):
        second = run_benchmark(sex)
    assert not [r for r in caplog.records if r.name == "ssltk.engine.pretraining"]
    assert (trained / "encoder.pt").stat().st_mtime_ns == stamp
    assert [p for p in cache.iterdir() if p.is_dir()] == [trained]
    for root in (first, second):
        (link,) = (root / "pretrain").iterdir()
        assert link.resolve() == trained.resolve()
        rec = next(r for r in read_results(root / "results.jsonl") if r["method"] == "simclr")
        assert rec["pretrain"]["hash"] == trained.name
        assert rec["n_train"] == 6 and rec["n_val"] > 0
        meta = json.loads((root / "metadata.json").read_text())
        assert meta["stores"][0]["rows_used"] == 24
        assert any("24 of" in line and "rows used" in line for line in meta["lines"])


def test_a_grid_of_external_encoders_alone(tmp_path, make_benchmark, store, registry):
    backbone = registry.build("backbones", ComponentSpec(name="resnet10", widen_factor=0.25,
                                                          norm="group"), "backbone",
                              in_channels=1, spatial_dims=3)
    torch.save(backbone.state_dict(), tmp_path / "enc.pth")
    path = write(tmp_path, make_benchmark, store, objectives=[{"name": "simclr"}])
    text = path.read_text().replace('objectives = [{name = "simclr"}]', "objectives = []")
    path.write_text(text + f'\n[[pretrain.external]]\nname = "mine"\npath = '
                           f'"{tmp_path / "enc.pth"}"\n')
    config, grid = prepare(path, registry)
    assert grid.pretrain_jobs == [] and grid.methods == ["scratch", "mine"]
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"pretrain.objectives: .*\[\[pretrain.external\]\]"):
        load_config(path, registry)


def test_regression_refuses_n_per_class(tmp_path, make_benchmark, store):
    path = write(tmp_path, make_benchmark, store)
    path.write_text(path.read_text().replace("n_total = [6]", "n_per_class = [2]"))
    with pytest.raises(ConfigError, match=r"finetune.n_per_class: a regression target"):
        load_config(path)
