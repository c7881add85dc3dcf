"""Fixtures of the store tests: tiny NIfTI files, a BIDS tree from the MNI template, stores."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ssltk.store import ColumnSpec, StoreWriter

COLUMNS = {
    "session": ColumnSpec("id"),
    "age": ColumnSpec("continuous", unit="years"),
    "sex": ColumnSpec("categorical"),
    "diagnosis": ColumnSpec("categorical", description="clinical label"),
}


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``data`` as NIfTI (gzip when the name ends in .gz), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), path)
    return path


def tiny_volume(seed: int, shape=(16, 16, 16)) -> np.ndarray:
    """A head-like blob: bright ball on a dark background, different per seed."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    ball = (np.sqrt((grid ** 2).sum(0)) < 0.7).astype(np.float32)
    return (ball * (100 + 10 * seed) + rng.random(shape, dtype=np.float32) * 5).astype(np.float32)


def write_participants(path: Path, rows: list[str],
                       header: str = "participant_id\tage\tsex\tdiagnosis") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def columns() -> dict[str, ColumnSpec]:
    """The metadata columns of ``small_store`` (subject_id aside)."""
    return dict(COLUMNS)


@pytest.fixture
def nifti_tools():
    """``save_nifti``, ``tiny_volume`` and ``write_participants`` for tests to build inputs."""
    return save_nifti, tiny_volume, write_participants


@pytest.fixture(scope="session")
def mni_img() -> nib.Nifti1Image:
    """nilearn's MNI152 T1 template at 2 mm (shipped with nilearn: no download)."""
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template(resolution=2)
    return nib.Nifti1Image(np.asarray(img.dataobj), img.affine)


@pytest.fixture
def mni_bids(tmp_path: Path, mni_img) -> Path:
    """BIDS tree: sub-01 (ses-1, ses-2), sub-02, from the MNI template; participants has an
    extra sub-03 with no image."""
    root = tmp_path / "bids"
    for sub, ses in [("01", "1"), ("01", "2"), ("02", None)]:
        folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
        suffix = ".nii.gz" if ses == "1" else ".nii"  # both extensions; .nii is quicker
        name = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + "_T1w" + suffix
        save_nifti(folder / name, mni_img.get_fdata().astype(np.float32) * (1 + int(sub) / 10),
                   mni_img.affine)
    write_participants(root / "participants.tsv",
                       ["sub-01\t70.5\tF\tCN", "sub-02\tn/a\tM\tAD", "sub-03\t66\tF\tMCI"])
    return root


@pytest.fixture
def flat_dir(tmp_path: Path) -> Path:
    """Folder of four tiny 16^3 .nii.gz files s1..s4 and a participants.csv for them."""
    root = tmp_path / "flat"
    for i in range(1, 5):
        save_nifti(root / f"s{i}.nii.gz", tiny_volume(i))
    (tmp_path / "participants.csv").write_text(
        "subject_id,age,sex\ns1,60,F\ns2,61,M\ns3,,F\ns4,75.5,M\n", encoding="utf-8")
    return root


@pytest.fixture
def small_store(tmp_path: Path) -> Path:
    """A 6-row float16 store of (1, 8, 8, 8) volumes filled with their row index / 10, but
    for the last voxel, 1 (so no volume is constant: ``store verify`` passes)."""
    path = tmp_path / "small.h5"
    sexes = ["F", "M", None, "F", "M", "F"]
    diagnoses = ["CN", "AD", "MCI", "AD", "CN", "CN"]
    with StoreWriter.create(path, shape=(1, 8, 8, 8), columns=COLUMNS, spacing=(2.0, 2.0, 2.0),
                            preprocessing={"normalize": "percentile"}, flush_every=4) as w:
        for i in range(6):
            vol = np.full((1, 8, 8, 8), i / 10, dtype=np.float32)
            vol[0, -1, -1, -1] = 1.0
            w.append(vol,
                     {"subject_id": f"s{i // 2}", "session": f"{i % 2}",
                      "age": None if i == 2 else 60.0 + i, "sex": sexes[i],
                      "diagnosis": diagnoses[i]},
                     source={"path": f"/data/s{i}.nii.gz", "sha256": f"{i:064x}"})
    return path
