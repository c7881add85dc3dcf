"""The frozen baselines' features: batch-norm statistics fitted on a pool, the pooled raw input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ssltk.data.loading import BatchReader
from ssltk.engine import runtime
from ssltk.engine.baselines import (MAX_RAW_FEATURES, RawInput, batch_norm_layers,
                                    fit_batch_norm, raw_input_grid)
from ssltk.errors import SsltkError
from ssltk.store import VolumeStore

pytestmark = pytest.mark.numerics  # float statistics compared with margins
CPU = runtime.Context(torch.device("cpu"))


@pytest.fixture(scope="module")
def pool(tmp_path_factory, make_tiny_store):
    """A 7-volume store: batches of 3 do not divide it."""
    path = make_tiny_store(tmp_path_factory.mktemp("pool") / "pool.h5", (1, 16, 16, 16), n=7)
    with VolumeStore.open(path) as store:
        yield store


def encoder(registry, norm: str, seed: int = 0):
    torch.manual_seed(seed)
    return registry.build("backbones", {"name": "resnet10", "widen_factor": 0.25, "norm": norm},
                          in_channels=1, spatial_dims=3)


@pytest.fixture
def rng_restored():
    """The global torch RNG as it was before the test (the encoders are seeded)."""
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)


def test_first_batch_norm_holds_the_pools_statistics_of_its_input(registry, pool,
                                                                   rng_restored):
    net = encoder(registry, "batch")
    fit = fit_batch_norm(net, BatchReader(pool), np.arange(7), batch_size=3, ctx=CPU)
    assert (fit.layers, fit.rows, fit.batches) == (12, 7, 2)
    # by hand: the stem convolution of every volume at once, per-channel moments over voxels
    x = torch.from_numpy(pool.read_into(np.arange(7), np.empty((7, 1, 16, 16, 16), np.float32)))
    with torch.no_grad():
        h = net.net.conv1(x).double()  # (7, C, *spatial): the input of net.bn1
    values = h.transpose(0, 1).reshape(h.shape[1], -1)
    bn = net.net.bn1
    torch.testing.assert_close(bn.running_mean.double(), values.mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), values.var(1), rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == 2 and not net.training
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var), atol=1e-2)


def test_every_batch_norm_holds_the_moments_of_its_train_mode_input(registry, pool,
                                                                     rng_restored):
    """Each layer's running statistics are the moments of everything it saw in the fitting
    passes, gathered here independently (all inputs concatenated, torch's own mean/var)."""
    net = encoder(registry, "batch")
    seen = {id(m): [] for m in batch_norm_layers(net)}
    hooks = [m.register_forward_pre_hook(lambda m, a: seen[id(m)].append(a[0].detach().clone()))
             for m in batch_norm_layers(net)]
    fit_batch_norm(net, BatchReader(pool), np.arange(7), batch_size=3, ctx=CPU)
    for hook in hooks:
        hook.remove()
    for layer in batch_norm_layers(net):
        h = torch.cat(seen[id(layer)]).double()  # (7, C, *spatial)
        values = h.transpose(0, 1).reshape(h.shape[1], -1)
        torch.testing.assert_close(layer.running_mean.double(), values.mean(1),
                                   rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(layer.running_var.double(), values.var(1),
                                   rtol=1e-4, atol=1e-6)


def test_only_batch_norm_statistics_change(registry, pool, rng_restored):
    """Convolution weights, BN affine parameters: those of the random init of the seed."""
    net, init = encoder(registry, "batch", seed=3), encoder(registry, "batch", seed=3)
    fit_batch_norm(net, BatchReader(pool), np.arange(7), batch_size=4, ctx=CPU)
    after, before = net.state_dict(), init.state_dict()
    stats = ("running_mean", "running_var", "num_batches_tracked")
    for name, value in before.items():
        if name.endswith(stats):
            continue
        assert torch.equal(after[name], value), name
    changed = [n for n in before if n.endswith("running_var")
               and not torch.equal(after[n], before[n])]
    assert len(changed) == 12


def test_group_norm_backbone_is_left_as_it_is(registry, pool, rng_restored):
    net, init = encoder(registry, "group"), encoder(registry, "group")
    fit = fit_batch_norm(net, BatchReader(pool), np.arange(7), batch_size=3, ctx=CPU)
    assert fit.layers == 0 and not batch_norm_layers(net)
    for name, value in init.state_dict().items():
        assert torch.equal(net.state_dict()[name], value), name


def test_one_volume_is_refused(registry, pool, rng_restored):
    with pytest.raises(SsltkError, match="at least 2 volumes"):
        fit_batch_norm(encoder(registry, "batch"), BatchReader(pool), [0], 3, CPU)


@pytest.mark.parametrize("shape, grid", [
    ((1, 32, 32, 32), (16, 16, 16)),   # 4096 values
    ((2, 32, 32, 32), (12, 12, 12)),   # 2 * 1728 = 3456; 13^3 * 2 = 4394 is too many
    ((1, 16, 16, 16), (16, 16, 16)),   # the whole volume
    ((1, 10, 40, 40), (10, 16, 16)),   # an axis shorter than the grid is kept whole
    ((3, 64, 64), (36, 36)),           # 3 * 36^2 = 3888; 3 * 37^2 = 4107
    ((1, 28, 28), (28, 28)),
])
def test_raw_input_grid_is_the_largest_cube_within_the_budget(shape, grid):
    assert raw_input_grid(shape) == grid
    assert shape[0] * np.prod(grid) <= MAX_RAW_FEATURES


def test_raw_input_is_the_hand_pooled_volume():
    x = torch.rand(3, 2, 32, 32, 24, generator=torch.Generator().manual_seed(0))
    features = RawInput((2, 32, 32, 24))  # grid (12, 12, 12): uneven windows
    assert features.grid == (12, 12, 12) and features.out_dim == 2 * 12 ** 3
    out = features(x)
    assert out.shape == (3, features.out_dim)
    # by hand: window i of an axis of length L covers floor(i L / g) .. ceil((i + 1) L / g) - 1
    expected = torch.empty(3, 2, 12, 12, 12)
    bounds = [[(i * n // 12, -(-(i + 1) * n // 12)) for i in range(12)] for n in (32, 32, 24)]
    for i, (a0, a1) in enumerate(bounds[0]):
        for j, (b0, b1) in enumerate(bounds[1]):
            for k, (c0, c1) in enumerate(bounds[2]):
                expected[:, :, i, j, k] = x[:, :, a0:a1, b0:b1, c0:c1].mean((2, 3, 4))
    torch.testing.assert_close(out, expected.flatten(1))


def test_raw_input_of_a_divisible_volume_averages_blocks():
    x = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    blocks = x.reshape(2, 1, 16, 2, 16, 2, 16, 2).mean((3, 5, 7))
    torch.testing.assert_close(RawInput((1, 32, 32, 32))(x), blocks.flatten(1))


def test_batch_norm_layers_skip_untracked_and_instance_norm():
    net = nn.Sequential(nn.BatchNorm3d(2), nn.BatchNorm3d(2, track_running_stats=False),
                        nn.InstanceNorm3d(2, track_running_stats=True), nn.GroupNorm(1, 2))
    assert batch_norm_layers(net) == [net[0]]
