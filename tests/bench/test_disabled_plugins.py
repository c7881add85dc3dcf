"""``ssltk --disable-plugin X`` holds in every process a benchmark starts.

A throwaway plugin distribution records the id of every process that imports it. A disabled
plugin must be imported by none: not by the CLI, not by the dry-run plan, not by the spawned
device workers, not by the submitit jobs. A control shows that a worker process does discover
the plugin when it is not disabled, so the checks can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from typer.testing import CliRunner

from ssltk.bench.results import read_results
from ssltk.cli import app

SPY = """
import os
with open(os.environ["SSLTK_SPY_LOG"], "a") as f:
    f.write(f"{os.getpid()}\\n")
"""

@pytest.fixture(scope="module")
def store(tmp_path_factory, make_tiny_store):
    return make_tiny_store(tmp_path_factory.mktemp("spied") / "tiny.h5", (1, 16, 16, 16), n=32)


@pytest.fixture
def spy(plugin_path, monkeypatch, make_distribution):
    """Install the spy plugin for this process and its children; return its log file."""
    module = f"ssltk_spy_{uuid.uuid4().hex[:8]}"
    make_distribution(plugin_path, "ssltk-spy", module, SPY, entry_point="spy")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(plugin_path), *filter(None, [os.environ.get("PYTHONPATH")])]))
    log = plugin_path / "spy.log"
    monkeypatch.setenv("SSLTK_SPY_LOG", str(log))
    return log


def write_config(make_benchmark, tmp_path, store, devices="cpu", executor="local"):
    return make_benchmark(tmp_path / "spied.toml", store, name="spied",
                          output_dir=tmp_path / "runs", devices=devices, executor=executor)


@pytest.mark.slow
def test_a_worker_process_discovers_the_plugin_when_not_disabled(spy):
    subprocess.run([sys.executable, "-c", "from ssltk.registry import get_registry; "
                                          "get_registry()"], check=True)
    assert spy.exists() and len(spy.read_text().split()) == 1


def test_dry_run_plan_leaves_it_out(spy, store, tmp_path, make_benchmark):
    result = CliRunner().invoke(app, ["--disable-plugin", "spy", "run",
                                      str(write_config(make_benchmark, tmp_path, store)),
                                      "--dry-run"])
    assert result.exit_code == 0, result.output
    assert not spy.exists()


@pytest.mark.slow  # whole runs in worker processes; the dry run stays in the fast suite
@pytest.mark.parametrize("devices, executor", [(["cpu", "cpu"], "local"),
                                               ("cpu", "submitit_local")],
                         ids=["device-workers", "submitit"])
def test_every_worker_leaves_it_out(spy, store, tmp_path, make_benchmark, devices, executor):
    if executor == "submitit_local":
        pytest.importorskip("submitit")
    config = write_config(make_benchmark, tmp_path, store, devices, executor)
    result = CliRunner().invoke(app, ["--disable-plugin", "spy", "run", str(config),
                                      "--no-report"])
    assert result.exit_code == 0, result.output
    records = read_results(tmp_path / "runs" / "spied" / "results.jsonl")
    assert {r["method"] for r in records} == {"scratch", "simclr"}  # both groups ran
    assert not spy.exists(), f"imported by process(es) {spy.read_text().split()}"
