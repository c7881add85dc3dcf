"""The benchmark runner: grid, shared pretraining, resume after kill -9, errors, dry runs."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ssltk.bench.results import read_results
from ssltk.bench.runner import prepare, run_benchmark
from ssltk.cli import app

from _handshake import CHILD, Handshake

BENCHMARKS = sorted((Path(__file__).parents[2] / "benchmarks").glob("*.toml"))

TINY = {
    "seeds": [0, 1],
    "pretrain": {"objectives": [
        {"name": "simclr"},
        {"name": "yaware", "anchor": {"name": "rbf", "columns": ["age"], "sigma": 5.0}}]},
    "finetune": {"n_per_class": [2, 4], "baselines": None},
}
"""The tiny benchmark of tests/conftest.py with two objectives, two seeds, two budgets and
every baseline (so a killed run is resumed in the baselines' cells too)."""


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, make_tiny_store):
    return make_tiny_store(tmp_path_factory.mktemp("bench") / "tiny.h5", (1, 16, 16, 16), n=32)


@pytest.fixture(scope="module")
def write_config(make_benchmark, tiny_store):
    """``write(folder, executor="local", **replace)``: the TINY benchmark in ``folder``, with
    each ``old`` string of the TOML replaced by ``new``."""

    def write(folder: Path, executor: str = "local", **replace) -> Path:
        path = make_benchmark(folder / "tiny.toml", tiny_store, output_dir=folder / "runs",
                              executor=executor, **TINY)
        text = path.read_text()
        for old, new in replace.items():
            assert old in text, old
            text = text.replace(old, new)
        path.write_text(text)
        return path

    return write


def metrics_by_cell(root: Path) -> dict[str, dict]:
    return {r["cell"]: r["metrics"] for r in read_results(root / "results.jsonl")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, write_config) -> dict[str, dict]:
    """Metrics per cell of the TINY grid run in one go (what an interrupted run must equal)."""
    return metrics_by_cell(run_benchmark(write_config(tmp_path_factory.mktemp("reference"))))


def test_grid_shares_pretraining_and_pairs_methods_on_identical_splits(tmp_path, write_config):
    config, grid = prepare(write_config(tmp_path))
    # 2 objectives x 2 seeds pretraining runs; (2 + scratch + random_init_bn + raw_input) x 2
    # seeds x 2 budgets cells
    assert len(grid.pretrain_jobs) == 4 and len(grid.cells) == 20
    assert len({c.key for c in grid.cells}) == 20
    by_split = {}
    for cell in grid.cells:
        by_split.setdefault((cell.seed, cell.budget.label), set()).add(cell.split_hash)
    assert all(len(hashes) == 1 for hashes in by_split.values())  # every method, same split
    small, large = (set(c.run.train_rows) for c in grid.cells
                    if c.method == "scratch" and c.seed == 0)
    assert small < large  # budgets nest
    for cell in grid.cells:
        sides = [set(cell.run.train_rows), set(cell.run.val_rows), set(cell.run.test_rows)]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])


