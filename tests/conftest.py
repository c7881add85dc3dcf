"""Fixtures shared by the whole suite. Sub-folders add their own conftest.py."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from hypothesis import settings

from ssltk.registry import Registry, _installed_registry, get_registry
from ssltk.store import ColumnSpec, StoreWriter


# CI draws the same property-test examples on every run (a red CI must be reproducible, not a
# new random example); a developer's run draws new ones (`--hypothesis-seed N` replays one).
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_addoption(parser):
    parser.addoption("--shuffle-seed", type=int, default=None, metavar="N",
                     help="run the tests in an order shuffled with seed N: a test that passes "
                          "only after another one leaks or depends on state")


def pytest_collection_modifyitems(config, items):
    seed = config.getoption("--shuffle-seed")
    if seed is not None:
        random.Random(seed).shuffle(items)


def pytest_report_header(config):
    seed = config.getoption("--shuffle-seed")
    return None if seed is None else f"test order shuffled with --shuffle-seed {seed}"


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The registry of every installed plugin (built-ins and any installed example plugin)."""
    return get_registry()


# At most the 2 cores CI has, and fewer when the environment asks (OMP_NUM_THREADS=1 on many
# clusters and CI runners). Child processes (kill -9 tests, spawned device workers) get the same
# count through the environment: a different thread count changes float reduction order, so a
# resumed run compared with an uninterrupted one must use the same count in both processes.
THREADS = max(1, min(2, torch.get_num_threads()))
os.environ["OMP_NUM_THREADS"] = str(THREADS)
os.environ["MKL_NUM_THREADS"] = str(THREADS)


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(THREADS)
    yield


def write_distribution(root, dist: str, module: str, code: str, entry_point: str | None = None,
                       version: str = "1.0"):
    """Write a real installed distribution (module + .dist-info) under ``root``.

    With ``root`` on ``sys.path``, ``importlib.metadata`` finds it exactly as it finds a
    pip-installed plugin.
    """
    (root / f"{module}.py").write_text(code)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[ssltk]\n{entry_point or module} = {module}\n")
    return root


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A folder on sys.path to install throwaway plugin distributions into.

    The installed-plugins registry that models validate against by default is built once per
    process: it is rebuilt on either side, so it sees the throwaway plugins, and later tests
    do not.
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    _installed_registry.cache_clear()
    yield tmp_path
    _installed_registry.cache_clear()


@pytest.fixture
def make_distribution():
    """:func:`write_distribution`, for tests that build throwaway plugins."""
    return write_distribution


COLUMNS = {
    "subject_id": ColumnSpec("id"),
    "session": ColumnSpec("id"),
    "age": ColumnSpec("continuous", unit="years"),
    "sex": ColumnSpec("categorical"),
    "diagnosis": ColumnSpec("categorical"),
}


def write_tiny_store(path, shape, n=16, seed=0):
    """A tiny store written with the public StoreWriter API (fast, no synth).

    ``n`` subjects, alternately CN and AD; AD volumes carry a dark band, so the task is learnable.
    """
    rng = np.random.default_rng(seed)
    spatial = shape[1:]
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in spatial], indexing="ij"))
    brain = (np.sqrt((grid ** 2).sum(0)) < 0.8).astype(np.float32)
    with StoreWriter.create(path, shape=shape, columns=COLUMNS, dtype="float32",
                            compression="none") as w:
        for i in range(n):
            dx = ["CN", "AD"][i % 2]
            vol = brain * (0.6 + 0.05 * rng.standard_normal(spatial)).astype(np.float32)
            if dx == "AD":
                vol *= 1 - 0.5 * (np.abs(grid[0]) < 0.25)
            age = 60.0 + 2.0 * i + (5.0 if dx == "AD" else 0.0)
            w.append(np.clip(vol, 0, 1)[None].repeat(shape[0], 0),
                     {"subject_id": f"sub-{i:02d}", "session": "ses-1", "age": age,
                      "sex": ["F", "M"][(i // 2) % 2], "diagnosis": dx})
    return path


@pytest.fixture(scope="session")
def make_tiny_store():
    """:func:`write_tiny_store`, for tests that need a small labelled store."""
    return write_tiny_store


@pytest.fixture(scope="session")
def lesion3d(tmp_path_factory):
    """A frozen-mode model bundle trained on a 3D NIfTI "lesion" cohort (tests/_lesion.py)."""
    from _lesion import build_3d

    return build_3d(tmp_path_factory.mktemp("lesion3d"))


@pytest.fixture(scope="session")
def lesion2d(tmp_path_factory):
    """A fully finetuned model bundle that detects a bright blob in 32 x 32 PNG slices."""
    from _lesion import build_2d

    return build_2d(tmp_path_factory.mktemp("lesion2d"))


BENCHMARK = {
    "name": "tiny",
    "output_dir": "runs",
    "seeds": [0],
    "devices": "cpu",
    "executor": "local",
    "data": {"target": "diagnosis", "classes": ["CN", "AD"]},
    "backbone": {"name": "resnet10", "widen_factor": 0.25, "norm": "group"},
    "pretrain": {"epochs": 1, "batch_size": 8,
                 "augmentations": [{"name": "flip", "p": 0.5}, {"name": "gaussian_noise", "p": 0.5}],
                 "objectives": [{"name": "simclr"}]},
    "finetune": {"modes": ["frozen"], "n_per_class": [2], "val_fraction": 0.25,
                 "test_fraction": 0.25, "baselines": ["random_init"]},
}
"""A tiny benchmark: one epoch of a quarter-width ResNet-10, a frozen probe at 2 per class.
Its only baseline is scratch, so the tests of other features count their own rows; pass
``finetune={"baselines": None}`` for the default (every baseline, tests/bench/test_baselines.py)."""


def toml_value(value) -> str:
    """A TOML literal (inline tables and arrays on one line) of a JSON-like value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, os.PathLike)):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_benchmark(path, store, **changes):
    """:data:`BENCHMARK` on ``store`` with ``changes`` (a table's keys are updated, None drops
    a key), written to ``path`` as TOML."""
    doc = {k: dict(v) if isinstance(v, dict) else v for k, v in BENCHMARK.items()}
    doc["data"] |= {"pretrain_store": store, "finetune_store": store}
    for key, value in changes.items():
        doc[key] = doc.get(key, {}) | value if isinstance(value, dict) else value
    lines = [f"{k} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for table, content in doc.items():
        if isinstance(content, dict):
            lines += ["", f"[{table}]"]
            lines += [f"{k} = {toml_value(v)}" for k, v in content.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def make_benchmark():
    """:func:`write_benchmark`, for tests that run (parts of) a benchmark."""
    return write_benchmark
