"""StoreWriter / VolumeStore: the API the rest of ssltk builds on."""

from __future__ import annotations

import multiprocessing
import pickle

import h5py
import numpy as np
import pytest

from ssltk.store import ColumnSpec, StoreError, StoreWriter, VolumeStore
from ssltk.store.schema import FORMAT


def test_round_trip_volumes_and_meta(small_store):
    store = VolumeStore.open(small_store)
    assert len(store) == 6
    assert store.shape == (1, 8, 8, 8) and store.spatial_dims == 3
    for i in range(6):
        vol = store[i]
        assert vol.dtype == np.float32 and vol.shape == (1, 8, 8, 8)
        np.testing.assert_allclose(vol.ravel()[:-1], i / 10, atol=1e-3)
        assert vol[0, -1, -1, -1] == 1.0
    np.testing.assert_allclose(store[-1].ravel()[:-1], 0.5, atol=1e-3)
    assert store.meta["subject_id"].tolist() == ["s0", "s0", "s1", "s1", "s2", "s2"]
    assert store.meta["session"].tolist() == ["0", "1"] * 3
    age = store.meta["age"]
    assert age.dtype == np.float64 and np.isnan(age[2])
    np.testing.assert_array_equal(age[[0, 1, 3]], [60.0, 61.0, 63.0])
    assert store.meta["sex"].tolist() == ["F", "M", "", "F", "M", "F"]
    with pytest.raises(IndexError):
        store[6]


def test_codes_categories_select(small_store):
    store = VolumeStore.open(small_store)
    assert store.categories("sex") == ["F", "M"]
    np.testing.assert_array_equal(store.codes("sex"), [0, 1, -1, 0, 1, 0])
    assert store.codes("sex").dtype == np.int64
    assert store.categories("diagnosis") == ["AD", "CN", "MCI"]
    np.testing.assert_array_equal(store.codes("diagnosis"), [1, 0, 2, 0, 1, 1])
    np.testing.assert_array_equal(store.select(diagnosis=["CN", "AD"]), [0, 1, 3, 4, 5])
    np.testing.assert_array_equal(store.select(diagnosis="CN", session="0"), [0, 4])
    np.testing.assert_array_equal(store.select(age=[61, 63]), [1, 3])
    with pytest.raises(StoreError, match="Did you mean 'diagnosis'"):
        store.select(diagnosys="CN")
    with pytest.raises(StoreError, match="continuous"):
        store.categories("age")


def test_columns_attrs_sources(small_store, columns):
    store = VolumeStore.open(small_store)
    assert store.columns["age"] == ColumnSpec("continuous", unit="years")
    assert store.columns["diagnosis"].description == "clinical label"
    assert list(store.columns) == ["subject_id", *columns]
    attrs = store.attrs
    assert attrs["format"] == FORMAT and attrs["version"] == 2
    assert attrs["shape"] == (1, 8, 8, 8) and attrs["spacing"] == (2.0, 2.0, 2.0)
    assert attrs["preprocessing"] == {"normalize": "percentile"}
    assert attrs["orientation"] == "RAS" and attrs["ssltk_version"] and attrs["created"]
    assert store.sources[3] == {"path": "/data/s3.nii.gz", "sha256": f"{3:064x}"}
    with h5py.File(small_store, "r") as f:  # the documented layout, read without ssltk
        assert f["volumes"].shape == (6, 1, 8, 8, 8) and f["volumes"].dtype == np.float16
        assert f["volumes"].chunks == (1, 1, 8, 8, 8)
        assert f["meta/age"].attrs["kind"] == b"continuous"
        assert int(f.attrs["committed"]) == 6


def test_read_into_reuses_buffer(small_store):
    store = VolumeStore.open(small_store)
    out = np.zeros((3, 1, 8, 8, 8), dtype=np.float32)
    got = store.read_into([4, 0, 2], out)
    assert got is out
    np.testing.assert_allclose(out[:, 0, 0, 0, 0], [0.4, 0.0, 0.2], atol=1e-3)
    half = np.zeros((2, 1, 8, 8, 8), dtype=np.float16)
    store.read_into([1, 5], half)
    np.testing.assert_allclose(half[:, 0, 1, 2, 3], [0.1, 0.5], atol=1e-3)
    with pytest.raises(ValueError, match="shape"):
        store.read_into([0], np.zeros((2, 1, 8, 8, 8), dtype=np.float32))


def test_float32_store_is_exact(tmp_path):
    vol = np.random.default_rng(0).normal(size=(2, 6, 7, 5)).astype(np.float32) * 1e6
    with StoreWriter.create(tmp_path / "f32.h5", (2, 6, 7, 5), {}, dtype="float32",
                            compression="gzip") as w:
        w.append(vol, {"subject_id": "a"})
    store = VolumeStore.open(tmp_path / "f32.h5")
    np.testing.assert_array_equal(store[0], vol)
    assert store.attrs["compression"] == "gzip" and store.attrs["spacing"] is None


