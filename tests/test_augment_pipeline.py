"""The augmentation Pipeline: building from specs, resampling paths, spatial fusion, views."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssltk.augment import (
    DEFAULT_PIPELINE, Pipeline, affine_grid, compose, crop_box, resample,
)
from ssltk.config import ComponentSpec
from ssltk.errors import ConfigError
from ssltk.interfaces import SpatialAugmentation


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth(shape, seed=0):
    """Low-frequency volume in [0, 1]: interpolation error stays small."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.linspace(0, 1, n) for n in shape[2:]], indexing="ij")
    out = torch.zeros(shape)
    for b in range(shape[0]):
        f = torch.rand(len(axes), generator=g) + 0.5
        out[b] = sum(torch.cos(3.14 * fi * a) for fi, a in zip(f, axes))[None] / len(axes)
    return (out + 1) / 2


SPATIAL = [
    {"name": "random_resized_crop", "p": 1.0, "scale": [0.5, 0.9]},
    {"name": "flip", "p": 1.0, "axis_p": 0.5},
    {"name": "affine", "p": 1.0, "degrees": 15.0, "scale": [0.9, 1.1], "translate": 0.05},
]


def test_from_specs_dicts_and_component_specs(registry):
    specs = [{"name": "flip", "p": 0.5, "axes": [0, 1, 2]}, ComponentSpec(name="gaussian_noise", p=1.0)]
    pipe = Pipeline.from_specs(registry, specs)
    assert [a.name for a in pipe.augmentations] == ["flip", "gaussian_noise"]
    assert pipe.augmentations[0].config.axes == [0, 1, 2]
    assert len(pipe) == 2 and "flip" in repr(pipe).lower()


@pytest.mark.parametrize("spec, message", [
    ({"name": "flipp"}, r"^pretrain.augmentations\[1\].name: unknown augmentation 'flipp'. Did you mean 'flip'"),
    ({"name": "flip", "p": 2}, r"^pretrain.augmentations\[1\].p: "),
    ({"name": "flip", "axis": [0]}, r"^pretrain.augmentations\[1\].axis: unknown key"),
    ({"p": 0.5}, r"^pretrain.augmentations\[1\]: missing 'name'"),
    ({"name": "gaussian_blur", "sigma": [2, 1]}, r"^pretrain.augmentations\[1\].sigma: "),
])
def test_from_specs_errors_name_the_path(registry, spec, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_specs(registry, [{"name": "flip"}, spec])


@pytest.mark.parametrize("shape", [(2, 1, 16, 16, 16), (3, 2, 20, 24)])
def test_default_pipeline_runs_and_is_seeded(registry, shape):
    pipe = Pipeline.from_specs(registry, DEFAULT_PIPELINE)
    x = smooth(shape)
    a, b = pipe.views(x, 2, gen(1))
    assert a.shape == x.shape and torch.isfinite(a).all() and not torch.equal(a, b)
    a2, b2 = pipe.views(x, 2, gen(1))
    assert torch.equal(a, a2) and torch.equal(b, b2)


def test_groups_fuse_consecutive_spatial_ops(registry):
    specs = SPATIAL[:2] + [{"name": "gaussian_noise"}] + SPATIAL[2:]
    pipe = Pipeline.from_specs(registry, specs)
    assert [len(g) for g in pipe.groups()] == [2, 1, 1]
    assert all(isinstance(a, SpatialAugmentation) for a in pipe.groups()[0])
    assert [len(g) for g in Pipeline.from_specs(registry, specs, fuse=False).groups()] == [1] * 4


@pytest.mark.parametrize("shape", [(4, 1, 24, 24, 24), (4, 1, 32, 40)])
def test_fused_equals_sequential(registry, shape):
    x = smooth(shape)
    fused = Pipeline.from_specs(registry, SPATIAL)
    sequential = Pipeline.from_specs(registry, SPATIAL, fuse=False)
    g1, g2 = gen(3), gen(3)
    a, b = fused(x, g1), sequential(x, g2)
    assert torch.equal(g1.get_state(), g2.get_state()), "fusion must not change the draws"
    # compare where the sequential chain never sampled outside its (cropped) input: there the
    # fused one reads real voxels where the sequential one read zero padding
    # (eroded by one voxel: at the crop's edge F.interpolate replicates the edge voxel)
    inside = (sequential(torch.ones(shape), gen(3)) > 1 - 1e-5).float()
    pool = F.max_pool3d if len(shape) == 5 else F.max_pool2d
    inner = -pool(-inside, 3, 1, 1) > 0.5
    assert inner.float().mean() > 0.5
    err = (a - b)[inner].abs()
    assert err.mean() < 1e-3 and err.max() < 0.01  # interpolation error only
    assert (a - x).abs().mean() > 0.05  # and the op did something


def test_resample_identity_and_flip_are_exact():
    x = torch.rand(3, 2, 6, 7, 8)
    eye = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    assert torch.equal(resample(x, eye), x)
    flip = eye.clone()
    flip[1, 0, 0] = -1
    flip[2, 2, 2] = -1
    y = resample(x, flip)
    assert torch.equal(y[0], x[0]) and torch.equal(y[1], x[1].flip(1))
    assert torch.equal(y[2], x[2].flip(3))
    assert torch.equal(resample(y, flip), x)  # flip twice = identity, exactly


def test_crop_box_detection():
    m = torch.eye(3, dtype=torch.float64)
    m[0, 0], m[0, 2] = 0.5, -0.25  # 8 of 16 voxels, starting at voxel 2
    m[1, 1] = -1.0
    assert crop_box(m, (16, 10)) == [(2, 8, False), (0, 10, True)]
    m[0, 2] = -0.26  # not on the voxel grid
    assert crop_box(m, (16, 10)) is None
    rot = torch.eye(3, dtype=torch.float64)
    rot[0, 1] = 0.1
    assert crop_box(rot, (16, 10)) is None


@pytest.mark.parametrize("sizes", [(5, 6, 7), (9, 4)])
def test_affine_grid_matches_torch(sizes):
    d = len(sizes)
    m = torch.eye(d + 1, dtype=torch.float64).repeat(2, 1, 1)
    m[:, :d] += 0.2 * torch.randn(2, d, d + 1, generator=gen(), dtype=torch.float64)
    theta = m[:, :d].flip(1)  # rows in grid order (last axis first)
    theta = torch.cat([theta[:, :, :d].flip(2), theta[:, :, d:]], 2)  # columns too
    ref = F.affine_grid(theta.float(), [2, 1, *sizes], align_corners=False)
    torch.testing.assert_close(affine_grid(m, sizes, torch.float32, torch.device("cpu")), ref)


def test_resample_general_matches_grid_sample():
    x = torch.rand(2, 1, 8, 9, 10)
    m = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    m[:, 0, 1] = 0.3
    grid = affine_grid(m, (8, 9, 10), torch.float32, torch.device("cpu"))
    ref = F.grid_sample(x, grid, align_corners=False)
    torch.testing.assert_close(resample(x, m), ref)


def test_compose_order():
    a = torch.eye(3, dtype=torch.float64)[None].clone()
    b = a.clone()
    a[0, 0, 2], b[0, 0, 0] = 0.5, -1.0
    # apply a (shift) then b (flip): sample at a @ b @ u
    torch.testing.assert_close(compose([a, b]), a @ b)


def test_empty_pipeline_copies():
    x = torch.rand(2, 1, 4, 4, 4)
    y = Pipeline([])(x, gen())
    assert torch.equal(x, y) and y.data_ptr() != x.data_ptr()
