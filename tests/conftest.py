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
