"""``ssltk ingest`` and ``ssltk store`` through the real typer app."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from ssltk.cli import app
from ssltk.store import VolumeStore


@pytest.fixture
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_ingest_nifti_info_verify(cli, flat_dir, tmp_path):
    out = tmp_path / "t1.h5"
    res = cli("ingest", "nifti", flat_dir, "--out", out, "--participants",
              tmp_path / "participants.csv", "--shape", 12, 20, 16, "--spacing", 1.5,
              "--compression", "lz4")
    assert res.exit_code == 0, res.output
    assert "4 row(s) written" in res.output
    store = VolumeStore.open(out)
    assert store.shape == (1, 12, 20, 16) and store.spacing == (1.5, 1.5, 1.5)
    res = cli("store", "info", out, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["rows"] == 4 and info["shape"] == [1, 12, 20, 16]
    assert info["dtype"] == "uint8" and info["compression"] == "lz4" and info["checksums"]
    assert info["encoding"]["requested"] == "auto" and info["encoding"]["bound"] == 1 / 128
    assert 0 <= info["max_abs_error"] <= 1 / 128 and info["writer"] is None
    assert info["size_bytes"] == out.stat().st_size
    age = info["columns"]["age"]
    assert (age["kind"], age["count"], age["missing"]) == ("continuous", 3, 1)
    assert age["mean"] == pytest.approx((60 + 61 + 75.5) / 3) and age["max"] == 75.5
    assert info["columns"]["sex"]["counts"] == {"F": 2, "M": 2}
    assert info["preprocessing"]["spacing"] == 1.5
    table = cli("store", "info", out)
    assert table.exit_code == 0 and "F: 2, M: 2" in table.output and "lz4" in table.output
    res = cli("store", "verify", out, "--rehash")
    assert res.exit_code == 0, res.output
    assert "4 rows verified" in res.output


def test_rerun_resumes(cli, flat_dir, tmp_path):
    out = tmp_path / "t1.h5"
    assert cli("ingest", "nifti", flat_dir, "--out", out).exit_code == 0
    res = cli("ingest", "nifti", flat_dir, "--out", out)
    assert res.exit_code == 0 and "0 row(s) written, 4 already there" in res.output
    res = cli("ingest", "nifti", flat_dir, "--out", out, "--normalize", "zscore")
    assert res.exit_code != 0
    assert res.output.startswith("Error: ") and "--overwrite" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_errors_are_one_line(cli, flat_dir, tmp_path):
    (flat_dir / "zz.nii.gz").write_bytes(b"garbage")
    res = cli("ingest", "nifti", flat_dir, "--out", tmp_path / "o.h5")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "zz.nii.gz" in lines[0]
    res = cli("ingest", "nifti", flat_dir, "--out", tmp_path / "o.h5", "--on-error", "skip")
    assert res.exit_code == 0 and "1 skipped" in res.output
    skipped = (tmp_path / "o.h5.skipped.tsv").read_text().splitlines()
    assert len(skipped) == 2 and skipped[1].split("\t")[0] == str(flat_dir / "zz.nii.gz")
    res = cli("ingest", "nifti", flat_dir, "--out", tmp_path / "p.h5", "--normalize", "minmax")
    assert res.exit_code == 2  # typer's own usage error for a bad choice


def test_ingest_images_cli(cli, tmp_path):
    from PIL import Image

    for cls in ("AD", "CN"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        Image.fromarray(np.full((9, 9), 200 if cls == "AD" else 50, np.uint8)).save(
            tmp_path / "img" / cls / "a_1.png")
    res = cli("ingest", "images", tmp_path / "img", "--out", tmp_path / "i.h5", "--size", 4, 6)
    assert res.exit_code == 0, res.output
    store = VolumeStore.open(tmp_path / "i.h5")
    assert store.shape == (1, 4, 6) and store.meta["label"].tolist() == ["AD", "CN"]
    np.testing.assert_allclose(store[0], 200 / 255, atol=1e-3)


def test_verify_catches_corruption(cli, small_store):
    assert cli("store", "verify", small_store).exit_code == 0
    with h5py.File(small_store, "r+") as f:
        f["volumes"][2] = np.full((1, 8, 8, 8), np.nan, np.float16)
        f["meta/session"][5] = b"0"  # row 5 now duplicates s2 session 0
        f["sources/sha256"][1] = b"nothex"
    res = cli("store", "verify", small_store)
    assert res.exit_code == 1
    out = res.output
    assert "row 2 (subject 's1' session '0'): 512 NaN/Inf values" in out
    assert "subject 's2' session '0' appears in 2 rows" in out
    assert "row 1: source /data/s1.nii.gz has no valid sha256" in out


def test_verify_catches_short_datasets(cli, small_store):
    with h5py.File(small_store, "r+") as f:
        f["meta/age"].resize((3,))
    res = cli("store", "verify", small_store)
    assert res.exit_code == 1 and "/meta/age has 3 rows, fewer than the 6 committed" in res.output


def test_store_commands_on_non_store(cli, tmp_path):
    (tmp_path / "x.h5").write_bytes(b"nope")
    res = cli("store", "info", tmp_path / "x.h5")
    assert res.exit_code == 1 and res.output.startswith("Error: ")
    assert "x.h5 is a 4-byte file that is not HDF5" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = cli("store", "verify", tmp_path / "x.h5")
    assert res.exit_code == 1 and "x.h5 is a 4-byte file that is not HDF5" in res.output
