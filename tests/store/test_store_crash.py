"""Crash safety: a writer killed with SIGKILL at any moment leaves a readable store, and
resuming gives every volume exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from ssltk.store import StoreWriter, VolumeStore
from ssltk.store.verify import verify_store

N_ROWS = 120

# Appends rows it does not have yet; prints the committed counter after each append.
WRITER = r"""
import sys, numpy as np
from pathlib import Path
from ssltk.store import ColumnSpec, StoreWriter
path, n = Path(sys.argv[1]), int(sys.argv[2])
cols = {"session": ColumnSpec("id"), "age": ColumnSpec("continuous"),
        "group": ColumnSpec("categorical")}
if path.exists():
    w = StoreWriter.resume(path, flush_every=4)
else:
    w = StoreWriter.create(path, (1, 12, 12, 12), cols, flush_every=4)
done = {s for s, _ in w.keys()}
for i in range(n):
    if f"s{i:03d}" in done:
        continue
    vol = np.full((1, 12, 12, 12), i / 128, np.float32)
    vol[0, 0, 0, :] = np.arange(12) / 16  # a pattern per volume, not just a constant
    w.append(vol, {"subject_id": f"s{i:03d}", "session": "1", "age": 50 + i % 40,
                   "group": f"g{i % 7}"},
             source={"path": f"/src/{i}.nii.gz", "sha256": f"{i:064x}"})
    print(w.committed, flush=True)
w.close()
print("done", flush=True)
"""


def _run_until_killed(path: Path, min_committed: int, extra_delay: float) -> bool:
    """Start the writer, SIGKILL it once it committed ``min_committed`` rows (+ a delay).

    Returns False when the writer finished before it could be killed.
    """
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(N_ROWS)],
                            stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("done"):
                proc.wait(timeout=30)
                return False
            if int(line) >= min_committed:
                time.sleep(extra_delay)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return True
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


def _check_exactly_once(path: Path) -> None:
    result = verify_store(path)
    assert result.ok, result.problems
    store = VolumeStore.open(path)
    assert len(store) == N_ROWS
    ids = store.meta["subject_id"].tolist()
    assert sorted(ids) == [f"s{i:03d}" for i in range(N_ROWS)]
    out = np.empty((N_ROWS, 1, 12, 12, 12), np.float32)
    store.read_into(range(N_ROWS), out)
    for row, sid in enumerate(ids):
        i = int(sid[1:])
        np.testing.assert_allclose(out[row, 0, 5, 5, 5], i / 128, atol=1e-3)
        np.testing.assert_allclose(out[row, 0, 0, 0, :], np.arange(12) / 16, atol=1e-3)
        assert store.meta["age"][row] == 50 + i % 40
        assert store.meta["group"][row] == f"g{i % 7}"
        assert store.sources[row]["sha256"] == f"{i:064x}"


def test_sigkill_then_resume_gives_every_volume_once(tmp_path):
    path = tmp_path / "crash.h5"
    kills = 0
    for attempt, (threshold, delay) in enumerate([(4, 0.0), (30, 0.013), (60, 0.031)]):
        if _run_until_killed(path, threshold, delay):
            kills += 1
            # Killed mid-write: the store opens, and holds a whole number of committed rows.
            store = VolumeStore.open(path)
            assert 0 < len(store) < N_ROWS
            assert len(set(store.meta["subject_id"].tolist())) == len(store)
            store.close()
    assert kills >= 1, "the writer always finished before it could be killed"
    finished = subprocess.run([sys.executable, "-c", WRITER, str(path), str(N_ROWS)],
                              capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    _check_exactly_once(path)


def test_kill_between_write_and_commit_is_invisible(tmp_path):
    """Rows written but not committed (the state a kill mid-flush leaves) are never read."""
    path = tmp_path / "s.h5"
    w = StoreWriter.create(path, (1, 4, 4, 4), {}, flush_every=2)
    for i in range(2):
        w.append(np.arange(64, dtype=np.float32).reshape(1, 4, 4, 4), {"subject_id": f"a{i}"})
    w.close()
    with h5py.File(path, "r+") as f:  # what flush() does before bumping `committed`
        for name in ("volumes", "meta/subject_id", "sources/path", "sources/sha256"):
            f[name].resize(3, axis=0)
        f["volumes"][2] = np.full((1, 4, 4, 4), np.nan, np.float16)
        f["meta/subject_id"][2] = b"ghost"
    store = VolumeStore.open(path)
    assert len(store) == 2 and "ghost" not in store.meta["subject_id"]
    result = verify_store(path)
    assert result.ok and any("uncommitted" in n for n in result.notes)
    with StoreWriter.resume(path) as w:
        assert w.committed == 2
        w.append(np.ones((1, 4, 4, 4), np.float32), {"subject_id": "ghost"})
    assert VolumeStore.open(path)[2].min() == 1.0


@pytest.mark.slow
def test_sigkill_real_ingest_then_rerun(tmp_path, nifti_tools):
    """``ssltk ingest nifti`` killed mid-way, re-run: every file is in the store exactly once."""
    save_nifti, tiny_volume, _ = nifti_tools
    src = tmp_path / "flat"
    for i in range(40):
        save_nifti(src / f"p{i:02d}.nii.gz", tiny_volume(i, (24, 24, 24)))
    out = tmp_path / "t1.h5"
    cmd = [sys.executable, "-m", "ssltk", "ingest", "nifti", str(src), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    committed = 0
    while committed == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        committed = _peek_committed(out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert 0 < committed < 40 or committed == 0 and proc.returncode == -signal.SIGKILL
    from typer.testing import CliRunner

    from ssltk.cli import app

    rerun = CliRunner().invoke(app, cmd[3:])  # in-process: monai is imported once per session
    assert rerun.exit_code == 0, rerun.output
    assert verify_store(out).ok
    store = VolumeStore.open(out)
    assert sorted(store.meta["subject_id"].tolist()) == [f"p{i:02d}" for i in range(40)]
    for row, sid in enumerate(store.meta["subject_id"]):
        assert store.sources[row]["path"].endswith(f"{sid}.nii.gz")


def _peek_committed(path: Path) -> int:
    """The committed counter of a store being written (no lock: a peek, may fail)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f.attrs["committed"])
    except (OSError, KeyError):
        return 0