@pytest.mark.parametrize("compression", ["lz4", "none"])
def test_2d_store_and_codecs(tmp_path, compression):
    path = tmp_path / "2d.h5"
    with StoreWriter.create(path, (1, 12, 10), {"label": ColumnSpec("categorical")},
                            compression=compression) as w:
        for i in range(3):
            w.append(np.full((1, 12, 10), i, np.float32), {"subject_id": str(i), "label": i})
    store = VolumeStore.open(path)
    assert store.spatial_dims == 2 and store[2].shape == (1, 12, 10)
    assert store.meta["label"].tolist() == ["0", "1", "2"]
    assert store[2][0, 5, 5] == 2.0


def _read_sum(store: VolumeStore) -> float:
    return float(store[1].sum())


def test_pickle_and_worker_processes(small_store):
    store = VolumeStore.open(small_store)
    expected = float(store[1].sum())  # the parent now holds an open handle
    clone = pickle.loads(pickle.dumps(store))
    assert clone._h5 is None and len(clone) == 6
    for method in ("fork", "spawn"):
        with multiprocessing.get_context(method).Pool(1) as pool:
            assert pool.apply(_read_sum, (store,)) == pytest.approx(expected)


def test_writer_rejects_bad_rows(tmp_path, columns):
    with StoreWriter.create(tmp_path / "s.h5", (1, 4, 4, 4), columns) as w:
        ok = np.zeros((1, 4, 4, 4), np.float32)
        w.append(ok, {"subject_id": "a", "session": "1"})
        with pytest.raises(StoreError, match="float16"):
            w.append(ok + 7e4, {"subject_id": "b"})
        bad = ok.copy()
        bad[0, 1, 1, 1] = np.nan
        with pytest.raises(StoreError, match="NaN or Inf"):
            w.append(bad, {"subject_id": "b"})
        with pytest.raises(StoreError, match="shape"):
            w.append(np.zeros((4, 4, 4), np.float32), {"subject_id": "b"})
        with pytest.raises(StoreError, match="duplicate"):
            w.append(ok, {"subject_id": "a", "session": "1"})
        with pytest.raises(StoreError, match="unknown column"):
            w.append(ok, {"subject_id": "b", "weight": 3})
        with pytest.raises(StoreError, match="continuous"):
            w.append(ok, {"subject_id": "b", "age": "old"})
        with pytest.raises(StoreError, match="subject_id"):
            w.append(ok, {"session": "2"})
        w.append(ok, {"subject_id": "a", "session": "2"})  # same subject, other session: fine
    assert len(VolumeStore.open(tmp_path / "s.h5")) == 2


def test_create_refuses_existing_and_bad_args(small_store, tmp_path):
    with pytest.raises(StoreError, match="already exists"):
        StoreWriter.create(small_store, (1, 8, 8, 8), {})
    with pytest.raises(StoreError, match="dtype"):
        StoreWriter.create(tmp_path / "x.h5", (1, 8, 8, 8), {}, dtype="int8")
    with pytest.raises(StoreError, match="compression"):
        StoreWriter.create(tmp_path / "x.h5", (1, 8, 8, 8), {}, compression="zip")
    with pytest.raises(StoreError, match="kind"):
        ColumnSpec("ordinal")
    StoreWriter.create(small_store, (1, 2, 2, 2), {}, overwrite=True).close()
    assert VolumeStore.open(small_store).shape == (1, 2, 2, 2)


def test_commits_every_flush_every_rows(tmp_path):
    path = tmp_path / "s.h5"
    w = StoreWriter.create(path, (1, 4, 4, 4), {}, flush_every=3)
    for i in range(5):
        w.append(np.zeros((1, 4, 4, 4), np.float32), {"subject_id": str(i)})
    assert w.committed == 3 and len(w) == 5
    w._h5.close()  # simulate a crash: the buffered rows 3 and 4 are lost
    resumed = StoreWriter.resume(path)
    assert resumed.committed == 3 and resumed.keys() == {("0", ""), ("1", ""), ("2", "")}
    resumed.append(np.ones((1, 4, 4, 4), np.float32), {"subject_id": "3"})
    resumed.close()
    store = VolumeStore.open(path)
    assert store.meta["subject_id"].tolist() == ["0", "1", "2", "3"]
    assert store[3].max() == 1.0


def test_resume_drops_uncommitted_rows(small_store):
    with h5py.File(small_store, "r+") as f:  # a batch written but never committed
        f.attrs["committed"] = 4
    assert len(VolumeStore.open(small_store)) == 4
    with StoreWriter.resume(small_store) as w:
        assert w.committed == 4 and ("s2", "0") not in w.keys()
        w.append(np.full((1, 8, 8, 8), 0.9, np.float32), {"subject_id": "s2", "session": "0"})
    store = VolumeStore.open(small_store)
    assert len(store) == 5 and store.meta["subject_id"][-1] == "s2"
    np.testing.assert_allclose(store[4], 0.9, atol=1e-3)
    assert np.isnan(store.meta["age"][4]) and store.sources[4] == {"path": "", "sha256": ""}


def test_open_errors(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        VolumeStore.open(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not an ssltk volume store"):
        VolumeStore.open(tmp_path / "other.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(StoreError, match="junk.h5 is a 15-byte file that is not HDF5"):
        VolumeStore.open(tmp_path / "junk.h5")
