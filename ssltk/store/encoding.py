"""How volumes are stored: float32, float16, or integer codes with a per-volume scale and offset.

Integer storage works like NIfTI's ``scl_slope``/``scl_inter``, with one ``(scale, offset)``
per volume: a volume ``x`` is stored as codes ``c`` (uint8 or uint16) and read back as
``offset + scale * c`` in float32. Per volume, the encoder picks:

* **the volume's own lattice, exactly**, when its values already lie on an evenly spaced grid
  that the dtype can hold and that is at least as coarse as the tolerance allows (or has no
  more levels than the grid below would have). Scans whose
  source is 8- or 16-bit integers keep that structure through reorientation, percentile or
  min-max scaling, clipping, cropping and zero padding, so their codes are the source's own
  grey levels (error: float32 rounding, ~1e-7 of the range);
* otherwise **a uniform grid of step 2 x max_error x range** (at least range / (levels - 2)),
  anchored so that 0 stays exactly 0 when the volume spans it (background, padding): every
  value moves by at most ``max_error`` x (max - min) of that volume.

``max_error`` is a fraction of each volume's intensity range. ``--dtype auto`` (the ingest
default) stores uint8 codes with ``max_error = 1/128``: at most 0.78 % of the range (0.0078 on
percentile-normalised [0, 1] volumes), the choice that makes real skull-on scans compact (see
docs/performance.md). ``uint16`` (``max_error`` 0) keeps integer-valued data exactly and
anything else within 1/131068 of its range. float16 stores keep the old behaviour (relative
error 2^-11, values up to 65504); float32 is exact.

Measured alternative, left out: float16 with its mantissa rounded to fewer bits compresses
worse than a uniform integer grid with the same maximum error (docs/store.md).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from ssltk.store.schema import FLOAT16_MAX, StoreArgumentError, StoreError

DTYPES = ("auto", "float32", "float16", "uint8", "uint16")
INTEGER = {"uint8": 255, "uint16": 65535}  # largest code
DEFAULT_MAX_ERROR = 1 / 128


@dataclass(frozen=True)
class Encoding:
    """The on-disk representation of a store's volumes.

    Attributes:
        dtype: on-disk dtype: ``float32``, ``float16``, ``uint8`` or ``uint16``.
        max_error: integer dtypes: the tolerance, as a fraction of each volume's range
            (0 = the finest grid the dtype holds); None for float dtypes.
        requested: what the user asked for (``auto`` resolves to an integer dtype).
    """

    dtype: str
    max_error: float | None = None
    requested: str = ""

    @classmethod
    def resolve(cls, dtype: str, max_error: float | None = None) -> Encoding:
        """The encoding of ``--dtype`` and ``--max-error``.

        ``auto``: uint8 when ``max_error`` (default 1/128) is at least 1/508, else uint16.

        Raises:
            StoreError: unknown dtype, a negative/non-finite tolerance, or a tolerance given
                with a float dtype.
        """
        if dtype not in DTYPES:
            raise StoreArgumentError(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}")
        if max_error is not None and not (math.isfinite(max_error) and 0 <= max_error < 0.5):
            raise StoreArgumentError(f"max error {max_error} must be a fraction of the intensity "
                                     f"range in [0, 0.5), e.g. 0.0078125 (1/128); 0 keeps the "
                                     f"finest grid")
        if dtype in ("float32", "float16"):
            if max_error is not None:
                raise StoreArgumentError(f"--max-error applies to integer storage (auto, uint8, "
                                         f"uint16), not to {dtype}; drop it or choose --dtype "
                                         f"auto")
            return cls(dtype, None, dtype)
        if dtype == "auto":
            tol = DEFAULT_MAX_ERROR if max_error is None else float(max_error)
            return cls("uint8" if tol >= _finest("uint8") else "uint16", tol, "auto")
        return cls(dtype, float(max_error or 0.0), dtype)

    @property
    def is_integer(self) -> bool:
        return self.dtype in INTEGER

    @property
    def bound(self) -> float:
        """Guaranteed max abs error as a fraction of a volume's range (integer dtypes)."""
        if self.dtype == "float32":
            return 0.0
        if self.dtype == "float16":
            return math.nan  # relative to each value, not to the range: 2^-11 |x|
        return max(float(self.max_error or 0.0), _finest(self.dtype))

    def record(self) -> dict:
        """JSON-able description, stored as the root attribute ``encoding``."""
        rec = {"dtype": self.dtype, "requested": self.requested or self.dtype}
        if self.is_integer:
            rec.update(max_error=self.max_error, bound=self.bound,
                       rule="per volume: its own lattice exactly when coarse enough, else a "
                            "uniform grid; |error| <= bound * (max - min) of the volume")
        elif self.dtype == "float16":
            rec["rule"] = "round to nearest float16: |error| <= 2^-11 * |value|"
        return rec

    @classmethod
    def from_record(cls, rec: dict | None, stored_dtype: str) -> Encoding:
        """The encoding of an existing store (stores before version 2 have no record)."""
        if not rec:
            return cls(stored_dtype, None, stored_dtype)
        return cls(rec["dtype"], rec.get("max_error"), rec.get("requested", rec["dtype"]))


@dataclass
class Encoded:
    """One volume as stored: codes, the ``(scale, offset)`` that decode them, and the error."""

    codes: np.ndarray
    scale: float = 1.0
    offset: float = 0.0
    error: float = 0.0  # max |decoded - original| over the volume


def _finest(dtype: str) -> float:
    """Smallest tolerance of a dtype: a grid of ``levels - 2`` steps (one spare for the zero
    anchor)."""
    return 1.0 / (2 * (INTEGER[dtype] - 1))


