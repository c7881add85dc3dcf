"""Random and mutated bytes as NIfTI files, images and participants tables: ``ssltk ingest``
never shows a traceback; a bad file is one ``Error:`` line naming it (exit 1), or, with
``--on-error skip``, a listed skip; bad options are usage errors (exit 2).

Hypothesis generates the inputs (few examples: each runs the real CLI on real files).
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from ssltk.cli import app

FUZZ = settings(max_examples=12, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _run(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    # CliRunner turns an uncaught exception into exit code 1: that is a traceback for a user.
    assert res.exception is None or isinstance(res.exception, SystemExit), \
        f"uncaught {type(res.exception).__name__}: {res.exception}\n{res.output}"
    assert "Traceback" not in res.output
    return res


def _assert_one_line_naming(res, name: str) -> None:
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and name in lines[0], res.output


def _valid_nifti_bytes(seed: int) -> bytes:
    data = np.random.default_rng(seed).random((10, 12, 8), dtype=np.float32) * 100
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    return img.to_bytes()


def _mutate(raw: bytes, data) -> bytes:
    """Overwrite a few bytes, mostly in the 348-byte header (dims, datatype, pixdim, offsets)."""
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, min(len(out) - 1, 400)))
        out[pos] = data.draw(st.integers(0, 255))
    return bytes(out)


def _ingest_one_nifti(folder: Path, name: str, payload: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    if name.endswith(".gz"):
        payload = gzip.compress(payload)
    (folder / name).write_bytes(payload)
    out = folder.parent / f"{folder.name}.h5"
    abort = _run("ingest", "nifti", folder, "--out", out, "--shape", 8, 8, 8)
    skip = _run("ingest", "nifti", folder, "--out", out, "--shape", 8, 8, 8, "--on-error",
                "skip", "--overwrite")
    return abort, skip, out


@FUZZ
@given(payload=st.binary(max_size=1200), gz=st.booleans(), as_gz_stream=st.booleans())
def test_random_bytes_as_nifti(tmp_path_factory, payload, gz, as_gz_stream):
    folder = tmp_path_factory.mktemp("rnd") / "src"
    name = "sub-x_T1w.nii" + (".gz" if gz else "")
    if gz and not as_gz_stream:  # random bytes named .nii.gz (not even gzip)
        folder.mkdir(parents=True)
        (folder / name).write_bytes(payload)
        out = folder.parent / "o.h5"
        abort = _run("ingest", "nifti", folder, "--out", out)
        _assert_one_line_naming(abort, name)
        return
    abort, skip, out = _ingest_one_nifti(folder, name, payload)
    _assert_one_line_naming(abort, name)
    assert skip.exit_code == 0 and "1 skipped" in skip.output
    listed = (out.parent / (out.name + ".skipped.tsv")).read_text().splitlines()
    assert len(listed) == 2 and listed[1].split("\t")[0] == str(folder / name)


@FUZZ
@given(data=st.data(), seed=st.integers(0, 3), gz=st.booleans())
def test_mutated_nifti_header(tmp_path_factory, data, seed, gz):
    """A corrupt header either still describes a usable image (ingested) or is one line."""
    folder = tmp_path_factory.mktemp("mut") / "src"
    name = "sub-y_T1w.nii" + (".gz" if gz else "")
    abort, skip, out = _ingest_one_nifti(folder, name, _mutate(_valid_nifti_bytes(seed), data))
    if abort.exit_code == 0:
        assert "1 row(s) written" in abort.output
    else:
        _assert_one_line_naming(abort, name)
        assert skip.exit_code == 0 and "1 skipped" in skip.output


@pytest.mark.slow
def test_header_nibabel_repairs_prints_nothing_else(tmp_path):
    """nibabel logs the header faults it repairs (invalid qform code, odd vox_offset) on
    stderr; a real ``ssltk ingest`` process keeps its output to its own lines."""
    import subprocess
    import sys

    raw = bytearray(_valid_nifti_bytes(0))
    raw[252:254] = (9984).to_bytes(2, "little")  # qform_code: not a valid code
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "q.nii").write_bytes(bytes(raw))
    proc = subprocess.run([sys.executable, "-m", "ssltk", "ingest", "nifti", str(tmp_path / "src"),
                           "--out", str(tmp_path / "o.h5"), "--shape", "8", "8", "8"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.strip().splitlines() == [f"ok {tmp_path / 'o.h5'}: 1 row(s) written"]


def _image_bytes(fmt: str, seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (9, 11), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@FUZZ
@given(data=st.data(), suffix=st.sampled_from([".png", ".jpg"]), mutate=st.booleans())
def test_random_and_mutated_images(tmp_path_factory, data, suffix, mutate):
    root = tmp_path_factory.mktemp("img")
    fmt = "PNG" if suffix == ".png" else "JPEG"
    good = root / "src" / "CN" / f"good{suffix}"
    good.parent.mkdir(parents=True)
    good.write_bytes(_image_bytes(fmt, 0))
    raw = _image_bytes(fmt, 1)
    if mutate:  # keep the signature, damage what follows
        out = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 8))):
            out[data.draw(st.integers(8, len(out) - 1))] = data.draw(st.integers(0, 255))
        payload = bytes(out)
    else:
        payload = data.draw(st.binary(max_size=600))
    bad = root / "src" / "AD" / f"bad{suffix}"
    bad.parent.mkdir()
    bad.write_bytes(payload)
    store = root / "i.h5"
    abort = _run("ingest", "images", root / "src", "--out", store, "--size", 6, 6)
    if abort.exit_code == 0:  # damage a decoder tolerates (JPEG data, PNG ancillary chunk)
        assert "2 row(s) written" in abort.output
        return
    _assert_one_line_naming(abort, "bad" + suffix)
    skip = _run("ingest", "images", root / "src", "--out", store, "--size", 6, 6,
                "--on-error", "skip")
    assert skip.exit_code == 0 and "1 skipped" in skip.output


cells = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@FUZZ
@given(payload=st.one_of(st.binary(max_size=400).map(lambda b: ("bin", b)),
                         st.text(max_size=300).map(lambda t: ("txt", t)),
                         st.lists(st.lists(cells, min_size=1, max_size=4), max_size=5)
                         .map(lambda rows: ("table", rows))),
       suffix=st.sampled_from([".tsv", ".csv", ".txt"]))
def test_random_participants_table(tmp_path_factory, payload, suffix):
    root = tmp_path_factory.mktemp("tab")
    src = root / "src"
    src.mkdir()
    (src / "s1.nii").write_bytes(_valid_nifti_bytes(0))
    table = root / f"participants{suffix}"
    kind, value = payload
    if kind == "bin":
        table.write_bytes(value)
    elif kind == "txt":
        table.write_text(value, encoding="utf-8", errors="surrogatepass")
    else:  # a header with an id column, then random cells
        sep = "," if suffix == ".csv" else "\t"
        lines = ["participant_id" + sep + "age"] + [sep.join(r) for r in value]
        table.write_text("\n".join(lines), encoding="utf-8")
    res = _run("ingest", "nifti", src, "--out", root / "o.h5", "--participants", table,
               "--shape", 8, 8, 8)
    if res.exit_code == 0:
        return  # the random table happened to be valid and to describe s1
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert table.name in lines[0] or "s1.nii" in lines[0]


@pytest.mark.parametrize("args", [
    ("--dtype", "int4"),                                 # not a choice (typer)
    ("--max-error", "-0.1"),                             # out of range (typer)
    ("--max-error", "0.01", "--dtype", "float16"),       # a tolerance for a float dtype
    ("--compression", "brotli"),
    ("--shape", "0", "8", "8"),
    ("--spacing", "0"),
    ("--on-error", "ignore"),
])
def test_usage_errors_exit_2(args, flat_dir, tmp_path):
    res = _run("ingest", "nifti", flat_dir, "--out", tmp_path / "o.h5", *args)
    assert res.exit_code == 2, res.output
    assert not (tmp_path / "o.h5").exists()


def test_images_usage_errors_exit_2(tmp_path):
    (tmp_path / "src" / "A").mkdir(parents=True)
    for args in (("--size", "0", "4"), ("--size", "4"), ("--dtype", "float64")):
        res = _run("ingest", "images", tmp_path / "src", "--out", tmp_path / "o.h5", *args)
        assert res.exit_code == 2, (args, res.output)
    res = _run("ingest", "images", tmp_path / "missing", "--out", tmp_path / "o.h5",
               "--size", 4, 4)
    assert res.exit_code == 2
