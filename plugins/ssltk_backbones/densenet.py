"""DenseNet-121 (Huang et al. 2017) built on MONAI, 2D and 3D.

The MONAI network is kept as ``self.net``; its classification layers are unused, so an
exported encoder loads into ``monai.networks.nets.DenseNet121`` with ``strict=False``.
"""

from __future__ import annotations

from monai.networks.nets import DenseNet121 as MonaiDenseNet121
from pydantic import Field
from torch import Tensor, nn

from ssltk_backbones._common import EncoderConfig, MonaiBackbone, norm_arg


class DenseNetConfig(EncoderConfig):
    init_features: int = Field(default=64, ge=8)
    growth_rate: int = Field(default=32, ge=4)
    dropout: float = Field(default=0.0, ge=0, lt=1)


class DenseNet121(MonaiBackbone):
    """DenseNet-121: dense blocks (6, 12, 24, 16); 1024-d representation by default."""

    name = "densenet121"
    Config = DenseNetConfig

    def make_net(self, config: DenseNetConfig, in_channels: int,
                 spatial_dims: int) -> MonaiDenseNet121:
        net = MonaiDenseNet121(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1,
            init_features=config.init_features, growth_rate=config.growth_rate,
            norm=norm_arg(config.norm), dropout_prob=config.dropout,
        )
        net.class_layers = nn.Identity()  # we pool ourselves; keeps no unused weights
        return net

    def feature_maps(self, config: DenseNetConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
        f, g = config.init_features, config.growth_rate
        channels = [f]
        c = f
        for i, n in enumerate((6, 12, 24, 16)):
            c = c + n * g
            channels.append(c)
            if i < 3:
                c //= 2
        return tuple(channels), (2, 4, 8, 16, 32)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        feats = []
        for name, module in self.net.features.named_children():
            x = module(x)
            if name in ("relu0", "denseblock1", "denseblock2", "denseblock3"):
                feats.append(x)
        feats.append(nn.functional.relu(x))  # after denseblock4 + norm5
        return feats


