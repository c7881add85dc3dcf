"""Crash-safe checkpoints that load without executing code.

A checkpoint is one ``torch.save`` file holding ``{"format", "format_version", "ssltk_version",
"meta", "state"}``:

* ``state``: tensors, ``state_dict``s, optimizer and scheduler states, :func:`rng_state` –
  anything made of tensors and plain Python types (dict, list, tuple, str, int, float, bool,
  None), because :func:`load_checkpoint` always reads with ``torch.load(weights_only=True)``
  and so refuses (never runs) any other pickled object.
* ``meta``: JSON-able facts about the run (config hash, step, epoch, backbone name,
  :func:`package_versions`), checked with :func:`check_compatible` before resuming.

:func:`save_checkpoint` writes a temporary file in the target's directory, fsyncs it and renames
it over the target (``os.replace`` is atomic), so a crash, a kill or a full disk leaves either the
previous checkpoint or the new one, never a truncated file.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import platform
import random
import tempfile
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssltk.errors import SsltkError

FORMAT = "ssltk-checkpoint"
FORMAT_VERSION = 1
"""Bumped whenever the layout of ``state`` or ``meta`` written by the engine changes."""

_DISTRIBUTIONS = {"torch": "torch", "monai": "monai", "numpy": "numpy", "ssltk": "ssltk",
                  "sklearn": "scikit-learn", "h5py": "h5py"}


# -- versions ----------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str | None], ...]:
    found = [("python", platform.python_version())]
    for key, dist in _DISTRIBUTIONS.items():
        try:
            found.append((key, version(dist)))
        except PackageNotFoundError:
            found.append((key, None))
    return tuple(found)


def package_versions() -> dict[str, str | None]:
    """Versions of Python and of the packages that shape a result (None when not installed).

    Returns:
        ``{"python", "torch", "monai", "numpy", "ssltk", "sklearn", "h5py"}`` -> version string.
        Read from package metadata, so nothing heavy is imported.
    """
    return dict(_versions())


# -- saving ------------------------------------------------------------------------------------
def _write_error(path: Path, exc: OSError) -> SsltkError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return SsltkError(f"cannot write checkpoint {path}: {exc.strerror or 'disk full'}; free "
                          "disk space and run again to resume (any previous checkpoint there "
                          "is intact)")
    return SsltkError(f"cannot write checkpoint {path}: {exc.strerror or exc}; check that "
                      f"{path.parent} exists and is writable")


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_meta(meta: dict) -> dict:
    try:
        return json.loads(json.dumps(meta))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"checkpoint meta must be JSON-serialisable: {exc}") from None


def save_checkpoint(path: str | Path, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Atomically write ``state`` and ``meta`` to ``path``.

    Args:
        path: destination; its parent directory is created if needed.
        state: tensors and plain Python types (see the module docstring).
        meta: JSON-serialisable dict; stored as its JSON round trip (tuples become lists).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        SsltkError: the file cannot be written (disk full, permissions); the previous file at
            ``path``, if any, is untouched and no temporary file is left behind.
        TypeError: ``meta`` is not JSON-serialisable.
    """
    path = Path(path)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "ssltk_version": package_versions()["ssltk"], "meta": _json_meta(meta),
               "state": state}
    tmp: str | None = None
    done = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        # Serialised in memory first: torch's zip writer turns a failed write (disk full)
        # into a RuntimeError without its errno; a plain write keeps the OSError.
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        done = True
    except OSError as exc:
        raise _write_error(path, exc) from None
    finally:
        if not done and tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


# -- loading -----------------------------------------------------------------------------------
def _corrupted(path: Path, reason: str) -> SsltkError:
    return SsltkError(f"checkpoint {path} is corrupted or not an ssltk checkpoint ({reason}); "
                      "delete it to restart from scratch")


