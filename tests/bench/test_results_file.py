"""results.jsonl under failure: a full disk mid-append, a half line left by a killed writer.

The full disk is real: the append runs in its own process under a file-size limit
(``RLIMIT_FSIZE``: ``write`` fails with EFBIG past it, the error path of ENOSPC).
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import textwrap

from ssltk.bench.results import append_result, read_results

APPEND = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from ssltk.bench.results import append_result
    append_result(Path(sys.argv[1]), json.loads(sys.stdin.read()))
""")


def record(cell: str, n_predictions: int = 4) -> dict:
    return {"cell": cell, "method": "scratch", "mode": "frozen", "budget": {}, "seed": 0,
            "repeat": 0, "split_hash": "h", "task": "classification", "metrics": {"auc": 0.5},
            "predictions": {"proba": [0.25] * n_predictions}}


def append_in_a_process(path, rec: dict, file_size_limit: int):
    def limit() -> None:  # in the child
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run([sys.executable, "-c", APPEND, str(path)], input=json.dumps(rec),
                          capture_output=True, text=True, timeout=120, preexec_fn=limit)


def test_a_full_disk_mid_append_keeps_every_earlier_line_and_the_rerun_appends(tmp_path):
    path = tmp_path / "results.jsonl"
    append_result(path, record("a"))
    append_result(path, record("b"))
    before = path.read_bytes()
    big = record("c", n_predictions=20_000)  # ~120 KB: the write stops part-way at the limit
    failed = append_in_a_process(path, big, file_size_limit=len(before) + 4096)
    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]
    assert f"cannot append to {path}: File too large; the results written before are kept; " \
           "free disk space and re-run the same command to resume" in last
    assert path.read_bytes() == before  # the half-written line was cut back
    append_result(path, big)  # space is back
    assert [r["cell"] for r in read_results(path)] == ["a", "b", "c"]


def test_a_half_line_left_by_a_killed_writer_does_not_swallow_the_next_record(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    append_result(path, record("a"))
    with path.open("a") as f:
        f.write(json.dumps(record("b"))[:40])  # kill -9 mid-write: no newline
    append_result(path, record("c"))
    assert [r["cell"] for r in read_results(path)] == ["a", "c"]
    assert "half-written" in caplog.text
