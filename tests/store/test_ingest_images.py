"""``ingest_images``: class-per-folder 2D images (Kaggle Alzheimer layout)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ssltk.store import VolumeStore
from ssltk.store.ingest_common import IngestError
from ssltk.store.ingest_images import ingest_images, load_image


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def kaggle(tmp_path):
    """train/{MildDemented,NonDemented} and test/NonDemented; a name repeated across classes."""
    root = tmp_path / "alz"
    ramp = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (20, 1))  # (20, 32), 0..248
    _save(root / "train/MildDemented/26 (19).jpg", ramp)
    _save(root / "train/NonDemented/26 (19).jpg", 255 - ramp)
    _save(root / "train/NonDemented/nonDem1.png", np.stack([ramp] * 3, -1))  # RGB
    _save(root / "test/NonDemented/nonDem7.png", np.full((20, 32), 128, np.uint8))
    return root


def test_ingest_class_folders(kaggle, tmp_path):
    out = tmp_path / "alz.h5"
    report = ingest_images(kaggle, out, size=(10, 16))
    assert report.written == 4
    store = VolumeStore.open(out)
    assert store.shape == (1, 10, 16) and store.spatial_dims == 2
    assert store.meta["subject_id"].tolist() == [
        "test/NonDemented/nonDem7", "train/MildDemented/26 (19)",
        "train/NonDemented/26 (19)", "train/NonDemented/nonDem1"]
    assert store.meta["label"].tolist() == ["NonDemented", "MildDemented", "NonDemented",
                                            "NonDemented"]
    assert store.meta["split"].tolist() == ["test", "train", "train", "train"]
    assert store.categories("label") == ["MildDemented", "NonDemented"]
    np.testing.assert_allclose(store[0], 128 / 255, atol=1e-3)
    png = store[3][0]  # lossless ramp: left to right 0 -> 248/255, grayscale of equal RGB
    assert png.min() >= 0 and png.max() <= 1
    assert png[:, 0].mean() < 0.05 and png[:, -1].mean() > 0.9
    assert np.all(np.diff(png.mean(0)) > 0)
    jpg_a, jpg_b = store[1][0], store[2][0]  # inverted images: sum to ~1 (JPEG is lossy)
    np.testing.assert_allclose(jpg_a + jpg_b, 1.0, atol=0.08)
    assert all(len(s["sha256"]) == 64 for s in store.sources)


def test_subject_regex_groups_slices(tmp_path):
    root = tmp_path / "slices"
    for name in ["OAS1_0001_s60", "OAS1_0001_s61", "OAS1_0002_s60"]:
        _save(root / "CN" / f"{name}.png", np.zeros((8, 8), np.uint8))
    _save(root / "CN" / "stray.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(IngestError, match="stray.png: file name does not match --subject-regex"):
        ingest_images(root, tmp_path / "s.h5", (8, 8), subject_regex=r"^(OAS1_\d+)_")
    report = ingest_images(root, tmp_path / "t.h5", (8, 8), subject_regex=r"^(OAS1_\d+)_",
                           on_error="skip")
    store = VolumeStore.open(tmp_path / "t.h5")
    assert report.written == 3 and len(report.skipped) == 1
    assert store.meta["subject_id"].tolist() == ["OAS1_0001", "OAS1_0001", "OAS1_0002"]
    assert store.meta["session"].tolist() == ["CN/OAS1_0001_s60", "CN/OAS1_0001_s61",
                                              "CN/OAS1_0002_s60"]


def test_unreadable_images(kaggle, tmp_path):
    (kaggle / "train/NonDemented/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = (kaggle / "train/NonDemented/nonDem1.png").read_bytes()
    (kaggle / "train/NonDemented/cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(IngestError, match=r"broken.png: cannot read the image.*replace or remove"):
        ingest_images(kaggle, tmp_path / "a.h5", (8, 8))
    report = ingest_images(kaggle, tmp_path / "a.h5", (8, 8), on_error="skip")  # resumes
    # the aborted run kept the 3 rows before broken.png; the re-run resumes after them
    assert (report.already, report.written) == (3, 1)
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in report.skipped) == ["broken.png", "cut.png"]
    assert report.skipped_report.exists()


def test_resume_and_size_mismatch(kaggle, tmp_path):
    out = tmp_path / "a.h5"
    ingest_images(kaggle, out, (8, 8))
    _save(kaggle / "train/MildDemented/new.png", np.zeros((5, 5), np.uint8))
    report = ingest_images(kaggle, out, (8, 8))
    assert (report.already, report.written) == (4, 1)
    with pytest.raises(IngestError, match="different preprocessing"):
        ingest_images(kaggle, out, (16, 16))


def test_sixteen_bit_and_loose_files(tmp_path):
    arr = np.array([[0, 65535], [32768, 65535]], dtype=np.uint16)
    path = _save(tmp_path / "x" / "c" / "deep.png", arr)
    img = load_image(path, (2, 2))
    np.testing.assert_allclose(img[0], arr / 65535, atol=1e-4)
    _save(tmp_path / "loose" / "top.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(IngestError, match="not inside a class folder"):
        ingest_images(tmp_path / "loose", tmp_path / "l.h5", (4, 4))
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no PNG/JPEG"):
        ingest_images(tmp_path / "empty", tmp_path / "e.h5", (4, 4))


def test_auto_keeps_8_bit_images_exact(tmp_path):
    """Unresized 8-bit images: --dtype auto (1/508 for images) stores every grey level."""
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16)
    _save(tmp_path / "src" / "A" / "ramp.png", arr)
    ingest_images(tmp_path / "src", tmp_path / "r.h5", size=(16, 16))
    store = VolumeStore.open(tmp_path / "r.h5")
    assert store.dtype == np.uint8 and store.encoding.max_error == pytest.approx(1 / 508)
    np.testing.assert_allclose(store[0][0], arr / 255, atol=1e-6)
