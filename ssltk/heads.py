"""Projection heads shared by objective plugins.

A projection head maps the backbone's representation ``(B, out_dim)`` to the space where a
contrastive loss is computed ``(B, proj_dim)``; it is discarded after pretraining (Chen et al.,
"A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020, sec. 4.2).

An objective's ``Config`` inherits :class:`ProjectionHeadConfig` (redeclaring the defaults its
paper uses) and builds its head with :func:`build_projection_head`::

    class Config(ProjectionHeadConfig):
        proj_hidden_dim: int | None = 2048
        temperature: float = 0.2

    self.head = build_projection_head(config, backbone.out_dim)
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from ssltk.interfaces import ComponentConfig

__all__ = ["OutputNorm", "ProjectionHeadConfig", "build_projection_head", "projection_head"]


class OutputNorm(nn.BatchNorm1d):
    """``BatchNorm1d(affine=False)`` ending a projection head (``proj_output_norm``).

    Its own class so that the representation monitors can find it and measure the projection
    *before* it: after it, every dimension has unit variance over the batch by construction, so
    a collapse of the head cannot show there (docs/engine.md#representation-monitors).
    """

    def __init__(self, num_features: int):
        super().__init__(num_features, affine=False)


class ProjectionHeadConfig(ComponentConfig):
    """Fields of an MLP projection head (``proj_*``), to inherit in an objective's Config."""

    proj_hidden_dim: int | None = Field(
        default=None, ge=1,
        description="Width of the hidden layers; None uses the backbone's out_dim.")
    proj_dim: int = Field(default=128, ge=1, description="Output size of the head.")
    proj_layers: int = Field(
        default=2, ge=1,
        description="Linear layers in the head: 1 is linear, 2 the SimCLR/MoCo v2 MLP, "
                    "3 the SimCLRv2 head.")
    proj_batch_norm: bool = Field(
        default=False, description="BatchNorm after each hidden Linear (SimCLRv2 style).")
    proj_output_norm: bool = Field(
        default=False,
        description="BatchNorm without affine parameters on the output (MoCo v3's projector): "
                    "centres every dimension over the batch, so the embeddings cannot all "
                    "drift into one narrow cone.")


def projection_head(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2,
                    batch_norm: bool = False, output_norm: bool = False) -> nn.Sequential:
    """An MLP ``(B, in_dim) -> (B, out_dim)``.

    ``num_layers - 1`` hidden blocks ``Linear(hidden_dim) [-> BatchNorm1d] -> ReLU`` followed by
    a final ``Linear(out_dim) [-> BatchNorm1d(affine=False)]``; ``num_layers=1`` is a single
    Linear (plus the output norm when asked).

    Args:
        in_dim: size of the representation fed to the head.
        hidden_dim: width of every hidden layer.
        out_dim: size of the projection.
        num_layers: number of Linear layers (>= 1).
        batch_norm: add BatchNorm1d after each hidden Linear (whose bias is then dropped).
        output_norm: end with ``BatchNorm1d(out_dim, affine=False)`` (the final Linear's bias
            is then dropped), as MoCo v3's projector (Chen, Xie, He, ICCV 2021).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(width, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim, bias=not output_norm))
    if output_norm:
        layers.append(OutputNorm(out_dim))
    return nn.Sequential(*layers)


def build_projection_head(config: ProjectionHeadConfig, in_dim: int) -> nn.Sequential:
    """The head described by ``config``'s ``proj_*`` fields, on top of ``in_dim`` features."""
    return projection_head(
        in_dim=in_dim,
        hidden_dim=config.proj_hidden_dim or in_dim,
        out_dim=config.proj_dim,
        num_layers=config.proj_layers,
        batch_norm=config.proj_batch_norm,
        output_norm=config.proj_output_norm,
    )
