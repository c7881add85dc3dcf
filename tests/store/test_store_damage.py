"""Damaged stores are detected, never silently read: flipped bytes in a volume's chunk,
truncated files, non-HDF5 files, and old stores without checksums."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from ssltk.cli import app
from ssltk.store import StoreError, StoreWriter, VolumeStore
from ssltk.store.damage import chunk_checksum_ok
from ssltk.store.verify import verify_store


@pytest.fixture
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def ingested(cli, flat_dir, tmp_path) -> Path:
    """A finished store made by ``ssltk ingest nifti`` from four real NIfTI files."""
    out = tmp_path / "t1.h5"
    res = cli("ingest", "nifti", flat_dir, "--out", out, "--participants",
              tmp_path / "participants.csv")
    assert res.exit_code == 0, res.output
    return out


def flip_bytes_in_chunk(path: Path, row: int, count: int = 8) -> None:
    """XOR ``count`` bytes in the middle of row ``row``'s chunk, found with h5py's low-level
    chunk index: what bit rot or a bad sector does to one volume."""
    with h5py.File(path, "r") as f:
        ds = f["volumes"]
        info = ds.id.get_chunk_info_by_coord((row,) + (0,) * (ds.ndim - 1))
    start = info.byte_offset + info.size // 2
    with open(path, "r+b") as fh:
        fh.seek(start)
        data = fh.read(count)
        fh.seek(start)
        fh.write(bytes(b ^ 0x5A for b in data))


def _one_error_line(output: str, *needles: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: ") and "Traceback" not in output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_checksums_match_hdf5_on_intact_chunks(ingested, tmp_path):
    with h5py.File(ingested) as f:
        assert f["volumes"].fletcher32
        assert all(chunk_checksum_ok(f["volumes"], i) for i in range(4))
    odd = tmp_path / "odd.h5"  # odd byte counts, float16, no compression
    with StoreWriter.create(odd, (1, 3, 3, 3), {}, dtype="float16", compression="none") as w:
        for i in range(3):
            w.append(np.random.default_rng(i).random((1, 3, 3, 3)), {"subject_id": f"o{i}"})
    with h5py.File(odd) as f:
        assert all(chunk_checksum_ok(f["volumes"], i) for i in range(3))


def test_flipped_bytes_are_caught_by_verify_and_on_read(ingested, cli):
    before = VolumeStore.open(ingested)
    intact = {i: before[i] for i in (0, 1, 3)}
    before.close()
    flip_bytes_in_chunk(ingested, row=2)
    # verify, as a real process: exit 1, the row and its subject named, no traceback
    proc = subprocess.run([sys.executable, "-m", "ssltk", "store", "verify", str(ingested)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "row 2 (subject 's3'): checksum mismatch" in proc.stdout
    assert "row 0" not in proc.stdout and "row 1" not in proc.stdout
    assert "Traceback" not in proc.stderr
    # reading the row: one line naming the store, the row, the subject and the fix
    store = VolumeStore.open(ingested)
    with pytest.raises(StoreError) as err:
        store[2]
    msg = str(err.value)
    assert "\n" not in msg and str(ingested) in msg and "row 2 (subject 's3')" in msg
    assert "fails its checksum" in msg and "--overwrite" in msg
    with pytest.raises(StoreError, match="row 2"):
        store.read_into([0, 2], np.empty((2, *store.shape), np.float32))
    for i, vol in intact.items():  # the other rows are untouched and still read
        np.testing.assert_array_equal(store[i], vol)


def test_damaged_metadata_is_one_line_at_open(ingested):
    with h5py.File(ingested) as f:
        info = f["meta/subject_id"].id.get_chunk_info(0)
    with open(ingested, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(b"\x00\xff" * 4)
    with pytest.raises(StoreError, match="is damaged or not a complete ssltk store"):
        VolumeStore.open(ingested)
    assert not verify_store(ingested).ok


@pytest.mark.parametrize("damage", ["truncated", "not_hdf5", "empty"])
def test_every_command_gives_one_line(damage, ingested, cli, flat_dir, tmp_path):
    if damage == "truncated":  # as a full disk or an interrupted copy leaves it
        with open(ingested, "r+b") as fh:
            fh.truncate(ingested.stat().st_size * 2 // 3)
        needle = "is truncated"
    elif damage == "not_hdf5":
        ingested.write_bytes(b"participant_id\tage\nsub-01\t70\n")
        needle = "not HDF5"
    else:
        ingested.write_bytes(b"")
        needle = "an empty file"
    for args in (("store", "info", ingested), ("store", "verify", ingested),
                 ("ingest", "nifti", flat_dir, "--out", ingested)):
        res = cli(*args)
        assert res.exit_code == 1, (args, res.output)
        if args[1] == "verify":  # verify lists problems on stdout, then a summary line
            assert needle in res.output and "Traceback" not in res.output
        else:
            _one_error_line(res.output, str(ingested), needle)
    with pytest.raises(StoreError, match=needle) as err:
        VolumeStore.open(ingested)  # what the engine calls
    assert "\n" not in str(err.value)
    with pytest.raises(StoreError, match=needle):
        StoreWriter.resume(ingested)
    # the fix the message gives works
    res = cli("ingest", "nifti", flat_dir, "--out", ingested, "--overwrite")
    assert res.exit_code == 0 and "4 row(s) written" in res.output
    assert verify_store(ingested).ok


def _v1_store(path: Path) -> list[np.ndarray]:
    """A store as ssltk wrote them before format 2: float16, no checksums, no encoding."""
    import hdf5plugin

    vols = [np.full((1, 4, 4, 4), i / 8, np.float32) for i in range(3)]
    for vol in vols:
        vol[0, 0, 0, 0] = 1.0  # not constant: verify passes
    with h5py.File(path, "w", fs_strategy="none") as f:
        f.create_dataset("volumes", data=np.stack(vols).astype(np.float16),
                         maxshape=(None, 1, 4, 4, 4), chunks=(1, 1, 4, 4, 4),
                         **hdf5plugin.Blosc(cname="zstd", clevel=5, shuffle=1))
        small = {"maxshape": (None,), "chunks": (16,)}
        f.create_dataset("meta/subject_id", data=np.array([b"a", b"b", b"c"], "S255"), **small)
        f["meta/subject_id"].attrs["kind"] = np.bytes_(b"id")
        f.create_dataset("sources/path", data=np.array([b""] * 3, "S4096"), **small)
        f.create_dataset("sources/sha256", data=np.array([b""] * 3, "S64"), **small)
        for key, value in {"format": b"ssltk-volume-store", "dtype": b"float16",
                           "compression": b"zstd", "orientation": b"RAS",
                           "preprocessing": b"{}", "ssltk_version": b"0.1.0",
                           "created": b"2026-01-01T00:00:00+00:00",
                           "columns": b'{"subject_id": {"kind": "id", "unit": null, '
                                      b'"description": null}}'}.items():
            f.attrs[key] = np.bytes_(value)
        f.attrs["version"] = 1
        f.attrs["shape"] = np.array([1, 4, 4, 4])
        f.attrs["spatial_dims"] = 3
        f.attrs["committed"] = 3
    return vols


def test_old_store_without_checksums_still_opens(tmp_path, cli):
    path = tmp_path / "v1.h5"
    vols = _v1_store(path)
    store = VolumeStore.open(path)
    assert not store.checksums and store.encoding.dtype == "float16"
    for i, vol in enumerate(vols):
        np.testing.assert_allclose(store[i], vol, atol=1e-3)
    store.close()
    res = cli("store", "verify", path)
    assert res.exit_code == 0, res.output
    assert "note: no per-volume checksums" in res.output and "3 rows verified" in res.output
    info = cli("store", "info", path, "--json")
    assert info.exit_code == 0 and '"checksums": false' in info.output
    with StoreWriter.resume(path) as w:  # and it can still be appended to
        w.append(np.full((1, 4, 4, 4), 0.5, np.float32), {"subject_id": "d"})
    np.testing.assert_allclose(VolumeStore.open(path)[3], 0.5, atol=1e-3)


def test_unsupported_future_version(tmp_path):
    path = tmp_path / "v9.h5"
    _v1_store(path)
    with h5py.File(path, "r+") as f:
        f.attrs["version"] = 9
    with pytest.raises(StoreError, match="newer than this ssltk reads"):
        VolumeStore.open(path)


def test_copy_of_a_store_is_not_locked(ingested, tmp_path):
    """A store copied with its lock file (cp -r of a folder during an ingest) still opens."""
    shutil.copy(ingested, tmp_path / "copy.h5")
    (tmp_path / "copy.h5.lock").write_text("pid 1 on host elsewhere (since 2026-01-01)\n")
    with StoreWriter.resume(tmp_path / "copy.h5") as w:
        assert w.committed == 4
