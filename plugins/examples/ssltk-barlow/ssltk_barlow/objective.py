"""The ``barlow`` objective: backbone + projector + Barlow Twins loss over two views."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from ssltk.interfaces import Batch, ComponentConfig, Objective, ObjectiveOutput
from ssltk_barlow.loss import barlow_twins_loss


class BarlowTwinsConfig(ComponentConfig):
    """Parameters of ``barlow``, validated by ssltk before anything trains."""

    projector_dims: list[int] = Field(
        default=[2048, 2048, 2048], min_length=1,
        description="Widths of the projector's Linear layers (paper: 8192, 8192, 8192; a "
                    "smaller default keeps 3D MRI batches and memory practical).")
    lambd: float = Field(default=5e-3, gt=0, description="Weight of the off-diagonal term.")


def projector(in_dim: int, dims: list[int]) -> nn.Sequential:
    """``Linear -> BatchNorm1d -> ReLU`` for every width but the last, then a final ``Linear``.

    ``(B, in_dim) -> (B, dims[-1])``; the paper's projector with ``dims = [8192] * 3``.
    """
    layers: list[nn.Module] = []
    width = in_dim
    for hidden in dims[:-1]:
        layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(True)]
        width = hidden
    layers.append(nn.Linear(width, dims[-1], bias=False))
    return nn.Sequential(*layers)


class BarlowTwins(Objective):
    """Barlow Twins (Zbontar et al., ICML 2021).

    Two views go through the backbone and the projector; the loss makes the cross-correlation
    matrix of the batch-normalised projections close to the identity. Only the backbone is
    transferred to finetuning. The batch statistics are those of the local batch: under
    DDP each rank computes its own ``C`` (the paper all-reduces ``C`` over ranks).

    Logs: ``loss``.
    """

    name = "barlow"
    Config = BarlowTwinsConfig
    n_views = 2

    def __init__(self, config: BarlowTwinsConfig, backbone, anchor=None, registry=None):
        super().__init__(config, backbone, anchor=anchor, registry=registry)
        self.projector = projector(backbone.out_dim, config.projector_dims)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        v1, v2 = batch.views  # (B, C, *spatial) each
        z1 = self.projector(self.backbone(v1))  # (B, D)
        z2 = self.projector(self.backbone(v2))
        loss = barlow_twins_loss(z1, z2, self.config.lambd)
        embeddings = F.normalize(torch.stack([z1, z2]), dim=-1).detach()  # (2, B, D)
        return ObjectiveOutput(loss=loss, logs={"loss": float(loss.detach())},
                               embeddings=embeddings)
