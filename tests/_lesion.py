"""A tiny synthetic "lesion" cohort for the tests of bundles, predict, explain and serve.

Each subject is a 2 mm NIfTI volume: a bright head-like ball with noise, in scanner-like
intensities (hundreds), and for half of the subjects a small bright Gaussian blob (the lesion)
at a random place inside the head. ``diagnosis`` is ``lesion`` or ``none``. The cohort is
ingested with ``ssltk ingest nifti`` (RAS, 2 mm, percentile normalisation, float16), and a
small ResNet-10 is finetuned on it to detect the lesion.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (20, 20, 20)
SPACING = 2.0
ORIGIN = (-19.0, -21.0, -17.0)
BACKBONE = {"name": "resnet10", "widen_factor": 0.125, "stem_kernel": 3, "stem_stride": 1,
            "max_pool": False, "norm": "group"}


def affine(spacing: float = SPACING) -> np.ndarray:
    a = np.diag([spacing, spacing, spacing, 1.0])
    a[:3, 3] = ORIGIN
    return a


def head(seed: int, shape=SHAPE) -> np.ndarray:
    """A lesion-free head: ball of intensity ~400 with noise, background ~20."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    ball = (np.sqrt((grid ** 2).sum(0)) < 0.85).astype(np.float32)
    return (20 + ball * (380 + 20 * rng.standard_normal()) + 15 * rng.standard_normal(shape)
            ).astype(np.float32)


def add_lesion(volume: np.ndarray, centre, amplitude: float = 250.0,
               sigma: float = 1.6) -> np.ndarray:
    """``volume`` plus a Gaussian blob at voxel ``centre``."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in volume.shape], indexing="ij"))
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return (volume + amplitude * np.exp(-d2 / (2 * sigma ** 2))).astype(np.float32)


def lesion_centre(rng: np.random.Generator, shape=SHAPE) -> tuple[int, ...]:
    return tuple(int(rng.integers(s // 4, s - s // 4)) for s in shape)


def write_cohort(folder: Path, n: int = 40, seed: int = 0) -> Path:
    """``sub-XX.nii.gz`` files and participants.tsv (diagnosis: lesion / none)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = ["participant_id\tdiagnosis"]
    for i in range(n):
        vol = head(1000 * seed + i)
        dx = "lesion" if i % 2 else "none"
        if dx == "lesion":
            vol = add_lesion(vol, lesion_centre(rng))
        nib.save(nib.Nifti1Image(vol, affine()), folder / f"sub-{i:02d}.nii.gz")
        rows.append(f"sub-{i:02d}\t{dx}")
    (folder / "participants.tsv").write_text("\n".join(rows) + "\n")
    return folder


