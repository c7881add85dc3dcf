"""One writer per store: a second writer (ingest or StoreWriter, another process) stops at once
naming the holder; the OS releases the lock of a killed holder; nothing is duplicated."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssltk.store import StoreError, StoreWriter, VolumeStore
from ssltk.store.lock import StoreLockedError, acquire, lock_path, release
from ssltk.store.verify import verify_store

# Holds a writer on argv[1] (creating or resuming it) until stdin closes or it is killed.
HOLDER = r"""
import sys, numpy as np
from pathlib import Path
from ssltk.store import ColumnSpec, StoreWriter
path = Path(sys.argv[1])
w = StoreWriter.resume(path) if path.exists() else StoreWriter.create(
    path, (1, 16, 16, 16), {"session": ColumnSpec("id")})
w.append(np.arange(16 ** 3, dtype=np.float32).reshape(1, 16, 16, 16), {"subject_id": "holder"})
w.flush()
print("ready", flush=True)
sys.stdin.read()
w.close()
"""


def _ssltk(*args) -> list[str]:
    return [sys.executable, "-m", "ssltk", *map(str, args)]


def _start_holder(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_second_writer_stops_at_once_naming_the_holder(tmp_path, flat_dir):
    out = tmp_path / "t1.h5"
    holder = _start_holder(out)
    try:
        assert f"pid {holder.pid} on host {socket.gethostname()}" in lock_path(out).read_text()
        res = subprocess.run(_ssltk("ingest", "nifti", flat_dir, "--out", out),
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 1, res.stdout + res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in res.stderr
        assert f"is being written by pid {holder.pid} on host {socket.gethostname()}" in lines[0]
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):  # the API, too
            StoreWriter.resume(out)
        with pytest.raises(StoreError, match=f"being written by pid {holder.pid}"):
            VolumeStore.open(out)  # no reading half-written HDF5: wait for the writer
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a crash: the OS drops the lock
        holder.wait(timeout=30)
        holder.stdin.close()
        holder.stdout.close()
    assert lock_path(out).exists()  # a stale lock file is left behind...
    with StoreWriter.resume(out) as w:  # ...and taken over by the next writer
        assert f"pid {os.getpid()}" in lock_path(out).read_text()
        w.append(np.eye(16, dtype=np.float32)[None, None].repeat(16, 1), {"subject_id": "next"})
    assert not lock_path(out).exists()  # removed on a clean close
    store = VolumeStore.open(out)
    assert store.meta["subject_id"].tolist() == ["holder", "next"] and verify_store(out).ok


@pytest.mark.slow
def test_two_ingests_started_together(tmp_path, nifti_tools):
    """Two real ``ssltk ingest`` of one store at the same time: one writes, the other stops at
    once naming it (or, if the first was already done, finds every row there)."""
    save_nifti, tiny_volume, _ = nifti_tools
    src = tmp_path / "src"
    for i in range(12):
        save_nifti(src / f"p{i:02d}.nii.gz", tiny_volume(i, (20, 20, 20)))
    out = tmp_path / "t1.h5"
    procs = [subprocess.Popen(_ssltk("ingest", "nifti", src, "--out", out),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.pid, *p.communicate(timeout=300), p.returncode) for p in procs]
    codes = sorted(r[3] for r in results)
    assert codes in ([0, 0], [0, 1]), results
    for pid, stdout, stderr, code in results:
        assert "Traceback" not in stderr
        if code == 1:
            other = next(r[0] for r in results if r[0] != pid)
            assert stderr.strip().startswith("Error: ") and len(stderr.strip().splitlines()) == 1
            assert f"is being written by pid {other} on host {socket.gethostname()}" in stderr
    assert verify_store(out).ok
    ids = VolumeStore.open(out).meta["subject_id"].tolist()
    assert sorted(ids) == [f"p{i:02d}" for i in range(12)]  # every file once
    assert not lock_path(out).exists()


def test_lock_is_reentrant_in_a_process_and_survives_a_vanished_file(tmp_path):
    store = tmp_path / "s.h5"
    first = acquire(store)
    assert acquire(store) == first  # the ingest holds it, then its writer takes it again
    release(store)
    assert first.exists()
    release(store)
    assert not first.exists()
    release(store)  # releasing what is not held is a no-op
