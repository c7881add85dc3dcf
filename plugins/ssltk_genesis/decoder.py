"""U-Net style decoder built from any backbone's multi-scale feature maps.

Models Genesis (Zhou et al., MICCAI 2019; MedIA 2021) pretrains an encoder by restoring
corrupted images through a U-Net. ssltk keeps the encoder (the backbone) generic, so the
decoder is built from what every :class:`~ssltk.interfaces.Backbone` declares:
``feature_channels`` and ``feature_strides`` of ``forward_features`` (high to low resolution).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

MIN_WIDTH = 8
"""Narrowest decoder block, so that GroupNorm always has channels to group."""


def _conv(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv3d if spatial_dims == 3 else nn.Conv2d


def _group_norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: 3D batches are tiny and the deepest maps can be 1 voxel.
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ConvBlock(nn.Sequential):
    """Two ``3^d`` convolutions, each followed by GroupNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int):
        conv = _conv(spatial_dims)
        super().__init__(
            conv(in_channels, out_channels, 3, padding=1, bias=False),
            _group_norm(out_channels),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=1, bias=False),
            _group_norm(out_channels),
            nn.ReLU(inplace=True),
        )


def upsample(x: Tensor, size: Sequence[int]) -> Tensor:
    """(Bi/tri)linear resize of ``(B, C, *spatial)`` to ``size``; works for any stride ratio."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "trilinear" if x.dim() == 5 else "bilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


class UNetDecoder(nn.Module):
    """Upsample, concatenate the skip connection, convolve; from the deepest map up to the input.

    Level ``i`` (from the second deepest map up to the first) resizes the running map to the
    skip ``f_i``'s size, concatenates ``f_i`` and applies a :class:`ConvBlock` of width
    ``max(8, round(scale * c_i))``. Resizing to the skip's actual size (not a fixed factor 2)
    makes any stem stride, max-pool setting or odd input size work. A last block at the input
    resolution and a ``1^d`` convolution give the restored image.

    Args:
        feature_channels: ``c_i`` of the backbone's maps, high to low resolution.
        out_channels: channels of the restored image (the input's ``C``).
        spatial_dims: 2 or 3.
        scale: decoder width relative to the encoder's (1.0 mirrors it, as in the paper).
    """

    def __init__(self, feature_channels: Sequence[int], out_channels: int, spatial_dims: int,
                 scale: float = 1.0):
        super().__init__()
        widths = [max(MIN_WIDTH, round(scale * c)) for c in feature_channels]
        blocks = []
        running = feature_channels[-1]
        for skip, width in zip(feature_channels[-2::-1], widths[-2::-1], strict=True):
            blocks.append(ConvBlock(running + skip, width, spatial_dims))
            running = width
        self.blocks = nn.ModuleList(blocks)
        head_width = max(MIN_WIDTH, running // 4)
        self.head = nn.Sequential(
            ConvBlock(running, head_width, spatial_dims),
            _conv(spatial_dims)(head_width, out_channels, 1),
        )

    def forward(self, features: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        """``[(B, c_i, *spatial_i)]`` (high to low resolution) -> logits ``(B, C, *size)``."""
        h = features[-1]
        for block, skip in zip(self.blocks, features[-2::-1], strict=True):
            h = block(torch.cat([upsample(h, skip.shape[2:]), skip], dim=1))
        return self.head(upsample(h, size))
