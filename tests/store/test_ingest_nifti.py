"""``ingest_nifti``: real NIfTI round trip (MNI152 template), provenance, resume, bad inputs."""

from __future__ import annotations

import gzip
import hashlib
import math

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to

from ssltk.store import StoreError, VolumeStore
from ssltk.store.ingest_common import IngestError
from ssltk.store.ingest_nifti import NiftiOptions, discover_nifti, ingest_nifti
from ssltk.store.participants import read_participants


def _percentile01(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, [0.5, 99.5])
    return np.clip((x - lo) / (hi - lo), 0, 1)


def _centre(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Independent centre crop / zero pad (extra voxel after the centre, as MONAI does)."""
    out = np.zeros(shape, x.dtype)
    src, dst = [], []
    for n, m in zip(x.shape, shape):
        if n >= m:
            start = (n - m) // 2
            src.append(slice(start, start + m))
            dst.append(slice(0, m))
        else:
            start = (m - n) // 2
            src.append(slice(0, n))
            dst.append(slice(start, start + n))
    out[tuple(dst)] = x[tuple(src)]
    return out


def test_mni_round_trip_native_grid(mni_bids, tmp_path):
    out = tmp_path / "mni.h5"
    report = ingest_nifti(mni_bids, out, options=NiftiOptions(shape=(64, 72, 64), spacing=2.0))
    assert report.written == 3 and not report.skipped
    assert any("sub-03" in w for w in report.warnings)  # participants row without an image
    store = VolumeStore.open(out)
    assert store.shape == (1, 64, 72, 64) and store.spacing == (2.0, 2.0, 2.0)
    assert store.meta["subject_id"].tolist() == ["01", "01", "02"]
    assert store.meta["session"].tolist() == ["1", "2", ""]
    np.testing.assert_array_equal(store.meta["age"][:2], [70.5, 70.5])
    assert math.isnan(store.meta["age"][2]) and store.meta["sex"].tolist() == ["F", "F", "M"]
    assert store.columns["diagnosis"].kind == "categorical"
    for row, src in enumerate(store.sources):
        data = nib.load(src["path"]).get_fdata().astype(np.float32)
        expected = _centre(_percentile01(data), (64, 72, 64))
        # --dtype auto (default): uint8 codes, |error| <= 1/128 of each volume's range ([0, 1])
        np.testing.assert_allclose(store[row][0], expected, atol=1 / 128 + 1e-6)
        assert src["sha256"] == hashlib.sha256(open(src["path"], "rb").read()).hexdigest()
    assert store.attrs["preprocessing"]["normalize"] == "percentile"
    assert store.dtype == np.uint8 and store.attrs["encoding"]["requested"] == "auto"
    assert 0 < store.attrs["max_abs_error"] <= 1 / 128 + 1e-6


def test_mni_resampled_matches_nibabel(mni_bids, tmp_path):
    out = tmp_path / "mni4.h5"
    ingest_nifti(mni_bids, out, options=NiftiOptions(shape=(56, 56, 40), spacing=4.0),
                 pattern="sub-02/anat/*.nii", compression="lz4", dtype="float16")
    img = nib.load(mni_bids / "sub-02/anat/sub-02_T1w.nii")
    # 2 mm -> 4 mm keeping the first voxel centre: (n - 1) * 2 / 4 + 1 voxels per axis
    grid = tuple((n - 1) // 2 + 1 for n in img.shape)
    target = img.affine.copy()
    target[:3, :3] *= 2
    ref = resample_from_to(img, (grid, target), order=1).get_fdata().astype(np.float32)
    expected = _centre(_percentile01(ref), (56, 56, 40))
    store = VolumeStore.open(out)
    assert len(store) == 1 and store.meta["subject_id"][0] == "02"
    np.testing.assert_allclose(store[0][0], expected, atol=2e-3)


def test_zscore_float32_and_flat_folder(flat_dir, tmp_path):
    out = tmp_path / "z.h5"
    ingest_nifti(flat_dir, out, tmp_path / "participants.csv",
                 NiftiOptions(normalize="zscore"), dtype="float32", compression="none")
    store = VolumeStore.open(out)
    assert store.meta["subject_id"].tolist() == ["s1", "s2", "s3", "s4"]
    np.testing.assert_array_equal(store.meta["age"][[0, 1, 3]], [60, 61, 75.5])
    assert math.isnan(store.meta["age"][2])
    vol = store[0][0]
    mask = vol != 0
    assert vol.dtype == np.float32 and store.shape == (1, 16, 16, 16)
    assert abs(vol[mask].mean()) < 1e-4 and abs(vol[mask].std() - 1) < 1e-3
    assert store.attrs["dtype"] == "float32" and store.attrs["compression"] == "none"


def test_resume_skips_committed_and_checks_parameters(flat_dir, tmp_path, nifti_tools):
    save_nifti, tiny_volume, _ = nifti_tools
    out = tmp_path / "r.h5"
    first = ingest_nifti(flat_dir, out, options=NiftiOptions(shape=(16, 16, 16)))
    assert first.written == 4
    save_nifti(flat_dir / "s5.nii.gz", tiny_volume(5))
    again = ingest_nifti(flat_dir, out, options=NiftiOptions(shape=(16, 16, 16)))
    assert (again.written, again.already) == (1, 4)
    assert VolumeStore.open(out).meta["subject_id"].tolist() == ["s1", "s2", "s3", "s4", "s5"]
    with pytest.raises(IngestError, match=r"different preprocessing.*--overwrite"):
        ingest_nifti(flat_dir, out, options=NiftiOptions(shape=(16, 16, 16), normalize="none"))
    with pytest.raises(IngestError, match="different dtype"):
        ingest_nifti(flat_dir, out, options=NiftiOptions(shape=(16, 16, 16)), dtype="float32")
    redo = ingest_nifti(flat_dir, out, options=NiftiOptions(normalize="none"), dtype="float32",
                        overwrite=True)
    assert redo.written == 5 and VolumeStore.open(out)[0].max() > 100


def test_participants_typing(tmp_path, nifti_tools):
    _, _, write_participants = nifti_tools
    path = write_participants(tmp_path / "p.tsv", [
        "sub-01\t70\tF\t1", "02\tn/a\tM\t2", "sub-03\t\tF\tn/a"],
        header="participant_id\tage\tsex\tsite")
    table = read_participants(path)
    assert {k: v.kind for k, v in table.columns.items()} == {
        "age": "continuous", "sex": "categorical", "site": "continuous"}
    assert table.lookup("01", "") == {"age": 70.0, "sex": "F", "site": 1.0}
    assert math.isnan(table.lookup("03", "")["age"]) and table.lookup("03", "")["sex"] == "F"
    assert table.lookup("04", "") is None
    assert read_participants(path, categorical=["site"]).columns["site"].kind == "categorical"


def test_participants_errors(tmp_path, nifti_tools):
    _, _, write_participants = nifti_tools
    bad = write_participants(tmp_path / "p.tsv", ["sub-01\t70\tF\tCN", "sub-02\tseventy\tM\tAD",
                                                  "sub-03\t80\tM\tAD"])
    with pytest.raises(StoreError, match=r"line 3 \(sub-02\): column 'age' is numeric.*seventy"):
        read_participants(bad)
    noid = write_participants(tmp_path / "q.tsv", ["01\t70"], header="id\tage")
    with pytest.raises(StoreError, match="no 'participant_id' or 'subject_id' column"):
        read_participants(noid)
    dup = write_participants(tmp_path / "d.tsv", ["sub-01\t70\tF\tCN", "01\t71\tF\tCN"])
    with pytest.raises(StoreError, match="lines 2 and 3 both describe sub-01"):
        read_participants(dup)


def _bad_inputs(root, save_nifti, tiny_volume):
    """s1 fine, s2 truncated gzip, s3 not NIfTI, s4 4D with 3 volumes, s5 NaN voxels,
    s6 4D with one volume (squeezed, fine)."""
    save_nifti(root / "s1.nii.gz", tiny_volume(1))
    raw = gzip.compress(nib.Nifti1Image(tiny_volume(2), np.eye(4)).to_bytes())
    (root / "s2.nii.gz").write_bytes(raw[: len(raw) // 2])
    (root / "s3.nii.gz").write_bytes(b"this is not a nifti file")
    save_nifti(root / "s4.nii.gz", np.stack([tiny_volume(4)] * 3, axis=-1))
    nan = tiny_volume(5)
    nan[3, 3, 3] = np.nan
    save_nifti(root / "s5.nii.gz", nan)
    save_nifti(root / "s6.nii.gz", tiny_volume(6)[..., None])


@pytest.mark.parametrize("name, message", [
    ("s2", "corrupt or truncated"), ("s3", "corrupt or truncated"),
    ("s4", "4D with 3 volumes.*extract one volume"), ("s5", "1 NaN/Inf voxels")])
def test_bad_file_aborts_with_one_line(tmp_path, nifti_tools, name, message):
    save_nifti, tiny_volume, _ = nifti_tools
    _bad_inputs(tmp_path / "src", save_nifti, tiny_volume)
    with pytest.raises(IngestError, match=message) as err:
        ingest_nifti(tmp_path / "src", tmp_path / "o.h5", pattern=f"s[1{name[1]}].nii.gz")
    assert f"{name}.nii.gz" in str(err.value) and "\n" not in str(err.value)
    assert "--on-error skip" in str(err.value)


def test_bad_files_skipped_and_reported(tmp_path, nifti_tools):
    save_nifti, tiny_volume, _ = nifti_tools
    _bad_inputs(tmp_path / "src", save_nifti, tiny_volume)
    out = tmp_path / "o.h5"
    report = ingest_nifti(tmp_path / "src", out, on_error="skip")
    assert report.written == 2
    assert sorted(p.split("/")[-1] for p, _ in report.skipped) == [
        "s2.nii.gz", "s3.nii.gz", "s4.nii.gz", "s5.nii.gz"]
    lines = report.skipped_report.read_text().splitlines()
    assert report.skipped_report.name == "o.h5.skipped.tsv"
    assert lines[0] == "file\treason" and len(lines) == 5 and "4D" in lines[3]
    store = VolumeStore.open(out)
    assert store.meta["subject_id"].tolist() == ["s1", "s6"]  # the single-volume 4D squeezed


def test_file_without_participants_row(flat_dir, tmp_path, nifti_tools):
    _, _, write_participants = nifti_tools
    table = write_participants(tmp_path / "p.tsv", ["s1\t60\tF\tCN", "s2\t61\tM\tAD",
                                                    "s3\t62\tF\tCN", "s9\t63\tM\tAD"])
    with pytest.raises(IngestError, match=r"s4.nii.gz: no row for sub-s4 in p.tsv"):
        ingest_nifti(flat_dir, tmp_path / "o.h5", table)
    report = ingest_nifti(flat_dir, tmp_path / "o.h5", table, on_error="skip")
    assert report.written == 3 and report.skipped[0][0].endswith("s4.nii.gz")
    assert report.warnings == ["p.tsv: 1 row(s) have no image file: sub-s9"]


def test_duplicate_subject_session(tmp_path, nifti_tools):
    save_nifti, tiny_volume, _ = nifti_tools
    anat = tmp_path / "bids" / "sub-01" / "anat"
    save_nifti(anat / "sub-01_run-1_T1w.nii.gz", tiny_volume(1))
    save_nifti(anat / "sub-01_run-2_T1w.nii.gz", tiny_volume(2))
    with pytest.raises(IngestError, match=r"run-2_T1w.nii.gz: duplicate subject '01'.*run-1"):
        ingest_nifti(tmp_path / "bids", tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()
    report = ingest_nifti(tmp_path / "bids", tmp_path / "o.h5", on_error="skip")
    assert report.written == 1 and "duplicate" in report.skipped[0][1]


def test_discovery(tmp_path, nifti_tools):
    save_nifti, tiny_volume, _ = nifti_tools
    save_nifti(tmp_path / "b/sub-A/ses-pre/anat/sub-A_ses-pre_T1w.nii", tiny_volume(1))
    save_nifti(tmp_path / "b/sub-B/anat/sub-B_T1w.nii.gz", tiny_volume(2))
    save_nifti(tmp_path / "b/sub-B/anat/sub-B_T2w.nii.gz", tiny_volume(3))  # not a T1w
    items = discover_nifti(tmp_path / "b")
    assert [(i.subject, i.session) for i in items] == [("A", "pre"), ("B", "")]
    items = discover_nifti(tmp_path / "b", pattern="**/*_T2w.nii.gz")
    assert [(i.subject, i.path.name) for i in items] == [("B", "sub-B_T2w.nii.gz")]
    with pytest.raises(IngestError, match="no NIfTI files"):
        discover_nifti(tmp_path / "b", pattern="*.nii")


def test_values_beyond_float16_need_normalising(flat_dir, tmp_path):
    img = nib.load(flat_dir / "s1.nii.gz")
    nib.save(nib.Nifti1Image(img.get_fdata().astype(np.float32) * 1000, img.affine),
             flat_dir / "huge.nii.gz")
    with pytest.raises(IngestError, match="huge.nii.gz: .*beyond float16.*--normalize percentile"):
        ingest_nifti(flat_dir, tmp_path / "o.h5", options=NiftiOptions(normalize="none"),
                     pattern="huge.nii.gz", dtype="float16")
    # integer storage has no such limit: the scale absorbs the range
    ingest_nifti(flat_dir, tmp_path / "u.h5", options=NiftiOptions(normalize="none"),
                 pattern="huge.nii.gz", dtype="uint16")
    stored = VolumeStore.open(tmp_path / "u.h5")[0][0]
    raw = nib.load(flat_dir / "huge.nii.gz").get_fdata(dtype=np.float32)
    span = float(raw.max() - raw.min())
    rounding = 4 * np.spacing(np.float32(np.abs(raw).max()))  # float32 decode arithmetic
    assert np.abs(stored.astype(np.float64) - raw).max() <= span / 131068 + rounding


@pytest.mark.slow
def test_worker_pool(flat_dir, tmp_path):
    serial = ingest_nifti(flat_dir, tmp_path / "a.h5")
    pooled = ingest_nifti(flat_dir, tmp_path / "b.h5", workers=2)
    assert serial.written == pooled.written == 4
    a, b = VolumeStore.open(tmp_path / "a.h5"), VolumeStore.open(tmp_path / "b.h5")
    assert a.meta["subject_id"].tolist() == b.meta["subject_id"].tolist()
    for i in range(4):
        np.testing.assert_array_equal(a[i], b[i])


def test_preprocess_nifti_is_what_ingest_stores(flat_dir, tmp_path):
    """The public per-file preprocessing, rebuilt from a store's record, gives its rows."""
    from ssltk.store import preprocess_nifti

    out = tmp_path / "p.h5"
    ingest_nifti(flat_dir, out, options=NiftiOptions(shape=(12, 20, 16)), dtype="float32",
                 compression="none")
    store = VolumeStore.open(out)
    options = NiftiOptions.from_record(store.attrs["preprocessing"])
    assert options == NiftiOptions(shape=(12, 20, 16))
    for row, src in enumerate(store.sources):
        volume, zooms = preprocess_nifti(src["path"], options)
        np.testing.assert_array_equal(volume, store[row])
        assert zooms == (1.0, 1.0, 1.0)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(IngestError, match=r"bad\.nii\.gz: cannot read the image") as err:
        preprocess_nifti(bad, options)
    assert "\n" not in str(err.value)
