"""``[distill]`` in a benchmark: the pool of every distillation, the rows of the grid and the
report, resume after a crash between a teacher and its student, one-line config errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ssltk.bench import groups
from ssltk.bench.cohort import load_cohort
from ssltk.bench.report import load_results, write_report
from ssltk.bench.results import read_results
from ssltk.bench.runner import prepare, run_benchmark
from ssltk.bench.stats import paired_comparison
from ssltk.cli import app

DISTILL = {
    "finetune": {"modes": ["frozen", "full"], "epochs": 2, "n_per_class": [2, 4]},
    "distill": {"epochs": 2, "temperature": 2.0, "modes": ["full"]},
}
"""The tiny benchmark of tests/conftest.py, finetuned in both modes, its full cells distilled."""


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, make_tiny_store):
    return make_tiny_store(tmp_path_factory.mktemp("distill") / "tiny.h5", (1, 16, 16, 16), n=32)


@pytest.fixture(scope="module")
def write_config(make_benchmark, tiny_store):
    def write(folder: Path, **changes) -> Path:
        tables = {k: dict(v) for k, v in DISTILL.items()}
        for key, value in changes.items():
            tables[key] = tables.get(key, {}) | value
        return make_benchmark(folder / "tiny.toml", tiny_store, output_dir=folder / "runs",
                              **tables)

    return write


def test_every_pool_is_the_training_pool_and_never_holds_a_test_subject(tmp_path, write_config):
    config, grid = prepare(write_config(tmp_path))
    full = [c for c in grid.cells if c.mode == "full"]
    assert len(grid.distills) == len(full) == 4  # scratch and simclr x 2 budgets
    all_rows = set(load_cohort(config).rows.tolist())
    for d in grid.distills:
        pool, run = set(d.run.pool_rows), d.teacher.run
        assert not pool & set(run.test_rows) and not pool & set(run.val_rows)
        assert set(run.train_rows) <= pool  # the budget was drawn from this pool
        assert pool | set(run.val_rows) | set(run.test_rows) == all_rows  # all of it
        assert (d.run.val_rows, d.run.test_rows) == (run.val_rows, run.test_rows)
    pools = {d.teacher.budget.label: d.run.pool_rows for d in grid.distills}
    assert pools["2/class"] == pools["4/class"]  # one pool per (seed, repeat)
    assert len({d.key for d in grid.distills} | {c.key for c in grid.cells}) == grid.size


@pytest.fixture(scope="module")
def finished(tmp_path_factory, write_config) -> Path:
    """The grid run once through the CLI (its report included)."""
    folder = tmp_path_factory.mktemp("finished")
    result = CliRunner().invoke(app, ["run", str(write_config(folder))])
    assert result.exit_code == 0, result.output
    assert "+ 4 distillations" in result.output
    return folder / "runs" / "tiny"


@pytest.mark.slow
def test_the_grid_writes_distill_rows_paired_with_scratch_and_reported(finished):
    records = read_results(finished / "results.jsonl")
    assert len(records) == 8 + 4
    students = [r for r in records if r["method"].endswith("+distill")]
    assert {r["method"] for r in students} == {"scratch+distill", "simclr+distill"}
    by_cell = {r["cell"]: r for r in records}
    for r in students:
        teacher = by_cell[r["distill"]["teacher_cell"]]
        assert r["method"] == teacher["method"] + "+distill" and r["mode"] == "full"
        assert (r["split_hash"], r["seed"], r["budget"]) == (teacher["split_hash"],
                                                             teacher["seed"], teacher["budget"])
        assert r["n_test"] == teacher["n_test"] and r["distill"]["n_pool"] == 16
        assert r["predictions"]["rows"] == teacher["predictions"]["rows"]
        assert 0 <= r["distill"]["pool_agreement"] <= 1 and "roc_auc" in r["metrics"]
    assert not list((finished / "distill" / "teachers").iterdir())  # kept only until used
    paired = {(p.method, p.mode, p.budget.label): p
              for p in paired_comparison(load_results(finished), "roc_auc")}
    assert paired[("simclr+distill", "full", "4/class")].n_pairs == 1
    assert paired[("scratch+distill", "full", "2/class")].n_unpaired == 0
    report = (finished / "report.md").read_text()
    assert "| simclr+distill |" in report and "| scratch+distill |" in report
    assert "scratch+distill" in (finished / "results.csv").read_text()


def test_a_rerun_skips_finished_distillations(finished, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(groups, "distill", fail)
    monkeypatch.setattr(groups, "finetune", fail)
    run_benchmark(finished.parent.parent / "tiny.toml")  # nothing left to do
    assert len(read_results(finished / "results.jsonl")) == 12


@pytest.mark.slow
@pytest.mark.numerics
def test_a_crash_between_teacher_and_student_reruns_only_the_distillation(
        tmp_path, write_config, finished, monkeypatch):
    cfg = write_config(tmp_path, finetune={"save_models": "all"})  # not part of cell keys
    root = tmp_path / "runs" / "tiny"
    real_finetune, real_distill = groups.finetune, groups.distill

    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(groups, "distill", crash)
    with pytest.raises(RuntimeError, match="killed"):
        run_benchmark(cfg)
    before = read_results(root / "results.jsonl")
    assert [r["method"] for r in before] == ["scratch"] * 2  # frozen, then the full teacher
    assert list((root / "distill" / "teachers").iterdir())  # the teacher waits on disk
    finetuned = []

    def counting(run, **kwargs):
        finetuned.append((run.mode, len(run.train_rows), run.encoder))
        return real_finetune(run, **kwargs)

    monkeypatch.setattr(groups, "finetune", counting)
    monkeypatch.setattr(groups, "distill", real_distill)
    run_benchmark(cfg)
    after = read_results(root / "results.jsonl")
    assert len(after) == 12 and len(finetuned) == 12 - 4 - 2  # cells left, no teacher again
    assert ("full", 4, None) not in finetuned  # scratch's first full cell is not re-made
    assert len(list((root / "models").iterdir())) == 8  # a teacher's bundle is saved too
    reference = {r["cell"]: r["metrics"] for r in read_results(finished / "results.jsonl")}
    assert {r["cell"]: r["metrics"] for r in after} == reference


@pytest.mark.numerics
def test_a_lost_teacher_is_retrained_to_the_same_student(tmp_path, finished):
    """A student's row missing and its teacher's model gone: the teacher is finetuned again
    (same seed, same weights), not recorded twice, and the student comes out the same."""
    copy = tmp_path / "copy"
    shutil.copytree(finished.parent.parent, copy)
    cfg = copy / "tiny.toml"
    cfg.write_text(cfg.read_text().replace(str(finished.parent.parent), str(copy)))
    results = copy / "runs" / "tiny" / "results.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines()]
    lost = next(r for r in records if r["method"] == "simclr+distill")
    results.write_text("".join(json.dumps(r) + "\n" for r in records if r is not lost))
    run_benchmark(cfg)
    after = read_results(results)
    assert len(after) == 12 and after[-1]["cell"] == lost["cell"]
    assert after[-1]["metrics"] == lost["metrics"]


@pytest.mark.parametrize("changes, expected", [
    ({"distill": {"temprature": 2.0}}, "distill.temprature: unknown key. Did you mean "
                                       "'temperature'?"),
    ({"distill": {"methods": ["simclrr"]}}, "distill.methods[0]: unknown method 'simclrr'. "
                                            "Did you mean 'simclr'?"),
    ({"finetune": {"modes": ["frozen"]}}, "distill.modes: 'full' is not in finetune.modes"),
    ({"distill": {"student": {"name": "resnet10", "widen": 0.125}}},
     "distill.student.widen: unknown key"),
    ({"distill": {"init": "pretrained",
                  "student": {"name": "resnet10", "widen_factor": 0.125}}},
     "distill.init: 'pretrained' needs the teacher's backbone"),
])
def test_bad_distill_keys_are_one_line(tmp_path, write_config, changes, expected):
    for command in (["run"], ["run", "--dry-run"]):
        result = CliRunner().invoke(app, [*command, str(write_config(tmp_path, **changes))])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.output
    assert not (tmp_path / "runs" / "tiny" / "pretrain").exists()  # nothing ran


def test_the_dry_run_counts_the_distillations(tmp_path, write_config):
    result = CliRunner().invoke(app, ["run", "--dry-run", str(write_config(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "distillation: 4 students" in result.output


@pytest.mark.slow
def test_an_external_encoder_is_distilled_like_any_method(tmp_path, write_config, finished):
    encoder = next((finished / "pretrain").glob("simclr-*/encoder.pt"))
    cfg = write_config(tmp_path, pretrain={"external": [{"name": "ext", "path": str(encoder)}]},
                       finetune={"modes": ["full"], "n_per_class": [2]},
                       distill={"methods": ["ext"]})
    root = run_benchmark(cfg)
    records = read_results(root / "results.jsonl")
    assert sorted(r["method"] for r in records) == ["ext", "ext+distill", "scratch", "simclr"]
    student = next(r for r in records if r["method"] == "ext+distill")
    assert student["pretrain"]["external"] and student["split_hash"] == records[0]["split_hash"]
    write_report(root)
    assert "| ext+distill |" in (root / "report.md").read_text()


def test_with_a_predefined_test_split_the_pool_excludes_it(tmp_path, write_config):
    cfg = write_config(tmp_path, finetune={"test_from": {"column": "sex", "value": "F"},
                                           "test_fraction": None})
    config, grid = prepare(cfg)
    cohort = load_cohort(config)
    female = set(cohort.rows[cohort.in_test].tolist())
    assert grid.distills and len(female) == 16
    for d in grid.distills:
        assert set(d.run.test_rows) == female and not set(d.run.pool_rows) & female
        assert not set(d.run.pool_rows) & set(d.run.val_rows)