def encode(volume: np.ndarray, enc: Encoding) -> Encoded:
    """Encode one finite volume (any shape, float32) as ``enc`` says.

    Raises:
        StoreError: values beyond float16's range in a float16 store.
    """
    x = np.asarray(volume, dtype=np.float32)
    if enc.dtype == "float32":
        return Encoded(x.copy())
    if enc.dtype == "float16":
        peak = float(np.abs(x).max()) if x.size else 0.0
        if peak > FLOAT16_MAX:
            raise StoreError(f"values up to {peak:g}, beyond float16's {FLOAT16_MAX:g}; "
                             f"normalise intensities first (--normalize percentile) or use "
                             f"another --dtype")
        codes = x.astype(np.float16)
        _check_resolved(codes, x, enc)
        return Encoded(codes, error=_max_abs_diff(codes.astype(np.float32), x))
    return _encode_integer(x, enc)


def _check_resolved(decoded: np.ndarray, x: np.ndarray, enc: Encoding) -> None:
    """Refuse a volume with structure that the stored dtype reads back as constant (a range
    of a few float16 or float32 steps at its magnitude): a store never holds a flattened
    volume."""
    if x.size and x.min() != x.max() and decoded.min() == decoded.max():
        raise StoreError(f"{enc.dtype} storage reads this volume back as constant (its values "
                         f"span only {float(x.max()) - float(x.min()):g} around "
                         f"{float(x.min()):g}); use --dtype float32, or normalise intensities "
                         f"(--normalize percentile)")


def _encode_integer(x: np.ndarray, enc: Encoding) -> Encoded:
    top = INTEGER[enc.dtype]
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    span = hi - lo
    if span == 0:
        return Encoded(np.zeros(x.shape, enc.dtype), 1.0, lo, 0.0)
    coarsest = 2 * float(enc.max_error or 0.0) * span  # the grid step the tolerance allows
    step = max(coarsest, span / (top - 1))  # one code spare for the zero anchor
    lattice = _lattice_step(x, lo, hi, top)  # fits the codes when not None
    # Keep the lattice when the tolerance allows no coarser grid, or when the grid would not
    # have fewer levels (then it only adds error).
    if lattice is not None and (lattice >= coarsest * (1 - 1e-9)
                                or round(span / lattice) <= math.floor(span / step) + 1):
        scale, offset = _f32(lattice), lo  # the volume's own grey levels, exactly
    else:
        scale = _f32(step)
        anchor = math.ceil(-lo / scale) if lo < 0 < hi else 0  # code that decodes to 0
        offset = lo if anchor == 0 else -float(np.float32(anchor) * np.float32(scale))
    codes = np.rint((x.astype(np.float64) - offset) / scale)
    codes = np.clip(codes, 0, top).astype(enc.dtype)
    decoded = np.empty(x.shape, np.float32)
    decode_into(decoded, codes, scale, offset, numpy_only=True)
    _check_resolved(decoded, x, enc)
    error = _max_abs_diff(decoded, x)
    limit = enc.bound * span + 4 * np.spacing(np.float32(max(abs(lo), abs(hi))))
    if error > limit:  # cannot happen unless the arithmetic above is wrong: never store it
        raise StoreError(f"internal error: {enc.dtype} encoding error {error:g} exceeds its "
                         f"bound {limit:g}; store this volume with --dtype float32")
    return Encoded(codes, scale, offset, error)


def _lattice_step(x: np.ndarray, lo: float, hi: float, top: int) -> float | None:
    """Step ``s`` of an evenly spaced grid ``lo + s * k`` (k = 0..<= top) holding every value
    of ``x`` (up to float32 rounding), or None."""
    values = np.unique(x)
    if values.size > top + 1:
        return None
    gaps = np.diff(values.astype(np.float64))
    span = hi - lo
    # Values are float32: each sits within ~2 ulps of its lattice point. A lattice is only
    # trusted when that slack is a small fraction (1/8) of its step.
    ulp = float(np.spacing(np.float32(max(abs(lo), abs(hi)))))
    tol = 4 * ulp
    s0 = float(gaps.min())
    if s0 < 8 * tol:
        return None
    # The smallest gap is one step, give or take the rounding of its two ends: try every step
    # count that rounding allows (a handful), and the count of distinct values.
    counts = range(math.floor(span / (s0 + tol)), math.ceil(span / (s0 - tol)) + 1)
    if len(counts) > 64:
        return None
    for n in sorted({values.size - 1, *counts}):
        if 1 <= n <= top and span / n >= 8 * tol:
            step = span / n
            k = np.rint((values - lo) / step)
            if float(np.abs(lo + k * step - values).max()) <= tol:
                return step
    return None


def _f32(v: float) -> float:
    """``v`` rounded to float32: the decoder multiplies in float32, the encoder must agree."""
    return float(np.float32(v))


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max()) if a.size else 0.0


def decode_into(out: np.ndarray, codes: np.ndarray, scale: float, offset: float,
                numpy_only: bool = False) -> None:
    """``out[...] = offset + scale * codes`` in float32 (``out`` float32, same shape).

    Two in-place passes after the cast (none when ``scale == 1`` and ``offset == 0``);
    through torch when it is already imported (its casts are ~3x numpy's), else numpy. Both
    round identically: float32 multiply, then float32 add.
    """
    torch = None if numpy_only else sys.modules.get("torch")
    s, o = np.float32(scale), np.float32(offset)
    if torch is not None:
        t = torch.from_numpy(out)
        t.copy_(torch.from_numpy(codes))
        if s != 1:
            t.mul_(float(s))
        if o != 0:
            t.add_(float(o))
        return
    np.copyto(out, codes, casting="unsafe")
    if s != 1:
        np.multiply(out, s, out=out)
    if o != 0:
        np.add(out, o, out=out)
