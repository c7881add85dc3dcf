"""Contract tests run over every registered backbone, 2D and 3D."""

from __future__ import annotations

import pytest
import torch

from ssltk.interfaces import Backbone
from ssltk.registry import get_registry

BACKBONES = get_registry().names("backbones")
# Large enough for 5 stride-2 stages (DenseNet downsamples 32x), small enough for 2 CPU cores.
SHAPES = {3: (2, 2, 32, 32, 32), 2: (2, 3, 64, 64)}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_contract(registry, name, dims):
    shape = SHAPES[dims]
    torch.manual_seed(0)
    net = registry.create("backbones", name, {"out_dim": 24}, in_channels=shape[1],
                          spatial_dims=dims)
    assert isinstance(net, Backbone) and net.out_dim == 24
    x = torch.randn(shape)
    net.eval()
    with torch.no_grad():
        y = net(x)
        feats = net.forward_features(x)
        assert torch.equal(y, net(x)), "eval forward must be deterministic"
    assert y.shape == (shape[0], 24) and torch.isfinite(y).all()
    exported = type(net).export_state_dict(net.state_dict())
    assert exported is None or (exported and all(torch.is_tensor(v) for v in exported.values()))
    assert len(feats) == len(net.feature_channels) == len(net.feature_strides)
    for f, c, s in zip(feats, net.feature_channels, net.feature_strides):
        assert f.shape[:2] == (shape[0], c)
        assert tuple(f.shape[2:]) == tuple(-(-n // s) for n in shape[2:])  # ceil(n / s)


@pytest.mark.parametrize("name", BACKBONES)
def test_default_out_dim_is_the_encoder_width(registry, name):
    net = registry.create("backbones", name, {}, in_channels=1, spatial_dims=2)
    assert net.out_dim == net.feature_channels[-1]
    net.train()
    y = net(torch.randn(2, 1, 64, 64))
    y.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_resnet_exports_to_the_matching_monai_network(registry):
    from monai.networks.nets import resnet18

    net = registry.create("backbones", "resnet18", {"stem_stride": 2}, in_channels=1,
                          spatial_dims=3)
    monai_net = resnet18(spatial_dims=3, n_input_channels=1, conv1_t_stride=2, feed_forward=False)
    exported = type(net).export_state_dict(net.state_dict())  # the Backbone contract
    monai_net.load_state_dict(exported)  # strict: same keys, same shapes
    x = torch.randn(1, 1, 32, 32, 32)
    net.eval(), monai_net.eval()
    with torch.no_grad():
        torch.testing.assert_close(monai_net(x), net(x))


def test_resnet_stem_options_change_strides(registry):
    net = registry.create("backbones", "resnet10", {"stem_stride": 1, "max_pool": False},
                          in_channels=1, spatial_dims=3)
    assert net.feature_strides == (1, 1, 2, 4, 8)
    feats = net.forward_features(torch.randn(1, 1, 16, 16, 16))
    assert feats[1].shape[-1] == 16 and feats[-1].shape[-1] == 2


@pytest.mark.parametrize("norm", ["group", "instance"])
@pytest.mark.parametrize("name", BACKBONES)
def test_norm_option_reaches_every_layer(registry, name, norm):
    """A sample's output must not depend on the rest of its batch (MONAI's ResNet ignores
    ``norm`` beyond the stem; the wrapper fixes that)."""
    torch.manual_seed(0)
    net = registry.create("backbones", name, {"norm": norm}, in_channels=1, spatial_dims=2)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    x = torch.randn(4, 1, 64, 64)
    torch.testing.assert_close(net(x)[:2], net(x[:2]), rtol=1e-4, atol=1e-5)
