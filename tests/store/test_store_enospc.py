"""A full disk during ``ssltk ingest``: one line, the committed rows intact, and a re-run once
space is back completes the store.

The write failures are real: the ingest runs in its own process under a file-size limit
(``RLIMIT_FSIZE``: ``write``/``fallocate`` fail with EFBIG past it, the same error path as
ENOSPC), and, where the tests may mount file systems (root), on a tiny tmpfs that fills up
(ENOSPC proper).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssltk.store import VolumeStore
from ssltk.store.verify import verify_store

N_FILES = 40  # 2.5 batches of 16
# Noise volumes of 48^3: ~83 KB each as stored (uint8 codes of 64 levels barely compress), so a
# batch grows the file by ~1.35 MB and first reserves ~2.7 MB (its raw bytes + metadata
# slack). 3.2 MB hold the empty store and the first batch's reservation, not the second's;
# without the reservation HDF5 itself would hit the limit in the third batch (the whole store
# is ~3.4 MB) and leave a truncated file.
DISK = 3_200_000


@pytest.fixture
def src(tmp_path, nifti_tools) -> Path:
    save_nifti, _, _ = nifti_tools
    folder = tmp_path / "src"
    rng = np.random.default_rng(0)
    for i in range(N_FILES):
        save_nifti(folder / f"p{i:02d}.nii", rng.random((48, 48, 48), dtype=np.float32))
    return folder


def _ingest(src: Path, out: Path, file_size_limit: int | None = None):
    def limit() -> None:  # in the child, before exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so write() returns EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    cmd = [sys.executable, "-m", "ssltk", "ingest", "nifti", str(src), "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit if file_size_limit else None)


def _check_partial_then_complete(src: Path, out: Path, failed, errno_text: str) -> None:
    assert failed.returncode == 1, failed.stdout + failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert lines[0].startswith(f"Error: cannot write {out}: {errno_text}")
    assert "committed rows are kept" in lines[0] and "re-run the same command" in lines[0]
    partial = verify_store(out)  # what was committed before the disk filled is intact
    assert partial.ok, partial.problems
    kept = VolumeStore.open(out)
    assert 0 < len(kept) < N_FILES
    before = {sid: kept[i] for i, sid in enumerate(kept.meta["subject_id"])}
    kept.close()
    rerun = _ingest(src, out)  # space is back
    assert rerun.returncode == 0, rerun.stderr
    assert f"{N_FILES - len(before)} row(s) written, {len(before)} already there" in rerun.stdout
    assert verify_store(out).ok
    store = VolumeStore.open(out)
    ids = store.meta["subject_id"].tolist()
    assert sorted(ids) == [f"p{i:02d}" for i in range(N_FILES)]  # every volume once
    for i, sid in enumerate(ids):
        if sid in before:
            assert (store[i] == before[sid]).all()


@pytest.mark.slow
def test_file_size_limit_mid_ingest(src, tmp_path):
    out = tmp_path / "t1.h5"
    failed = _ingest(src, out, file_size_limit=DISK)
    _check_partial_then_complete(src, out, failed, "File too large")


@pytest.mark.slow  # the file-size-limit test above covers the same path, unprivileged
@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0,
                    reason="mounting a tmpfs needs root")
@pytest.mark.slow
def test_full_tmpfs_mid_ingest(src, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={DISK // 1024}k", "tmpfs", str(disk)]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        out = disk / "t1.h5"
        failed = _ingest(src, out)
        remount = ["mount", "-o", "remount,size=64m", str(disk)]  # free space
        assert subprocess.run(remount, capture_output=True).returncode == 0
        _check_partial_then_complete(src, out, failed, "No space left on device")
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