def resample_to(volume: np.ndarray, factor: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A 2 mm RAS volume on a ``2 / factor`` mm grid whose every ``factor``-th voxel is an
    original voxel (trilinear in between), flipped to LPS. Returns ``(data, affine)``.

    Reorienting to RAS and resampling back to 2 mm then meets the original voxels exactly,
    so the round trip tests the preprocessing path, not interpolation error.
    """
    from scipy.ndimage import map_coordinates

    n = [(s - 1) * factor + 1 for s in volume.shape]
    idx = np.stack(np.meshgrid(*[np.arange(m) / factor for m in n], indexing="ij"))
    fine = map_coordinates(volume.astype(np.float32), idx, order=1).astype(np.float32)
    lps = fine[::-1, ::-1, :].copy()
    a = affine(SPACING / factor)
    a[0, 0], a[1, 1] = -a[0, 0], -a[1, 1]
    a[0, 3] = ORIGIN[0] + (n[0] - 1) * SPACING / factor
    a[1, 3] = ORIGIN[1] + (n[1] - 1) * SPACING / factor
    return lps, a


def world_of(affine_: np.ndarray, voxel) -> np.ndarray:
    return (affine_ @ np.r_[np.asarray(voxel, dtype=float), 1.0])[:3]


# -- 2D: PNG slices ----------------------------------------------------------------------------
SHAPE_2D = (32, 32)
BACKBONE_2D = {"name": "resnet10", "widen_factor": 0.25, "stem_kernel": 3, "stem_stride": 1,
               "max_pool": False}


def head_2d(seed: int, shape=SHAPE_2D) -> np.ndarray:
    """A lesion-free slice in 8-bit grey levels: bright disc (~170) with noise on ~15."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    disc = (np.sqrt((grid ** 2).sum(0)) < 0.85).astype(np.float32)
    return (15 + disc * (155 + 10 * rng.standard_normal()) + 6 * rng.standard_normal(shape)
            ).astype(np.float32)


def add_lesion_2d(image: np.ndarray, centre, amplitude: float = 70.0,
                  sigma: float = 2.0) -> np.ndarray:
    """``image`` plus a bright Gaussian blob (the lesion) at pixel ``centre``."""
    return add_lesion(image, centre, amplitude, sigma)


def save_png(image: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(image, 0, 255).round().astype(np.uint8)).save(path)
    return path


def write_cohort_2d(folder: Path, n: int = 64, seed: int = 0) -> Path:
    """``folder/<lesion|none>/sNN.png``, half with a bright blob inside the disc (centres in
    pixels 8 to 23 on both axes)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = head_2d(1000 * seed + i)
        dx = "lesion" if i % 2 else "none"
        if dx == "lesion":
            img = add_lesion_2d(img, lesion_centre(rng, SHAPE_2D))
        save_png(img, folder / dx / f"s{i:02d}.png")
    return folder


# -- trained bundles (session fixtures in tests/conftest.py) ------------------------------------
class Built:
    """What a fixture built: folders, store, bundle, the run and its result."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def build_3d(root: Path, n: int = 24) -> Built:
    """NIfTI cohort -> ``ssltk ingest nifti`` (2 mm, 20^3, percentile, float16) -> a frozen
    (linear probe) bundle: cheap, and what predict's one-preprocessing-path test needs."""
    from ssltk.engine.finetuning import FinetuneRun, finetune
    from ssltk.store.ingest_nifti import NiftiOptions, ingest_nifti

    nifti = write_cohort(root / "nifti", n)
    store = root / "lesion3d.h5"
    ingest_nifti(nifti, store, options=NiftiOptions(shape=SHAPE, spacing=SPACING))
    none, lesion = list(range(0, n, 2)), list(range(1, n, 2))  # participants order
    run = FinetuneRun(store=store, target="diagnosis", backbone=BACKBONE, mode="frozen",
                      train_rows=none[:6] + lesion[:6], val_rows=none[6:8] + lesion[6:8],
                      test_rows=none[8:] + lesion[8:], batch_size=8, seed=0)
    bundle = root / "bundle3d"
    result = finetune(run, device="cpu", save_model=bundle)
    return Built(root=root, nifti=nifti, store=store, bundle=bundle, run=run, result=result)


def build_2d(root: Path, n: int = 160, backbone: dict | None = None, epochs: int = 12,
             lr: float = 5e-3, batch_size: int = 8, mode: str = "full") -> Built:
    """PNG cohort -> ``ssltk ingest images`` (32 x 32) -> a fully finetuned ResNet-10 that
    detects the bright blob, for Grad-CAM localisation and serving.

    160 images, 96 to train on: with 38 the model separated the classes without features tied
    to the blob's position. Trained at lr 5e-3, the validation ROC-AUC (24 images) reaches 1.0
    at epoch 2 to 4, while the model is still barely trained, and drops again after a few
    epochs; the finetuning keeps, of the epochs at the best score, the one with the lowest
    validation loss (epoch 5, 7 or 10 over CPU kernel levels and thread counts; test ROC-AUC
    and accuracy 1.0), whose Grad-CAM maps follow the blob (tests/engine/test_explain.py)."""
    from ssltk.engine.finetuning import FinetuneRun, finetune
    from ssltk.store import VolumeStore
    from ssltk.store.ingest_images import ingest_images

    pngs = write_cohort_2d(root / "png", n)
    store = root / "lesion2d.h5"
    ingest_images(pngs, store, SHAPE_2D)
    with VolumeStore.open(store) as s:
        labels = np.asarray(s.meta["label"]).astype(str)
    lesion, none = np.flatnonzero(labels == "lesion").tolist(), np.flatnonzero(
        labels == "none").tolist()
    k = len(lesion)
    split = (int(0.6 * k), int(0.75 * k))
    run = FinetuneRun(store=store, target="label", backbone=backbone or BACKBONE_2D, mode=mode,
                      train_rows=lesion[:split[0]] + none[:split[0]],
                      val_rows=lesion[split[0]:split[1]] + none[split[0]:split[1]],
                      test_rows=lesion[split[1]:] + none[split[1]:], epochs=epochs,
                      batch_size=batch_size, lr=lr, encoder_lr_ratio=1.0, patience=epochs,
                      seed=0)
    bundle = root / "bundle2d"
    result = finetune(run, device="cpu", save_model=bundle)
    return Built(root=root, pngs=pngs, store=store, bundle=bundle, run=run, result=result)
