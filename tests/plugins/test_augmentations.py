"""Augmentations: the contract every registered one must meet, then each op's semantics.

The contract tests are parametrized over the registry itself, so an augmentation added by any
installed plugin is tested with no new test code.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from ssltk.errors import ConfigError
from ssltk.registry import get_registry

NAMES = get_registry().names("augmentations")
SHAPES = {"3d": (2, 1, 16, 16, 16), "2d": (3, 2, 12, 16)}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build(registry, name: str, **params):
    return registry.create("augmentations", name, params)


def always(registry, name: str):
    """The augmentation with p = 1 (or its default when p cannot change, e.g. zscore)."""
    try:
        return build(registry, name, p=1.0)
    except ConfigError:
        return build(registry, name)


def data(shape, device="cpu", dtype=torch.float32) -> torch.Tensor:
    return torch.rand(shape, generator=gen(123), dtype=dtype).to(device)


# -- contract ------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_contract_shape_dtype_device_finite(registry, name, device, dims):
    for dtype in (torch.float32, torch.float64):
        x = data(SHAPES[dims], device, dtype)
        before = x.clone()
        y = always(registry, name)(x, gen())
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert torch.isfinite(y).all()
        assert torch.equal(x, before), "the input must not be modified"


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_contract_seeded(registry, name, dims):
    aug, x = always(registry, name), data(SHAPES[dims])
    assert torch.equal(aug(x, gen(7)), aug(x, gen(7))), "same seed, same output"
    g = gen(0)
    reference = aug(x, g)
    if torch.equal(g.get_state(), gen(0).get_state()):
        pytest.skip(f"{name} draws nothing: deterministic")
    assert any(not torch.equal(reference, aug(x, gen(s))) for s in range(1, 5))


@pytest.mark.parametrize("dims", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_contract_p0_is_identity(registry, name, dims):
    try:
        aug = build(registry, name, p=0.0)
    except ConfigError:
        pytest.skip(f"{name} does not allow p = 0")
    x = data(SHAPES[dims])
    assert torch.equal(aug(x, gen()), x)


@pytest.mark.parametrize("name", NAMES)
def test_contract_draws_do_not_depend_on_p_outcome(registry, name):
    """The generator advances the same whether samples were selected or not (seed alignment)."""
    try:
        never, every = build(registry, name, p=0.0), build(registry, name, p=1.0)
    except ConfigError:
        pytest.skip(f"{name} does not allow p to change")
    x = data(SHAPES["3d"])
    g0, g1 = gen(3), gen(3)
    never(x, g0)
    every(x, g1)
    assert torch.equal(g0.get_state(), g1.get_state())


@pytest.mark.parametrize("name", NAMES)
def test_contract_documented_config(registry, name):
    cls = registry.get("augmentations", name)
    assert cls.__doc__ and cls.Config.model_fields["p"].description
    for field, info in cls.Config.model_fields.items():
        assert info.description, f"{name}.{field} has no description"


# -- spatial -------------------------------------------------------------------------------


def test_flip_is_exact(registry, vol3d):
    y = build(registry, "flip", p=1.0, axes=[1], axis_p=1.0)(vol3d, gen())
    assert torch.equal(y, vol3d.flip(3))


def test_flip_rejects_missing_axis(registry, vol2d):
    with pytest.raises(ConfigError, match="flip.axes"):
        build(registry, "flip", axes=[2])(vol2d, gen())


def test_crop_scale_and_ratio_ranges(registry):
    crop = build(registry, "random_resized_crop", scale=[0.3, 0.6], ratio=[0.8, 1.25])
    m = crop.sample_matrices(torch.Size((256, 1, 32, 32, 32)), gen())
    sides = torch.diagonal(m[:, :3, :3], dim1=1, dim2=2)
    frac = sides.prod(1)
    assert frac.min() > 0.3 * 0.85 and frac.max() < 0.6 * 1.15  # whole-voxel rounding
    assert frac.max() - frac.min() > 0.2
    ratios = sides[:, :, None] / sides[:, None, :]
    assert ratios.max() < (1.25 / 0.8) * 1.2
    lo, hi = m[:, :3, 3] - sides, m[:, :3, 3] + sides  # box edges in normalised coords
    assert lo.min() >= -1 - 1e-9 and hi.max() <= 1 + 1e-9


def test_crop_equals_slice_and_resize(registry, vol3d):
    crop = build(registry, "random_resized_crop", scale=[0.3, 0.5])
    m = crop.sample_matrices(vol3d.shape, gen(4))
    y = crop(vol3d, gen(4))
    for i in range(vol3d.shape[0]):
        size = (torch.diagonal(m[i, :3, :3]) * 16).round().long()
        start = (((m[i, :3, 3] + 1) * 16 - size) / 2).round().long()
        box = vol3d[i:i + 1, :, start[0]:start[0] + size[0], start[1]:start[1] + size[1],
                    start[2]:start[2] + size[2]]
        ref = F.interpolate(box, size=(16, 16, 16), mode="trilinear", align_corners=False)
        torch.testing.assert_close(y[i:i + 1], ref)


def test_affine_identity_parameters(registry, vol3d):
    aug = build(registry, "affine", p=1.0, degrees=0.0, scale=[1, 1], translate=0.0)
    torch.testing.assert_close(aug(vol3d, gen()), vol3d, atol=1e-5, rtol=0)


def test_affine_is_rigid_in_voxel_space(registry):
    aug = build(registry, "affine", p=1.0, degrees=30.0, scale=[0.8, 1.2])
    shape = torch.Size((8, 1, 10, 20, 40))
    m = aug.sample_matrices(shape, gen())
    half = torch.tensor(shape[2:], dtype=torch.float64) / 2
    vox = m[:, :3, :3] * half[None, :, None] / half[None, None, :]  # H M H^-1
    zoom = torch.linalg.det(vox).abs() ** (1 / 3)
    rot = vox / zoom[:, None, None]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(8, 3, 3).double())
    assert (1 / zoom).min() >= 0.8 - 1e-9 and (1 / zoom).max() <= 1.2 + 1e-9


# -- filters -------------------------------------------------------------------------------


def test_blur_matches_scipy(registry):
    x = data((1, 1, 12, 14, 16))
    y = build(registry, "gaussian_blur", p=1.0, sigma=[1.3, 1.3], truncate=4.0)(x, gen())
    ref = scipy.ndimage.gaussian_filter(x[0, 0].double().numpy(), 1.3, mode="nearest",
                                        truncate=4.0)
    np.testing.assert_allclose(y[0, 0].numpy(), ref, atol=1e-5)


def test_blur_keeps_constants(registry, vol2d):
    x = torch.full_like(vol2d, 0.7)
    torch.testing.assert_close(build(registry, "gaussian_blur", p=1.0)(x, gen()), x)


def test_noise_std(registry):
    x = torch.zeros(2, 1, 32, 32, 32)
    y = build(registry, "gaussian_noise", p=1.0, std=[0.2, 0.2])(x, gen())
    assert abs(float(y.std()) - 0.2) < 0.005 and abs(float(y.mean())) < 0.005


def test_cutout_area(registry, vol3d):
    aug = build(registry, "cutout", p=1.0, n_boxes=[2, 2], size=[0.25, 0.25], fill=-1.0)
    erased = (aug(vol3d, gen()) == -1).flatten(1).sum(1)
    # two 4^3 boxes per sample, possibly overlapping
    assert ((erased >= 64) & (erased <= 128)).all()


def test_cutout_mean_fill(registry, vol3d):
    y = build(registry, "cutout", p=1.0, fill="mean")(vol3d, gen())
    changed = y != vol3d
    assert changed.any()
    for i in range(2):
        torch.testing.assert_close(y[i][changed[i]], vol3d[i].mean().expand(int(changed[i].sum())))


# -- intensity -----------------------------------------------------------------------------


def test_gamma_keeps_range(registry, vol3d):
    y = build(registry, "gamma", p=1.0, gamma=[0.5, 2.0])(vol3d, gen())
    torch.testing.assert_close(y.amin((1, 2, 3, 4)), vol3d.amin((1, 2, 3, 4)))
    torch.testing.assert_close(y.amax((1, 2, 3, 4)), vol3d.amax((1, 2, 3, 4)))
    assert not torch.allclose(y, vol3d)


def test_contrast_keeps_mean(registry, vol3d):
    y = build(registry, "contrast", p=1.0, factor=[0.5, 0.5])(vol3d, gen())
    torch.testing.assert_close(y.mean((2, 3, 4)), vol3d.mean((2, 3, 4)))
    torch.testing.assert_close(y.std((2, 3, 4)), vol3d.std((2, 3, 4)) * 0.5)


def test_bias_field_is_smooth_and_multiplicative(registry):
    x = torch.ones(2, 1, 16, 16, 16)
    y = build(registry, "bias_field", p=1.0, strength=0.5)(x, gen())
    assert (y > 0).all() and not torch.allclose(y, x)
    log = y.log()
    span = float(log.max() - log.min())
    for dim in (2, 3, 4):  # piecewise linear between 4 control points: steps <= span / 5
        assert log.diff(dim=dim).abs().max() <= span / 5 + 1e-4
    zero = build(registry, "bias_field", p=1.0, strength=0.0)
    torch.testing.assert_close(zero(x, gen()), x)


def test_intensity_scale_shift(registry, vol2d):
    y = build(registry, "intensity", p=1.0, scale=[2, 2], shift=[1, 1])(vol2d, gen())
    torch.testing.assert_close(y, 2 * vol2d + 1)


def test_zscore(registry, vol3d):
    y = build(registry, "zscore")(vol3d, gen())
    torch.testing.assert_close(y.mean((2, 3, 4)), torch.zeros(2, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std((2, 3, 4), unbiased=False), torch.ones(2, 1))
    x = vol3d.clone()
    x[:, :, :4] = 0
    z = build(registry, "zscore", nonzero=True)(x, gen())
    assert (z[:, :, :4] == 0).all()
    torch.testing.assert_close(z[:, :, 4:].mean((2, 3, 4)), torch.zeros(2, 1), atol=1e-5, rtol=0)


def test_zscore_p_is_fixed(registry):
    with pytest.raises(ConfigError, match=r"^p:"):
        build(registry, "zscore", p=0.5)


# -- Models Genesis ------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
def test_genesis_nonlinear_monotone(registry, reverse):
    x = torch.linspace(0, 1, 4096).view(1, 1, 16, 16, 16).repeat(8, 1, 1, 1, 1)
    aug = build(registry, "genesis_nonlinear", p=1.0, reverse_p=float(reverse))
    y = aug(x, gen()).flatten(1)
    steps = y.diff(dim=1)
    assert (steps <= 1e-6).all() if reverse else (steps >= -1e-6).all()
    ends = (y[:, 0], y[:, -1]) if not reverse else (y[:, -1], y[:, 0])
    torch.testing.assert_close(ends[0], torch.zeros(8), atol=1e-3, rtol=0)
    torch.testing.assert_close(ends[1], torch.ones(8), atol=1e-3, rtol=0)
    assert (y - x.flatten(1)).abs().amax(1).min() > 1e-3


def test_genesis_nonlinear_clamps(registry):
    x = torch.linspace(-1, 2, 512).view(1, 1, 8, 8, 8)
    y = build(registry, "genesis_nonlinear", p=1.0)(x, gen())
    assert y.min() >= 0 and y.max() <= 1


def test_local_shuffle_block_multisets():
    from ssltk_augment.genesis import _shuffle_blocks

    x = torch.rand(2, 13, 11, 9)
    side, offset = [3, 2, 4], [1, 0, 2]
    y = _shuffle_blocks(x, side, offset, 1.0, gen())
    assert not torch.equal(x, y)
    for a in range(1, 13 - 2, 3):
        for b in range(0, 11 - 1, 2):
            for c in range(2, 9 - 3, 4):
                bx, by = (t[:, a:a + 3, b:b + 2, c:c + 4].reshape(2, -1) for t in (x, y))
                # same multiset, same permutation for both channels
                assert torch.equal(bx.sort(1).values, by.sort(1).values)
                perm = [int((bx[0] == v).nonzero()) for v in by[0]]
                assert torch.equal(bx[1, perm], by[1])
    # strips outside the whole blocks do not move
    assert torch.equal(x[:, :1], y[:, :1]) and torch.equal(x[:, :, 10:], y[:, :, 10:])
    assert torch.equal(x[..., :2], y[..., :2]) and torch.equal(x[..., 6:], y[..., 6:])


def test_local_shuffle_keeps_values(registry, vol3d):
    y = build(registry, "genesis_local_shuffle", p=1.0, max_block=0.25)(vol3d, gen())
    assert not torch.equal(y, vol3d)
    assert torch.equal(y.flatten(1).sort(1).values, vol3d.flatten(1).sort(1).values)


def _boxes_mask(name, registry, shape, seed):
    """Replay the op's draws to get its boxes as a boolean mask ``(B, *spatial)``."""
    from ssltk_augment._common import apply_mask
    from ssltk_augment.genesis_paint import draw_boxes

    aug = build(registry, name, p=1.0)
    g = gen(seed)
    apply_mask(g, shape[0], 1.0)
    boxes = draw_boxes(g, torch.Size(shape), aug.config, first_always=name == "genesis_outpaint")
    mask = torch.zeros(shape[0], *shape[2:], dtype=torch.bool)
    for i in range(shape[0]):
        for j in range(int(boxes.count[i])):
            st, sd = boxes.start[i, j], boxes.side[i, j]
            mask[i][tuple(slice(int(s), int(s) + int(n)) for s, n in zip(st, sd))] = True
    return aug, mask


