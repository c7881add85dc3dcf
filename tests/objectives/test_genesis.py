"""Models Genesis: decoder shapes for every backbone, transform rates, restoration learning."""

from __future__ import annotations

import pytest
import torch
from _tiny import backbone, pretrain_steps, tiny_volumes

from ssltk.errors import ConfigError
from ssltk.interfaces import Batch
from ssltk.registry import get_registry

pytestmark = pytest.mark.numerics

REGISTRY = get_registry()

# (backbone, params): every stem/pool combination of the ResNets, a bottleneck, a DenseNet
VARIANTS = [
    ("resnet10", {}),
    ("resnet10", {"stem_stride": 1, "max_pool": False}),
    ("resnet10", {"stem_stride": 2, "max_pool": False}),
    ("resnet10", {"stem_stride": 1, "max_pool": True}),
    ("resnet50", {"widen_factor": 0.125}),
    ("densenet121", {"init_features": 8, "growth_rate": 4}),
]


@pytest.fixture(scope="module")
def registry():
    return REGISTRY


def genesis(registry, spatial_dims=3, name="resnet10", params=None, **config):
    torch.manual_seed(0)
    bb = backbone(registry, spatial_dims, name, **(params or {}))
    return registry.create("objectives", "genesis", config, backbone=bb, registry=registry)


@pytest.mark.parametrize("spatial_dims,shape", [(3, (16, 16, 16)), (3, (17, 16, 19)),
                                                (2, (30, 35))])
@pytest.mark.parametrize("name,params", VARIANTS, ids=lambda v: str(v))
def test_restoration_has_the_input_shape(registry, name, params, spatial_dims, shape):
    if name == "densenet121" and spatial_dims == 3:
        shape = tuple(s + 16 for s in shape)  # its 2x2x2 pooling needs >= 32 voxels a side
    objective = genesis(registry, spatial_dims, name, params, decoder_scale=0.25)
    x = torch.rand(2, 1, *shape)
    with torch.no_grad():
        out = objective.restore(x)
    assert out.shape == x.shape
    assert 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("name", get_registry().names("backbones"))
def test_every_registered_backbone_in_2d(registry, name):
    objective = genesis(registry, 2, name)
    out = objective(Batch(views=[torch.rand(2, 1, 32, 32)], generator=torch.Generator()))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_two_channel_input(registry):
    torch.manual_seed(0)
    bb = registry.create("backbones", "resnet10", {"widen_factor": 0.25}, in_channels=2,
                         spatial_dims=3)
    objective = registry.create("objectives", "genesis", {}, backbone=bb, registry=registry)
    assert objective.restore(torch.rand(2, 2, 16, 16, 16)).shape == (2, 2, 16, 16, 16)


def test_masks_follow_the_paper_rates(registry):
    objective = genesis(registry)
    n = 20000
    masks = objective.draw_masks(n, torch.Generator().manual_seed(0))
    expected = {"genesis_local_shuffle": 0.5, "genesis_nonlinear": 0.9,
                "genesis_inpaint": 0.9 * 0.2, "genesis_outpaint": 0.9 * 0.8}
    for name, p in expected.items():
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(masks[name].float().mean().item() - p) < 4 * sigma, name
    assert not (masks["genesis_inpaint"] & masks["genesis_outpaint"]).any()


def test_samples_change_exactly_when_a_transform_is_drawn(registry):
    objective = genesis(registry, 2, local_shuffle_rate=0.0, nonlinear_rate=0.0, paint_rate=0.5)
    x = tiny_volumes(400, spatial_dims=2, size=16)
    before = x.clone()
    corrupted, masks = objective.corrupt(x, torch.Generator().manual_seed(1))
    assert torch.equal(x, before)  # the target is never modified in place
    changed = (corrupted != x).flatten(1).any(1)
    painted = masks["genesis_inpaint"] | masks["genesis_outpaint"]
    assert not (changed & ~painted).any()
    # in-painting adds each box with probability 0.95 (paper), so a few painted samples keep
    # zero boxes and are unchanged
    assert changed[painted].float().mean() > 0.9
    assert abs(painted.float().mean().item() - 0.5) < 4 * (0.25 / 400) ** 0.5


