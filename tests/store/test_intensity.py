"""No preprocessing turns an image with structure into a constant volume: property tests over
binary, sparse, constant and ordinary volumes for every ``--normalize`` mode (through the whole
ingest preprocessing and the store's encoding), the mask rule, the one-line refusals, and the
CLI on real 0/255 NIfTI masks and PNG masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from ssltk.cli import app
from ssltk.store import StoreError, VolumeStore
from ssltk.store.encoding import Encoding, decode_into, encode
from ssltk.store.ingest_nifti import NiftiOptions, preprocess
from ssltk.store.intensity import MODES, check_not_flattened, is_constant, normalize

KINDS = ("binary", "sparse", "constant", "ordinary")
PROPERTY = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
LEVELS = st.one_of(st.integers(-1000, 65535).map(float),
                   st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False, width=32))


@st.composite
def volumes(draw, kind: str) -> np.ndarray:
    """A 3D float32 volume of ``kind``: a two-level mask (3-60 % foreground), a sparse mask
    (1-3 voxels, under 0.5 %: its 0.5th and 99.5th percentiles coincide), one value, or a
    noisy ball on a background at any gain and offset."""
    low = 8 if kind == "sparse" else 3
    shape = tuple(draw(st.lists(st.integers(low, 12), min_size=3, max_size=3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    bg = draw(LEVELS)
    if kind == "constant":
        return np.full(shape, bg, np.float32)
    if kind == "ordinary":
        grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
        ball = np.sqrt((grid ** 2).sum(0)) < draw(st.floats(0.3, 0.9))
        gain = draw(st.floats(1, 1000))  # noise of many float32 steps at any offset
        return (bg + gain * (ball + 0.1 * rng.random(shape))).astype(np.float32)
    fg = draw(LEVELS.filter(lambda v: np.float32(v) != np.float32(bg)))
    x = np.full(math.prod(shape), bg, np.float32)
    n_fg = (draw(st.integers(1, 3)) if kind == "sparse"
            else max(1, round(draw(st.floats(0.03, 0.6)) * x.size)))
    x[rng.choice(x.size, n_fg, replace=False)] = fg
    return x.reshape(shape)


def _stored(x: np.ndarray, mode: str, shape, dtype: str) -> np.ndarray:
    """What ``ssltk ingest nifti`` stores for ``x``: preprocessing, then encode and decode."""
    volume, _ = preprocess(x, np.eye(4), NiftiOptions(shape=shape, normalize=mode))
    enc = encode(volume, Encoding.resolve(dtype))
    out = np.empty(volume.shape, np.float32)
    if enc.codes.dtype == np.float16 or enc.codes.dtype == np.float32:
        out[...] = enc.codes
    else:
        decode_into(out, enc.codes, enc.scale, enc.offset, numpy_only=True)
    return out


def _assert_one_line_fix(message: str) -> None:
    assert "\n" not in message and ("--normalize" in message or "--shape" in message
                                    or "--dtype" in message), message


@PROPERTY
@given(data=st.data(), kind=st.sampled_from(KINDS), mode=st.sampled_from(MODES),
       dtype=st.sampled_from(["auto", "float16", "float32"]),
       shape=st.one_of(st.none(), st.tuples(*[st.integers(2, 14)] * 3)))
def test_a_stored_volume_is_constant_only_when_its_source_is(data, kind, mode, dtype, shape):
    x = data.draw(volumes(kind))
    try:
        stored = _stored(x, mode, shape, dtype)
    except (ValueError, StoreError) as exc:
        _assert_one_line_fix(str(exc))
        # percentile keeps every mask's levels (a crop or a float16 store aside)
        assert not (mode == "percentile" and kind != "constant" and shape is None
                    and dtype != "float16"), str(exc)
        return
    if is_constant(x):
        assert mode == "none", "a constant image is kept by --normalize none only"
    else:
        assert not is_constant(stored)
    if mode == "percentile" and kind in ("binary", "sparse") and shape is None:
        assert np.unique(stored).tolist() == [0.0, 1.0]  # the mask rule: levels 0 and 1


@PROPERTY
@given(data=st.data(), kind=st.sampled_from(KINDS), mode=st.sampled_from(MODES))
def test_normalize_keeps_structure_or_refuses_in_one_line(data, kind, mode):
    x = data.draw(volumes(kind))
    try:
        out = normalize(x, mode)
    except ValueError as exc:
        _assert_one_line_fix(str(exc))
        assert mode != "none" and (kind != "ordinary"), str(exc)
        if kind == "constant":
            assert "image is constant" in str(exc) and "--normalize none" in str(exc)
        else:  # zscore of a one-level foreground: names the mode that fits
            assert mode == "zscore" and "binary mask" in str(exc) \
                and "--normalize percentile" in str(exc)
        return
    assert is_constant(out) == is_constant(x)


def test_a_sparse_mask_falls_back_to_its_full_range():
    x = np.zeros((10, 10, 10), np.float32)
    x[4, 5, 6] = 255  # 0.1% foreground: the 0.5th and 99.5th percentiles are both 0
    assert np.percentile(x, 99.5) == 0
    out = normalize(x, "percentile")
    assert out[4, 5, 6] == 1.0 and out.sum() == 1.0


def test_zscore_refuses_a_binary_mask_saying_what_happened():
    x = np.zeros((10, 10, 10), np.float32)
    x[:3] = 255
    with pytest.raises(ValueError) as err:
        normalize(x, "zscore")
    assert str(err.value) == (
        "the z-score's foreground (30% of the voxels) has the single value 255, so every voxel "
        "would become 0: the image is a binary mask (70% of it is 0); use --normalize "
        "percentile (stores its levels as 0 and 1) or none")


def test_a_crop_that_cuts_away_the_structure_is_refused():
    x = np.zeros((12, 12, 12), np.float32)
    x[0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="centre-cropping to --shape 4 4 4 turned the image "
                                         "into a constant.*pass a larger --shape"):
        preprocess(x, np.eye(4), NiftiOptions(shape=(4, 4, 4), normalize="none"))


def test_float16_storage_that_reads_a_volume_back_constant_is_refused():
    x = np.array([1000.0, 1000.1], np.float32)
    with pytest.raises(StoreError, match="float16 storage reads this volume back as constant"):
        encode(x, Encoding.resolve("float16"))


# -- the CLI on real mask files --------------------------------------------------------------
def _masks(root, nib) -> list:
    """Two 0/255 uint8 NIfTI masks as MedMNIST-3D's: a sparse one (2 voxels of 24^3, under
    0.5 %) and a ball of about 3 %."""
    root.mkdir()
    sparse = np.zeros((24, 24, 24), np.uint8)
    sparse[10, 11, 12] = sparse[11, 11, 12] = 255
    grid = np.stack(np.meshgrid(*[np.arange(24) - 11.5] * 3, indexing="ij"))
    ball = ((grid ** 2).sum(0) < 4.5 ** 2).astype(np.uint8) * 255
    for name, mask in (("m1", sparse), ("m2", ball)):
        nib.save(nib.Nifti1Image(mask, np.eye(4)), root / f"{name}.nii.gz")
    return [sparse, ball]


def _cli(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res


@pytest.mark.parametrize("mode, levels", [("percentile", [0.0, 1.0]), ("none", [0.0, 255.0]),
                                          ("zscore", None)])
def test_ingesting_binary_masks_keeps_two_levels_or_refuses_in_one_line(tmp_path, mode, levels):
    import nibabel as nib

    masks = _masks(tmp_path / "masks", nib)
    out = tmp_path / "masks.h5"
    res = _cli("ingest", "nifti", tmp_path / "masks", "--out", out, "--normalize", mode)
    if levels is None:
        lines = res.output.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1, res.output
        assert lines[0].startswith("Error: ") and "m1.nii.gz" in lines[0]
        assert "binary mask" in lines[0] and "--normalize percentile" in lines[0]
        assert not out.exists()  # never a store of zeros
        return
    assert res.exit_code == 0, res.output
    store = VolumeStore.open(out)
    assert len(store) == 2
    for i, mask in enumerate(masks):
        vol = store[i][0]
        assert np.unique(vol).tolist() == levels
        assert np.array_equal(vol == levels[1], mask == 255)  # RAS of an identity affine
    assert _cli("store", "verify", out).exit_code == 0


def test_a_constant_file_is_refused_or_kept_by_none_and_then_reported(tmp_path):
    import nibabel as nib

    src = tmp_path / "src"
    _masks(src, nib)
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 24), np.uint8), np.eye(4)), src / "m3.nii.gz")
    res = _cli("ingest", "nifti", src, "--out", tmp_path / "p.h5")
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
    assert "m3.nii.gz: image is constant (every voxel is 0)" in res.output
    assert "--normalize none" in res.output
    res = _cli("ingest", "nifti", src, "--out", tmp_path / "n.h5", "--normalize", "none")
    assert res.exit_code == 0 and "1 volume(s) stored constant" in res.output
    assert "m3.nii.gz" in res.output
    res = _cli("store", "verify", tmp_path / "n.h5")
    assert res.exit_code == 1 and "1 of 3 volume(s) are constant: row 2 (subject 'm3'" \
        in res.output and "likely cause" in res.output


def test_ingesting_png_masks_keeps_their_two_levels(tmp_path):
    root = tmp_path / "png" / "lesion"
    root.mkdir(parents=True)
    mask = np.zeros((16, 16), np.uint8)
    mask[7, 8] = 255  # one pixel of 256
    Image.fromarray(mask).save(root / "a.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "blank.png")
    res = _cli("ingest", "images", tmp_path / "png", "--out", tmp_path / "i.h5", "--size", 16, 16)
    assert res.exit_code == 0 and "1 volume(s) stored constant" in res.output, res.output
    store = VolumeStore.open(tmp_path / "i.h5")
    assert np.unique(store[0]).tolist() == [0.0, 1.0] and store[0][0, 7, 8] == 1.0
    assert _cli("store", "verify", tmp_path / "i.h5").exit_code == 1


def test_shares_in_messages_never_round_a_part_to_none_or_all():
    x = np.zeros(20_000, np.float32)
    x[0] = 1.0
    with pytest.raises(ValueError, match=r"; 99\.995% of the source is 0, the rest differs"):
        check_not_flattened(x, np.zeros(4, np.float32), "a step", "the fix")
