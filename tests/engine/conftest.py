"""Tiny stores for engine tests, written with the public StoreWriter API (fast, no synth)."""

from __future__ import annotations

import numpy as np
import pytest

from ssltk.store import ColumnSpec, StoreWriter

COLUMNS = {
    "subject_id": ColumnSpec("id"),
    "session": ColumnSpec("id"),
    "age": ColumnSpec("continuous", unit="years"),
    "sex": ColumnSpec("categorical"),
    "diagnosis": ColumnSpec("categorical"),
}


def write_tiny_store(path, shape, n=16, seed=0):
    """``n`` subjects; AD volumes carry a dark blob, so the task is learnable."""
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
def store3d(tmp_path_factory):
    return write_tiny_store(tmp_path_factory.mktemp("stores") / "tiny3d.h5", (1, 16, 16, 16))


@pytest.fixture(scope="session")
def store2d(tmp_path_factory):
    return write_tiny_store(tmp_path_factory.mktemp("stores") / "tiny2d.h5", (1, 32, 32))
