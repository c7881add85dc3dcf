"""Intensity normalisation of ``ssltk ingest nifti`` (``--normalize``), and the rule that no
preprocessing step turns an image with structure into a constant volume.

Modes (of one volume):

* ``percentile`` (the default): clip to the 0.5th-99.5th percentiles and scale to [0, 1].
  When the two percentiles coincide (over 99 % of the voxels share one value: a sparse binary
  mask, a small lesion map), the full range min..max is used instead, so a 0/255 mask is
  stored as 0/1 rather than refused or flattened.
* ``zscore``: zero mean and unit variance inside the foreground ``x > min + 1% of the range``,
  0 outside. A foreground with a single value (a binary mask) has no z-score: every voxel
  would become 0, so the file is refused with one line naming ``percentile``.
* ``none``: the values as they are; the only mode that keeps a constant image (the others
  refuse it: there is no range to scale).

A step that flattens an image all the same (resampling that misses a tiny foreground, a crop
that cuts it away, float rounding) is caught by :func:`check_not_flattened`, so a store never
receives a constant volume made from a non-constant file.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ssltk.store.schema import StoreArgumentError

Normalize = Literal["none", "zscore", "percentile"]
MODES = ("none", "zscore", "percentile")
PERCENTILES = (0.5, 99.5)
FOREGROUND = 0.01
"""``zscore``'s foreground: voxels above ``min + FOREGROUND * (max - min)``."""


def is_constant(x: np.ndarray) -> bool:
    """Whether every value of ``x`` is the same (an empty array counts as constant)."""
    return x.size == 0 or bool(x.min() == x.max())


def _percent(fraction: float) -> str:
    """``0.97 -> "97%"``, ``0.00012 -> "0.012%"``, ``0.99993 -> "99.993%"``: three significant
    digits, more where they would round a part to none or to all of it."""
    for digits in range(3, 10):
        text = f"{100 * fraction:.{digits}g}"
        if (float(text) in (0, 100)) == (fraction in (0, 1)):
            break
    return f"{text}%"


def background_share(x: np.ndarray) -> tuple[float, float]:
    """``(value, fraction)`` of the most frequent value of ``x``: the background of a mask."""
    values, counts = np.unique(x, return_counts=True)
    k = int(counts.argmax())
    return float(values[k]), float(counts[k]) / x.size


def constant_error(x: np.ndarray) -> ValueError:
    """The one-line refusal of a constant image by ``percentile`` and ``zscore``."""
    return ValueError(f"image is constant (every voxel is {float(x.flat[0]):g}): there is no "
                      f"intensity range to normalise and nothing to learn; remove the file "
                      f"(only --normalize none stores it as it is)")


def normalize(x: np.ndarray, mode: Normalize) -> np.ndarray:
    """Intensity normalisation of a volume (any shape), see the module docstring.

    Raises:
        ValueError: the image is constant (``percentile``, ``zscore``) or a binary mask
            (``zscore``); one line saying what happened and the ``--normalize`` that fits.
        StoreArgumentError: an unknown mode.
    """
    if mode not in MODES:
        raise StoreArgumentError(f"--normalize '{mode}' is not one of {', '.join(MODES)}")
    if mode == "none":
        return x
    if is_constant(x):
        raise constant_error(x)
    out = _percentile(x) if mode == "percentile" else _zscore(x)
    check_not_flattened(x, out, f"--normalize {mode}",
                        "use --normalize none" if mode == "percentile" else
                        "use --normalize percentile or none")
    return out


def _percentile(x: np.ndarray) -> np.ndarray:
    lo, hi = (float(v) for v in np.percentile(x, PERCENTILES))
    if hi <= lo:  # a sparse mask: over 99% of the voxels share one value
        lo, hi = float(x.min()), float(x.max())
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _zscore(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    mask = x > lo + FOREGROUND * (hi - lo)
    fg = x[mask]
    if is_constant(fg):  # one foreground level: every voxel would become 0
        value, share = background_share(x)
        raise ValueError(f"the z-score's foreground ({_percent(mask.mean())} of the voxels) has "
                         f"the single value {float(fg[0]):g}, so every voxel would become 0: "
                         f"the image is a binary mask ({_percent(share)} of it is {value:g}); "
                         f"use --normalize percentile (stores its levels as 0 and 1) or none")
    mean, std = float(fg.mean()), float(fg.std())
    return np.where(mask, (x - mean) / max(std, 1e-8), 0.0).astype(np.float32)


def check_not_flattened(before: np.ndarray, after: np.ndarray, step: str, fix: str) -> None:
    """Raise a one-line ValueError when ``step`` turned a non-constant ``before`` into a
    constant ``after``; ``fix`` says what to change."""
    if is_constant(after) and not is_constant(before):
        value, share = background_share(before)
        raise ValueError(f"{step} turned the image into a constant volume (every voxel "
                         f"{float(after.flat[0]):g}; {_percent(share)} of the source is "
                         f"{value:g}, the rest differs); {fix}")