def _reason(exc: Exception) -> str:
    if isinstance(exc, pickle.UnpicklingError):
        return ("it holds objects other than tensors and plain Python types, which "
                "torch.load(weights_only=True) refuses to unpickle")
    lines = str(exc).strip().splitlines()
    first = lines[0].split(". ")[0][:160] if lines else ""  # torch's messages run on and on
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu",
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`, safely.

    Always uses ``torch.load(..., weights_only=True)``: a file holding arbitrary pickled objects
    is refused, never executed.

    Args:
        path: the checkpoint file.
        map_location: where to put the tensors (as for ``torch.load``).

    Returns:
        ``(state, meta)``.

    Raises:
        SsltkError: the file is missing, unreadable, truncated, not an ssltk checkpoint, or of
            another checkpoint format version (one line, naming the file and the fix).
    """
    path = Path(path)
    if not path.is_file():
        raise SsltkError(f"checkpoint {path} does not exist; check the path")
    try:
        f = path.open("rb")
    except OSError as exc:
        raise SsltkError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    with f:
        try:
            payload = torch.load(f, map_location=map_location, weights_only=True)
        except Exception as exc:  # bad files raise anything: RuntimeError, EOFError, OSError...
            raise _corrupted(path, _reason(exc)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise _corrupted(path, "no ssltk checkpoint header")
    found = payload.get("format_version")
    if found != FORMAT_VERSION:
        writer = payload.get("ssltk_version") or "unknown"
        raise SsltkError(
            f"checkpoint {path} has format version {found} (written by ssltk {writer}) but "
            f"this ssltk ({package_versions()['ssltk']}) reads version {FORMAT_VERSION}; "
            f"load it with ssltk {writer} or delete it to restart from scratch")
    return payload["state"], payload["meta"]


_FIXES = {
    "config_hash": "it was written by another configuration (the configuration changed since); "
                   "use another output directory, or delete it to restart from scratch",
    "backbone": "use the backbone it was trained with, or delete the checkpoint",
}


def check_compatible(meta: dict[str, Any], expected: dict[str, Any],
                     source: str = "checkpoint", fix: str | None = None) -> None:
    """Raise if ``meta`` disagrees with ``expected`` on any key ``expected`` names.

    The one check of a checkpoint or encoder against the run that reads it: pretraining's
    resume and reuse (``config_hash``), finetuning's encoder (``backbone``).

    Args:
        meta: the ``meta`` returned by :func:`load_checkpoint`.
        expected: key -> value the current run needs (``{"backbone": "resnet50",
            "config_hash": "..."}``); a key missing from ``meta`` counts as a mismatch.
        source: how to name the checkpoint in the message (usually its path).
        fix: the advice that ends the message (default: one per key).

    Raises:
        SsltkError: naming the first mismatching key, both values and the fix.
    """
    for key, want in expected.items():
        have = meta.get(key, "<missing>")
        if have != want:
            advice = fix or _FIXES.get(key, f"use the same {key}, or delete the checkpoint to "
                                            "restart from scratch")
            raise SsltkError(f"{source} has {key} {have!r} but this run expects {want!r}; "
                             f"{advice}")


# -- random number generators ------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Capture the global RNG states in a ``weights_only``-loadable form.

    Returns:
        ``{"torch": ByteTensor, "cuda": [ByteTensor per device] (empty without CUDA),
        "numpy": {...plain ints and lists...}, "python": {...}}``.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    py_version, py_internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"bit_generator": str(name), "keys": [int(k) for k in keys], "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(py_version), "internal": list(py_internal),
                   "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states captured by :func:`rng_state`.

    Tensors may have been mapped to a GPU by ``load_checkpoint(map_location=...)``; they are
    moved back to the CPU as the setters require. CUDA states are restored for the devices
    present (a run resumed on fewer GPUs restores the first ones).
    """
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(cuda[i].cpu(), i)
    np_state = state["numpy"]
    np.random.set_state((np_state["bit_generator"], np.asarray(np_state["keys"], dtype=np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
