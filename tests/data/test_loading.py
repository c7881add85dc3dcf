"""VolumeDataset, make_loader and BatchReader over a real store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssltk.data import BatchReader, VolumeDataset, epoch_batches, make_loader
from ssltk.errors import SsltkError
from ssltk.store import VolumeStore


@pytest.fixture(scope="module")
def store(tmp_path_factory, make_tiny_store):
    return make_tiny_store(tmp_path_factory.mktemp("data") / "tiny.h5", (1, 8, 8, 8), n=12)


def test_dataset_items_match_the_store(store):
    ds = VolumeDataset(store, rows=[3, 5], columns=["age", "diagnosis"])
    x, meta = ds[1]
    ref = VolumeStore.open(store)
    assert torch.equal(x, torch.from_numpy(ref[5]))
    assert meta["age"].dtype == torch.float32 and float(meta["age"]) == ref.meta["age"][5]
    assert int(meta["diagnosis"]) == ref.codes("diagnosis")[5]
    assert len(ds) == 2


def test_cache_serves_float16_copies(store):
    ds = VolumeDataset(store, cache=True)
    first = ds[0][0]
    assert 0 in ds._cached and ds._cached[0].dtype == np.float16
    torch.testing.assert_close(ds[0][0], first, atol=1e-3, rtol=0)
    assert not VolumeDataset(store, cache="auto", cache_bytes=10).cache


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_yields_whole_batches_in_a_deterministic_order(store, workers):
    ds = VolumeDataset(store, columns=["age"])
    batches = list(make_loader(ds, 4, seed=3, epoch=1, workers=workers))
    expected = epoch_batches(np.arange(12), 4, 3, 1, drop_last=False)
    ref = VolumeStore.open(store)
    assert len(batches) == 3
    for (x, meta), rows in zip(batches, expected):
        assert x.shape == (4, 1, 8, 8, 8)
        assert torch.equal(x, torch.from_numpy(np.stack([ref[r] for r in rows])))
        assert meta["age"].tolist() == pytest.approx(ref.meta["age"][rows].tolist())


def test_loader_batches_are_not_overwritten_by_the_next(store):
    loader = iter(make_loader(VolumeDataset(store), 4, shuffle=False))
    first = next(loader)[0]
    snapshot = first.clone()
    next(loader)
    assert torch.equal(first, snapshot)


def test_no_copy_loader_reuses_two_buffers(store):
    ds = VolumeDataset(store)
    ref = [x.clone() for x, _ in make_loader(ds, 4, seed=1)]
    fast = iter(make_loader(ds, 4, seed=1, copy=False))
    a, b, c = (next(fast)[0] for _ in range(3))
    assert torch.equal(b, ref[1]) and torch.equal(c, ref[2])
    assert a.data_ptr() == c.data_ptr() != b.data_ptr()  # a ring of two buffers
    with pytest.raises(ValueError, match="use workers=0"):
        make_loader(ds, 4, copy=False, workers=2)


def test_batch_reader_reuses_its_buffer(store):
    reader = BatchReader(store, ["sex"])
    a, meta = reader.read(np.array([0, 1]))
    ptr = a.data_ptr()
    b, _ = reader.read(np.array([2, 3]))
    assert b.data_ptr() == ptr and meta["sex"].dtype == torch.int64
    with pytest.raises(SsltkError, match="has no column 'bmi'"):
        BatchReader(store, ["bmi"])
