"""Checkpoints: round trip, atomicity, safe loading, compatibility checks, RNG capture."""

from __future__ import annotations

import errno
import os
import random
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from ssltk.engine import checkpoint as ckpt
from ssltk.engine.checkpoint import (
    check_compatible, load_checkpoint, package_versions, rng_state, save_checkpoint, set_rng_state,
)
from ssltk.errors import SsltkError


class Evil:
    """Unpickling this would run code; weights_only loading must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def _state():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state(),
            "step_losses": [1.5, 1.25], "name": "x"}


def _meta(**extra):
    return {"config_hash": "abc", "step": 3, "epoch": 1, "backbone": "resnet18",
            "versions": package_versions(), **extra}


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name != "ckpt.pt")


def test_round_trip(tmp_path):
    state, meta = _state(), _meta(shape=(2, 3))
    path = save_checkpoint(tmp_path / "sub" / "ckpt.pt", state, meta)
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta == {**meta, "shape": [2, 3]}  # stored as its JSON round trip
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value)
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert loaded["step_losses"] == [1.5, 1.25]
    assert _leftovers(path.parent) == []


def test_meta_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "ckpt.pt", {}, {"t": torch.zeros(1)})


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "ckpt.pt", {"w": torch.ones(3)}, _meta(step=1))

    def half_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise RuntimeError("killed midway")

    monkeypatch.setattr(ckpt.torch, "save", half_save)
    with pytest.raises(RuntimeError, match="killed midway"):
        save_checkpoint(path, {"w": torch.zeros(3)}, _meta(step=2))
    state, meta = load_checkpoint(path)
    assert meta["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["save", "fsync"])
def test_disk_full_is_one_line_error(tmp_path, monkeypatch, where):
    path = save_checkpoint(tmp_path / "ckpt.pt", {"w": torch.ones(3)}, _meta(step=1))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch if where == "save" else ckpt.os, where, full)
    with pytest.raises(SsltkError, match="free disk space") as info:
        save_checkpoint(path, {"w": torch.zeros(3)}, _meta(step=2))
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    monkeypatch.undo()
    assert load_checkpoint(path)[1]["step"] == 1
    assert _leftovers(tmp_path) == []


def test_a_real_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.pt", {"w": torch.ones(3)}, _meta(step=1))
    code = ("import sys, torch; from ssltk.engine.checkpoint import save_checkpoint; "
            "save_checkpoint(sys.argv[1], {'w': torch.zeros(100_000)}, {'step': 2})")

    def small_disk() -> None:  # in the child: write() past 64 KB fails with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    failed = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                            text=True, timeout=120, preexec_fn=small_disk)
    assert failed.returncode != 0
    assert (f"SsltkError: cannot write checkpoint {path}: File too large; free disk space"
            in failed.stderr.strip().splitlines()[-1])
    assert load_checkpoint(path)[1]["step"] == 1
    assert _leftovers(tmp_path) == []


def test_truncated_file(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.pt", _state(), _meta())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SsltkError, match="corrupted or not an ssltk checkpoint") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "delete it" in message and "\n" not in message


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_garbage_file(tmp_path, content):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(content)
    with pytest.raises(SsltkError, match="corrupted"):
        load_checkpoint(path)


def test_arbitrary_pickle_is_refused_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION,
                "meta": {}, "state": {"x": Evil()}}, path)
    with pytest.raises(SsltkError, match="weights_only") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "pwned.txt").exists()


def test_plain_state_dict_is_not_an_ssltk_checkpoint(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(SsltkError, match="no ssltk checkpoint header"):
        load_checkpoint(path)


def test_other_format_version(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": ckpt.FORMAT, "format_version": 999, "ssltk_version": "9.9",
                "meta": {}, "state": {}}, path)
    with pytest.raises(SsltkError, match="format version 999 .*ssltk 9.9"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(SsltkError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_package_versions():
    versions = package_versions()
    assert set(versions) == {"python", "torch", "monai", "numpy", "ssltk", "sklearn", "h5py"}
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert versions["numpy"] == np.__version__


def test_check_compatible():
    meta = _meta()
    check_compatible(meta, {"backbone": "resnet18", "config_hash": "abc"})
    with pytest.raises(SsltkError, match="backbone 'resnet18' but this run expects 'resnet50'"):
        check_compatible(meta, {"backbone": "resnet50"}, source="runs/x/checkpoint.pt")
    with pytest.raises(SsltkError, match="config_hash .*configuration changed"):
        check_compatible(meta, {"config_hash": "def"})
    with pytest.raises(SsltkError, match="objective '<missing>'"):
        check_compatible(meta, {"objective": "simclr"})


def _draws():
    return (torch.rand(4).tolist(), np.random.rand(4).tolist(), np.random.randn(1).tolist(),
            [random.random() for _ in range(4)], random.gauss(0, 1))


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    np.random.randn(1), random.gauss(0, 1)  # leave cached gaussians in both states
    save_checkpoint(tmp_path / "ckpt.pt", {"rng": rng_state()}, {})
    expected = _draws()
    _draws()  # move every generator on
    state, _ = load_checkpoint(tmp_path / "ckpt.pt")
    set_rng_state(state["rng"])
    assert _draws() == expected
