"""ResNet-10/18/34/50 (He et al. 2016; 3D variants of Hara et al. 2018) built on MONAI.

The MONAI network is kept as ``self.net`` with ``feed_forward=False``, so the pretrained
encoder exports as a plain state_dict of ``monai.networks.nets.ResNet``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from monai.networks.nets import ResNet
from pydantic import Field
from torch import Tensor

from ssltk_backbones._common import EncoderConfig, MonaiBackbone, norm_arg


class ResNetConfig(EncoderConfig):
    widen_factor: float = Field(default=1.0, gt=0, description="Multiplies every layer's width.")
    stem_kernel: int = Field(default=7, ge=1, description="Kernel size of the first convolution.")
    stem_stride: int = Field(
        default=2, ge=1,
        description="Stride of the first convolution. 2 (as in the 2D ResNet) makes 3D training "
                    "several times cheaper than MONAI's default of 1.")
    max_pool: bool = Field(default=True, description="Max-pool after the stem.")
    shortcut_type: Literal["A", "B"] = Field(
        default="B", description="Residual shortcut where the shape changes: 'B' a strided 1x1 "
                                 "convolution, 'A' pooling and zero padding (no weights; "
                                 "MedicalNet's ResNet-18/34).")
    bias_downsample: bool = Field(
        default=True, description="Bias in the 'B' shortcut convolutions (MedicalNet's "
                                  "ResNet-10/50 have none: false).")


class _MonaiResNet(MonaiBackbone):
    block: ClassVar[str]
    layers: ClassVar[list[int]]
    Config = ResNetConfig

    def make_net(self, config: ResNetConfig, in_channels: int, spatial_dims: int) -> ResNet:
        return ResNet(
            block=self.block, layers=self.layers, block_inplanes=[64, 128, 256, 512],
            spatial_dims=spatial_dims, n_input_channels=in_channels,
            conv1_t_size=config.stem_kernel, conv1_t_stride=config.stem_stride,
            no_max_pool=not config.max_pool, widen_factor=config.widen_factor,
            feed_forward=False, norm=norm_arg(config.norm),
            shortcut_type=config.shortcut_type, bias_downsample=config.bias_downsample,
        )

    def feature_maps(self, config: ResNetConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
        expansion = 4 if self.block == "bottleneck" else 1
        widths = [int(w * config.widen_factor) for w in (64, 128, 256, 512)]
        s = config.stem_stride
        s1 = s * 2 if config.max_pool else s
        return (widths[0], *(w * expansion for w in widths)), (s, s1, s1 * 2, s1 * 4, s1 * 8)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        net = self.net
        stem = net.act(net.bn1(net.conv1(x)))
        h = stem if net.no_max_pool else net.maxpool(stem)
        feats = [stem]
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            h = layer(h)
            feats.append(h)
        return feats


class ResNet10(_MonaiResNet):
    """ResNet-10: basic blocks (1, 1, 1, 1); 512-d representation."""

    name = "resnet10"
    block, layers = "basic", [1, 1, 1, 1]


class ResNet18(_MonaiResNet):
    """ResNet-18: basic blocks (2, 2, 2, 2); 512-d representation."""

    name = "resnet18"
    block, layers = "basic", [2, 2, 2, 2]


class ResNet34(_MonaiResNet):
    """ResNet-34: basic blocks (3, 4, 6, 3); 512-d representation."""

    name = "resnet34"
    block, layers = "basic", [3, 4, 6, 3]


class ResNet50(_MonaiResNet):
    """ResNet-50: bottleneck blocks (3, 4, 6, 3); 2048-d representation."""

    name = "resnet50"
    block, layers = "bottleneck", [3, 4, 6, 3]