def test_inpaint_regions(registry):
    x = data((4, 1, 24, 24, 24))
    aug, inside = _boxes_mask("genesis_inpaint", registry, x.shape, 5)
    y = aug(x, gen(5))
    out = ~inside[:, None].expand_as(x)
    assert torch.equal(y[out], x[out])
    assert (y[~out] != x[~out]).float().mean() > 0.99
    assert inside.any() and inside.float().mean() < 5 * (1 / 3) ** 3 + 1e-6


def test_outpaint_regions(registry):
    x = data((4, 1, 24, 24, 24))
    aug, inside = _boxes_mask("genesis_outpaint", registry, x.shape, 6)
    y = aug(x, gen(6))
    keep = inside[:, None].expand_as(x)
    assert torch.equal(y[keep], x[keep])
    assert (y[~keep] != x[~keep]).float().mean() > 0.99
    assert (inside.flatten(1).any(1)).all()  # the first kept box is always there


def test_genesis_paint_is_exclusive(registry):
    x = torch.full((8, 1, 21, 21, 21), 0.5)
    changed = {}
    for rate in (0.0, 1.0):
        y = build(registry, "genesis_paint", p=1.0, inpaint_rate=rate)(x, gen(2))
        changed[rate] = (y != x).flatten(1).float().mean(1)
    assert (changed[1.0] <= 5 * (1 / 3) ** 3 + 1e-6).all()  # in-painting only
    assert (changed[0.0] >= 1 - 5 * (4 / 7) ** 3 - 1e-6).all()  # out-painting only
