"""``export_encoder``: the backbone says how its weights map to its framework's network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssltk.engine import export_encoder
from ssltk.engine.checkpoint import save_checkpoint
from ssltk.errors import SsltkError
from ssltk.interfaces import Backbone
from ssltk.registry import get_registry


class Plain(Backbone):
    """A backbone of ssltk's own, wrapping no other framework's network."""

    name = "plain_export_test"

    def __init__(self, config, in_channels: int = 1, spatial_dims: int = 3):
        super().__init__()
        self.config, self.in_channels, self.spatial_dims = config, in_channels, spatial_dims
        self.proj = nn.Linear(in_channels, 4)
        self.out_dim, self.feature_channels, self.feature_strides = 4, (4,), (1,)

    def forward(self, x):
        return self.proj(x.flatten(2).mean(-1))

    def forward_features(self, x):
        return [x]


def test_a_monai_backbone_exports_the_monai_state_dict(tmp_path, registry):
    net = registry.create("backbones", "resnet10", {"widen_factor": 0.25}, in_channels=1,
                          spatial_dims=3)
    encoder = save_checkpoint(tmp_path / "encoder.pt", {"backbone": net.state_dict()},
                              {"backbone": "resnet10"})
    out = export_encoder(encoder, tmp_path / "monai.pt", registry=registry)
    plain = torch.load(out, weights_only=True)
    assert plain.keys() == net.net.state_dict().keys()
    assert all(torch.equal(v, net.net.state_dict()[k]) for k, v in plain.items())


def test_a_backbone_without_a_framework_network_says_so(tmp_path):
    registry = get_registry()
    registry.add("backbones", Plain)
    net = Plain(Plain.Config())
    encoder = save_checkpoint(tmp_path / "encoder.pt", {"backbone": net.state_dict()},
                              {"backbone": Plain.name})
    with pytest.raises(SsltkError, match="wraps no other framework's network"):
        export_encoder(encoder, tmp_path / "out.pt", registry=registry)
    assert not (tmp_path / "out.pt").exists()


def test_an_encoder_of_an_unknown_backbone_names_it(tmp_path, registry):
    encoder = save_checkpoint(tmp_path / "encoder.pt", {"backbone": {}}, {"backbone": "vit9"})
    with pytest.raises(SsltkError, match=r"pretrained with backbone 'vit9': unknown backbone"):
        export_encoder(encoder, tmp_path / "out.pt", registry=registry)
