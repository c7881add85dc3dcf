"""Fixtures shared by the whole suite. Sub-folders add their own conftest.py."""

from __future__ import annotations

import pytest
import torch

from ssltk.registry import Registry, get_registry


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The registry of every installed plugin (built-ins and any installed example plugin)."""
    return get_registry()


@pytest.fixture(autouse=True)
def _few_threads():
    # Keep every test on the 2 cores CI has, and deterministic.
    torch.set_num_threads(2)
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
    """A folder on sys.path to install throwaway plugin distributions into."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.fixture
def make_distribution():
    """:func:`write_distribution`, for tests that build throwaway plugins."""
    return write_distribution
