"""Crash safety: a writer killed with SIGKILL with rows buffered, or inside a flush before its
commit, leaves a readable store of exactly the committed rows, and resuming gives every volume
exactly once. The writer holds at each of these points (tests/_handshake.py) for the kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ssltk.store import StoreWriter, VolumeStore
from ssltk.store.verify import verify_store

from _handshake import CHILD, Handshake

N_ROWS = 120

# Appends the rows it does not have yet. With SSLTK_TEST_HOLD_AT=n it holds (tests/_handshake.py)
# right after appending row n - 1; with SSLTK_TEST_HOLD_IN_FLUSH=n, inside the flush that
# commits rows up to n - 1, once they are written and synced but before `committed` is bumped.
WRITER = CHILD + r"""
import os, sys, numpy as np
from pathlib import Path
from ssltk.store import ColumnSpec, StoreWriter
path, n = Path(sys.argv[1]), int(sys.argv[2])
hold_at = int(os.environ.get("SSLTK_TEST_HOLD_AT", "0"))
hold_in_flush = int(os.environ.get("SSLTK_TEST_HOLD_IN_FLUSH", "0"))
trim = StoreWriter._trim
def held_trim(self):  # called by flush between the synced rows and the commit
    trim(self)
    if self.committed + len(self._buffer) == hold_in_flush:
        hold_here()
StoreWriter._trim = held_trim
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
    if i + 1 == hold_at:
        hold_here()
w.close()
"""


def _kill_after(path: Path, rows: int, in_flush: bool = False) -> None:
    """Run the writer until it has appended ``rows`` rows in all (or, ``in_flush``, written
    them to the file but not committed them), then SIGKILL it there."""
    handshake = Handshake()
    hold = "SSLTK_TEST_HOLD_IN_FLUSH" if in_flush else "SSLTK_TEST_HOLD_AT"
    proc = handshake.popen([sys.executable, "-c", WRITER, str(path), str(N_ROWS)],
                           env=os.environ | {hold: str(rows)})
    try:
        handshake.wait(proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


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
    # flush_every=4: killed with 1, 2 and 3 rows buffered past the last commit, then with 4
    # rows on disk that a flush wrote but did not commit yet
    for rows, in_flush, committed in [(5, False, 4), (30, False, 28), (63, False, 60),
                                      (88, True, 84)]:
        _kill_after(path, rows, in_flush)
        with h5py.File(path, "r") as f:  # what the kill left in the file
            assert f["volumes"].shape[0] == (rows if in_flush else committed)
        # The store opens and holds exactly the committed rows.
        store = VolumeStore.open(path)
        assert len(store) == committed
        assert sorted(store.meta["subject_id"].tolist()) == [f"s{i:03d}"
                                                             for i in range(committed)]
        store.close()
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


# `ssltk ingest nifti SRC --out OUT`, holding (tests/_handshake.py) after SSLTK_TEST_HOLD_AT
# files are appended: the default flush_every=16 has committed 16 of 20 then.
INGEST = CHILD + r"""
import os, sys
from ssltk.cli import app
from ssltk.store.writer import StoreWriter
append, appended = StoreWriter.append, [0]
def held_append(self, *args, **kw):
    append(self, *args, **kw)
    appended[0] += 1
    if appended[0] == int(os.environ["SSLTK_TEST_HOLD_AT"]):
        hold_here()
StoreWriter.append = held_append
app(["ingest", "nifti", *sys.argv[1:]], prog_name="ssltk")
"""


@pytest.mark.slow
def test_sigkill_real_ingest_then_rerun(tmp_path, nifti_tools):
    """``ssltk ingest nifti`` killed mid-way, re-run: every file is in the store exactly once."""
    save_nifti, tiny_volume, _ = nifti_tools
    src = tmp_path / "flat"
    for i in range(40):
        save_nifti(src / f"p{i:02d}.nii.gz", tiny_volume(i, (24, 24, 24)))
    out = tmp_path / "t1.h5"
    args = [str(src), "--out", str(out)]
    handshake = Handshake()
    proc = handshake.popen([sys.executable, "-c", INGEST, *args],
                           env=os.environ | {"SSLTK_TEST_HOLD_AT": "20"},
                           stdout=subprocess.DEVNULL)
    try:
        handshake.wait(proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed = VolumeStore.open(out)
    assert len(killed) == 16  # the 4 buffered files are lost with the process
    killed.close()
    from typer.testing import CliRunner

    from ssltk.cli import app

    rerun = CliRunner().invoke(app, ["ingest", "nifti", *args])  # in-process: monai is
    assert rerun.exit_code == 0, rerun.output                    # imported once per session
    assert verify_store(out).ok
    store = VolumeStore.open(out)
    assert sorted(store.meta["subject_id"].tolist()) == [f"p{i:02d}" for i in range(40)]
    for row, sid in enumerate(store.meta["subject_id"]):
        assert store.sources[row]["path"].endswith(f"{sid}.nii.gz")
