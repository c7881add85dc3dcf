"""Integer storage: the error bound, exact lattices, the zero anchor, decoding, the store path."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ssltk.store import StoreError, StoreWriter, VolumeStore
from ssltk.store.encoding import Encoding, decode_into, encode
from ssltk.store.schema import StoreArgumentError

pytestmark = pytest.mark.numerics


def _decoded(enc) -> np.ndarray:
    out = np.empty(enc.codes.shape, np.float32)
    decode_into(out, enc.codes, enc.scale, enc.offset, numpy_only=True)
    return out


def _rounding(x: np.ndarray) -> float:
    """float32 arithmetic of the decode: a few ulps of the largest magnitude."""
    return 4 * float(np.spacing(np.float32(np.abs(x).max())))


finite = st.floats(-1e5, 1e5, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float32, st.integers(1, 400), elements=finite),
       spec=st.sampled_from([("auto", None), ("auto", 0.01), ("auto", 0.001), ("uint8", None),
                             ("uint16", None), ("uint16", 1e-3)]))
@example(x=np.array([1e-45, 0.0], np.float32), spec=("auto", None))  # a denormal span
def test_error_never_exceeds_the_stated_bound(x, spec):
    enc = Encoding.resolve(*spec)
    span = float(x.max()) - float(x.min())
    try:
        out = encode(x, enc)
    except StoreError as err:  # refused, never stored flat: only a span no dtype can resolve
        assert "reads this volume back as constant" in str(err)
        assert span < 1e-30 or span <= 4 * np.spacing(np.float32(np.abs(x).max()))
        return
    error = np.abs(_decoded(out).astype(np.float64) - x).max()
    assert error <= enc.bound * span + _rounding(x)
    assert out.error == pytest.approx(float(np.abs(_decoded(out) - x).max()))
    assert out.codes.dtype == enc.dtype


@settings(max_examples=40, deadline=None)
@given(levels=st.integers(2, 256), step=st.floats(1e-3, 50.0), shift=st.floats(-1e3, 1e3),
       seed=st.integers(0, 2**16))
def test_data_on_a_lattice_are_stored_exactly(levels, step, shift, seed):
    """8-bit-like data (any scale and offset): the codes are the source's own grey levels."""
    base = shift * step  # offsets of up to 1000 steps: the lattice stays resolved in float32
    rng = np.random.default_rng(seed)
    k = rng.integers(0, levels, 500)
    k[:2] = [0, levels - 1]
    x = (base + step * k).astype(np.float32)
    out = encode(x, Encoding.resolve("uint8"))
    assert out.error <= _rounding(x)
    assert len(np.unique(out.codes)) == len(np.unique(x))


def test_auto_keeps_a_coarse_lattice_and_requantises_a_fine_one():
    coarse = (np.arange(60) / 59).astype(np.float32)  # 60 levels: coarser than 2/128
    fine = (np.arange(200) / 199).astype(np.float32)  # 200 levels: finer
    auto = Encoding.resolve("auto")
    assert auto.dtype == "uint8" and auto.max_error == 1 / 128
    assert encode(coarse, auto).error <= _rounding(coarse)
    out = encode(fine, auto)
    assert 0.5 / 199 < out.error <= 1 / 128 + 1e-7 and out.codes.max() <= 64


def test_zero_stays_zero_when_the_range_spans_it():
    x = np.concatenate([np.zeros(50), np.linspace(-3.3, 7.9, 1000)]).astype(np.float32)
    for enc in (Encoding.resolve("auto"), Encoding.resolve("uint8"), Encoding.resolve("uint16")):
        decoded = _decoded(encode(x, enc))
        assert (decoded[:50] == 0).all()


def test_constant_and_2d_volumes():
    for x in (np.full((1, 4, 5), 3.25, np.float32), np.zeros((1, 3, 3, 3), np.float32)):
        out = encode(x, Encoding.resolve("auto"))
        np.testing.assert_array_equal(_decoded(out), x)


def test_torch_and_numpy_decoding_agree_bit_for_bit():
    import torch  # noqa: F401  (decode_into takes torch's path once it is imported)

    x = np.random.default_rng(0).normal(3, 2, (7, 9, 11)).astype(np.float32)
    for spec in (("auto", None), ("uint16", None)):
        enc = encode(x, Encoding.resolve(*spec))
        a, b = np.empty_like(x), np.empty_like(x)
        decode_into(a, enc.codes, enc.scale, enc.offset)
        decode_into(b, enc.codes, enc.scale, enc.offset, numpy_only=True)
        np.testing.assert_array_equal(a, b)


def test_resolve_rules():
    assert Encoding.resolve("auto", 0.01).dtype == "uint8"
    assert Encoding.resolve("auto", 1e-4).dtype == "uint16"
    assert Encoding.resolve("uint8").bound == pytest.approx(1 / 508)
    assert Encoding.resolve("float32").bound == 0
    for bad in [("float16", 0.01), ("auto", -1.0), ("auto", float("nan")), ("int8", None)]:
        with pytest.raises(StoreArgumentError):
            Encoding.resolve(*bad)
    assert StoreArgumentError("x").exit_code == 2


def test_store_round_trip_per_volume_scale(tmp_path):
    """Volumes of very different ranges in one uint8 store each keep their own bound."""
    rng = np.random.default_rng(1)
    vols = [rng.normal(0, 1, (1, 6, 6, 6)).astype(np.float32) * g for g in (1e-3, 1.0, 5e3)]
    path = tmp_path / "u8.h5"
    with StoreWriter.create(path, (1, 6, 6, 6), {}, dtype="auto", max_error=0.01,
                            flush_every=2) as w:
        for i, v in enumerate(vols):
            w.append(v, {"subject_id": f"s{i}"})
    store = VolumeStore.open(path)
    assert store.dtype == np.uint8 and store.encoding.max_error == 0.01
    worst = 0.0
    for i, v in enumerate(vols):
        err = float(np.abs(store[i] - v).max())
        assert err <= 0.01 * float(v.max() - v.min()) + _rounding(v)
        worst = max(worst, err)
    assert store.attrs["max_abs_error"] == pytest.approx(worst, rel=1e-5)
    with h5py.File(path) as f:  # the documented layout: decodable without ssltk
        codes, scale, offset = f["volumes"][2], f["encoding/scale"][2], f["encoding/offset"][2]
        np.testing.assert_allclose(offset + scale * codes, store[2], rtol=1e-6, atol=1e-3)
        assert f["volumes"].fletcher32 and f["meta/subject_id"].fletcher32
    with pytest.raises(ValueError, match="float32"):
        store.read_into([0], np.empty((1, 1, 6, 6, 6), np.uint8))


def test_float16_store_still_refuses_its_overflow(tmp_path):
    with StoreWriter.create(tmp_path / "h.h5", (1, 2, 2, 2), {}, dtype="float16") as w:
        with pytest.raises(StoreError, match="beyond float16"):
            w.append(np.full((1, 2, 2, 2), 1e6, np.float32), {"subject_id": "a"})