def test_no_transform_at_zero_rates(registry):
    objective = genesis(registry, 2, local_shuffle_rate=0, nonlinear_rate=0, paint_rate=0)
    x = torch.rand(8, 1, 16, 16)
    assert torch.equal(objective.corrupt(x, torch.Generator())[0], x)


def test_corruption_is_seeded(registry):
    objective = genesis(registry)
    x = tiny_volumes(4)
    a, _ = objective.corrupt(x, torch.Generator().manual_seed(3))
    b, _ = objective.corrupt(x, torch.Generator().manual_seed(3))
    c, _ = objective.corrupt(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("loss,spatial_dims", [("mse", 3), ("l1", 2)])
def test_loss_decreases(registry, loss, spatial_dims):
    objective = genesis(registry, spatial_dims, loss=loss)
    volumes = tiny_volumes(4, spatial_dims, size=16 if spatial_dims == 3 else 32)
    losses = pretrain_steps(objective, volumes, {}, steps=20, lr=3e-3)
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])


def test_restores_a_fixed_volume_better_after_training(registry):
    objective = genesis(registry, 2)
    volumes = tiny_volumes(4, spatial_dims=2, size=32)
    corrupted, _ = objective.corrupt(volumes, torch.Generator().manual_seed(123))

    def error() -> float:
        objective.eval()
        with torch.no_grad():
            return torch.mean((objective.restore(corrupted) - volumes) ** 2).item()

    before = error()
    pretrain_steps(objective, volumes, {}, steps=30, lr=3e-3)
    assert error() < 0.5 * before


def test_only_the_decoder_is_added(registry):
    objective = genesis(registry)
    own = {n.split(".")[0] for n, _ in objective.named_parameters()}
    assert own == {"backbone", "decoder"}


@pytest.mark.parametrize("params,match", [
    ({"transform_params": {"genesis_flip": {}}}, "not one of"),
    ({"transform_params": {"genesis_nonlinear": {"p": 0.3}}}, "rate"),
    ({"loss": "huber"}, "loss"),
    ({"paint_rate": 1.5}, "paint_rate"),
])
def test_config_errors(registry, params, match):
    with pytest.raises(ConfigError, match=match):
        registry.config("objectives", "genesis", params)


def test_batch_without_generator_follows_the_global_seed(registry):
    objective = genesis(registry, 2)
    objective.eval()
    batch = Batch(views=[tiny_volumes(2, 2, 32)])
    losses = []
    for _ in range(2):
        torch.manual_seed(5)
        with torch.no_grad():
            losses.append(objective(batch).loss.item())
    assert losses[0] == losses[1]


def test_backbone_without_convolutions_is_a_clear_error(registry):
    class Linear2Features(torch.nn.Module):
        feature_channels, feature_strides, out_dim = (4,), (1,), 4

    with pytest.raises(ConfigError, match="2D or 3D"):
        registry.create("objectives", "genesis", {}, backbone=Linear2Features(),
                        registry=registry)


def test_transform_params_are_checked_with_the_toml_path(registry):
    cls = registry.get("objectives", "genesis")
    params = {"transform_params": {"genesis_inpaint": {"max_boxess": 2}}}
    config = registry.config("objectives", "genesis", params)
    with pytest.raises(ConfigError, match=r"objectives\[0\]\.transform_params\.genesis_inpaint"):
        cls.check_nested(config, registry, "pretrain.objectives[0]")
    with pytest.raises(ConfigError, match=r"genesis\.transform_params\.genesis_inpaint\.max_boxess"):
        registry.create("objectives", "genesis", config, backbone=backbone(registry, 2),
                        registry=registry)