@pytest.mark.slow
def test_run_writes_results_report_and_one_pretraining_per_combination(tmp_path, write_config):
    cfg = write_config(tmp_path)
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 0, result.output
    root = tmp_path / "runs" / "tiny"
    records = read_results(root / "results.jsonl")
    assert len(records) == 20
    assert {r["method"] for r in records} == {"scratch", "random_init_bn", "raw_input",
                                              "simclr", "yaware"}
    pretrained = [p for p in (root / "pretrain").iterdir()
                  if not p.name.startswith("random_init_bn-")]  # its encoders: one per seed
    assert len(pretrained) == 4  # not one per cell
    rec = records[0]
    assert rec["config_hash"] and rec["split_hash"] and rec["versions"]["torch"]
    assert rec["numerics"]["device"] == "cpu" and rec["numerics"]["device_name"]
    assert rec["numerics"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert rec["numerics"]["threads"] == torch.get_num_threads()
    assert (root / "report.md").exists() and (root / "results.csv").exists()
    assert list((root / "figures").glob("*.png"))
    assert "scratch" in result.output  # the summary table
    again = CliRunner().invoke(app, ["run", str(cfg), "--no-report"])
    assert "20 cells (20 already done)" in again.output


KILLABLE = CHILD + textwrap.dedent("""
    import os, sys
    from ssltk.bench import groups, runner
    finetune, calls = groups.finetune, [0]
    hold_at = int(os.environ["SSLTK_TEST_HOLD_AT"])
    def held_finetune(*args, **kw):  # cells 0 .. hold_at - 1 are in results.jsonl now
        if calls[0] == hold_at:
            hold_here()
        calls[0] += 1
        return finetune(*args, **kw)
    groups.finetune = held_finetune
    if sys.argv[2:] == ["--cli"]:  # the command, with its Ctrl-C handling
        from ssltk.cli import app
        app(["run", sys.argv[1], "--no-report"], prog_name="ssltk")
    else:
        runner.run_benchmark(sys.argv[1])
""")


def _start_held(handshake: Handshake, cfg: Path, hold_at: int, *extra: str, **kw):
    """``ssltk run cfg`` in a child that stops before its cell ``hold_at`` (after ``hold_at``
    results are written) and waits there for the test's signal."""
    return handshake.popen([sys.executable, "-c", KILLABLE, str(cfg), *extra],
                           env=os.environ | {"SSLTK_TEST_HOLD_AT": str(hold_at)}, **kw)


@pytest.mark.slow  # the next three: child processes and a whole grid again (uninterrupted)
@pytest.mark.numerics
def test_kill_9_mid_grid_then_rerun_equals_an_uninterrupted_run(tmp_path, write_config,
                                                                uninterrupted):
    (tmp_path / "a").mkdir()
    killed_cfg = write_config(tmp_path / "a")
    results = tmp_path / "a" / "runs" / "tiny" / "results.jsonl"
    handshake = Handshake()
    proc = _start_held(handshake, killed_cfg, 5)
    try:
        handshake.wait(proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {r["cell"]: r["created"] for r in read_results(results)}
    assert len(before) == 5
    run_benchmark(killed_cfg)
    after = read_results(results)
    assert len(after) == 20
    assert all(r["created"] == before[r["cell"]] for r in after if r["cell"] in before)
    assert metrics_by_cell(results.parent) == uninterrupted


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_rerun_completes_exactly(
        tmp_path, write_config, uninterrupted):
    cfg = write_config(tmp_path)
    root = tmp_path / "runs" / "tiny"
    limit = 64_000  # results lines and histories fit; a pretraining checkpoint does not

    def small_disk() -> None:  # in the child: write() past the limit fails with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    failed = subprocess.run([sys.executable, "-m", "ssltk", "run", str(cfg), "--no-report"],
                            capture_output=True, text=True, timeout=300, preexec_fn=small_disk)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot write checkpoint "), lines
    assert "File too large; free disk space and run again to resume" in lines[0]
    assert not list(root.rglob(".*.tmp"))  # no half-written checkpoint left behind
    kept = read_results(root / "results.jsonl")  # what finished before is intact
    run_benchmark(cfg)  # space is back
    after = {r["cell"]: r for r in read_results(root / "results.jsonl")}
    assert all(after[r["cell"]]["created"] == r["created"] for r in kept)
    assert metrics_by_cell(root) == uninterrupted


@pytest.mark.slow
@pytest.mark.numerics
def test_a_second_run_is_refused_then_ctrl_c_stops_and_the_resume_is_exact(
        tmp_path, write_config, uninterrupted):
    cfg = write_config(tmp_path)
    root = tmp_path / "runs" / "tiny"
    handshake = Handshake()
    first = _start_held(handshake, cfg, 3, "--cli", stderr=subprocess.PIPE, text=True)
    handshake.wait(first)  # 3 cells written; it holds the run lock and waits for Ctrl-C
    # the same benchmark from another terminal (or a Slurm job on the same filesystem)
    second = subprocess.run([sys.executable, "-m", "ssltk", "run", str(cfg)],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 1, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert f"is being run by pid {first.pid} on host {socket.gethostname()}" in lines[0]
    assert first.poll() is None  # the first run goes on, untouched
    first.send_signal(signal.SIGINT)  # Ctrl-C
    assert first.wait(timeout=60) == 130
    lines = first.stderr.read().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Interrupted:"), lines
    assert lines[0].endswith(f"resume with: ssltk run {cfg}")
    assert not (root / ".run.lock").exists()
    before = {r["cell"]: r["created"] for r in read_results(root / "results.jsonl")}
    assert len(before) == 3
    run_benchmark(cfg)
    after = read_results(root / "results.jsonl")
    assert len(after) == 20 and all(r["created"] == before[r["cell"]] for r in after
                                    if r["cell"] in before)
    assert metrics_by_cell(root) == uninterrupted


@pytest.mark.parametrize("old, new, expected", [
    ('name = "simclr"', 'name = "simclrr"',
     "pretrain.objectives[0].name: unknown objective 'simclrr'. Did you mean 'simclr'?"),
    ('target = "diagnosis"', 'target = "dx"', "data.target: store"),
    ('columns = ["age"]', 'columns = ["bmi"]', "pretrain.objectives[1].anchor: store"),
    # columns the objectives report themselves (required_columns), not read from their keys
    ('anchor = {name = "rbf", columns = ["age"], sigma = 5.0}', 'column = "bmi"',
     "pretrain.objectives[1]: store"),
    ('{name = "simclr"}', '{name = "multitask", tasks = [{column = "bmi", kind = "regression"}]}',
     "pretrain.objectives[0]: store"),
    ("n_per_class = [2, 4]", "n_per_class = [2, 40]",
     "finetune.n_per_class[1]: 40 per class, but class 'CN' has only"),
    ('devices = "cpu"', 'devices = ["cuda:7"]', "devices[0]: device 'cuda:7' does not exist"),
    ('classes = ["CN", "AD"]', 'classes = ["CN", "FTD"]', "class 'FTD' of data.classes"),
])
def test_bad_input_is_one_line_before_anything_runs(tmp_path, write_config, old, new, expected):
    cfg = write_config(tmp_path, **{old: new})
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.output
    assert not (tmp_path / "runs" / "tiny" / "pretrain").exists()


def test_missing_store_names_the_command_that_builds_it(tmp_path, tiny_store, write_config):
    cfg = write_config(tmp_path)
    text = cfg.read_text().replace(f'pretrain_store = "{tiny_store}"',
                                   'pretrain_store = "nope.h5"')
    cfg.write_text(text.replace("[backbone]", 'ingest_hints.pretrain = "ssltk ingest nifti X '
                                              '--out nope.h5"\n\n[backbone]'))
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code != 0
    assert ("data.pretrain_store: store nope.h5 does not exist; build it with: ssltk ingest "
            "nifti X --out nope.h5") in result.output


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_dry_run_of_every_shipped_benchmark(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the shipped stores do not exist here: nothing is built
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "pretraining runs" in result.output and "cells" in result.output
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_submitit_local_executor(tmp_path, write_config):
    pytest.importorskip("submitit")
    cfg = write_config(tmp_path, executor="submitit_local",
                       **{"seeds = [0, 1]": "seeds = [0]", "n_per_class = [2, 4]":
                          "n_per_class = [2]"})
    root = run_benchmark(cfg)
    records = read_results(root / "results.jsonl")
    assert len(records) == 5 and {r["method"] for r in records} == {
        "scratch", "random_init_bn", "raw_input", "simclr", "yaware"}
    assert list((root / "submitit").glob("*_result.pkl"))
