"""Tiny stores for engine tests (see ``write_tiny_store`` in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def store3d(tmp_path_factory, make_tiny_store):
    return make_tiny_store(tmp_path_factory.mktemp("stores") / "tiny3d.h5", (1, 16, 16, 16))


@pytest.fixture(scope="session")
def store2d(tmp_path_factory, make_tiny_store):
    return make_tiny_store(tmp_path_factory.mktemp("stores") / "tiny2d.h5", (1, 32, 32))
