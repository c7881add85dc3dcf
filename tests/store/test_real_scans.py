"""The store on real scans (optional): set ``SSLTK_REAL_SCANS`` to a folder of real T1 NIfTI
scans, e.g. the 10 IXI scans of docs/performance.md; skipped otherwise.

    SSLTK_REAL_SCANS=/path/to/ixi10 .venv/bin/python -m pytest tests/store/test_real_scans.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ssltk.store import NiftiOptions, VolumeStore, preprocess_nifti
from ssltk.store.ingest_nifti import ingest_nifti
from ssltk.store.verify import verify_store

SCANS = Path(os.environ.get("SSLTK_REAL_SCANS", "")) if os.environ.get("SSLTK_REAL_SCANS") else None
pytestmark = pytest.mark.skipif(SCANS is None or not SCANS.is_dir(),
                                reason="SSLTK_REAL_SCANS is not a folder of real NIfTI scans")


def test_default_store_on_real_scans(tmp_path):
    """96^3, --dtype auto: within 1/128 of each volume's range, >= 8x smaller than float32
    .nii, never larger than the source files; --dtype uint8 exact on 8-bit sources."""
    options = NiftiOptions(shape=(96, 96, 96))
    sources = sorted(p for p in SCANS.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    stores = {}
    for dtype in ("auto", "uint8"):
        stores[dtype] = tmp_path / f"{dtype}.h5"
        report = ingest_nifti(SCANS, stores[dtype], options=options, dtype=dtype)
        assert report.written == len(sources) and not report.skipped
        assert verify_store(stores[dtype]).ok
    nii_bytes = 96**3 * 4 + 352
    source_bytes = np.mean([p.stat().st_size for p in sources])
    per_volume = stores["auto"].stat().st_size / len(sources)
    assert nii_bytes / per_volume >= 8 and per_volume <= source_bytes
    auto, exact = VolumeStore.open(stores["auto"]), VolumeStore.open(stores["uint8"])
    for row, src in enumerate(auto.sources):
        x = preprocess_nifti(src["path"], options)[0]
        span = float(x.max() - x.min())
        assert np.abs(auto[row] - x).max() <= span / 128 + 1e-6
        if "IXI" in Path(src["path"]).name:  # 8-bit sources: stored exactly
            assert np.abs(exact[row] - x).max() <= 1e-6
    assert auto.attrs["max_abs_error"] <= 1 / 128 + 1e-6
