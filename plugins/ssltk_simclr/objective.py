"""The SimCLR objective: backbone + MLP projection head + NT-Xent over two views."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ssltk.distributed import gather_with_grad
from ssltk.heads import ProjectionHeadConfig, build_projection_head
from ssltk.interfaces import Batch, Objective, ObjectiveOutput
from ssltk.presets import PresetConfig
from ssltk_simclr.loss import nt_xent_logits, positive_top1


PAPER: dict[str, Any] = {
    "proj_hidden_dim": None, "proj_dim": 128, "proj_layers": 2, "proj_batch_norm": False,
    "proj_output_norm": False, "temperature": 0.1, "augmentations": "paper",
}
"""SimCLR's published setting (Chen, Kornblith, Norouzi, Hinton, ICML 2020): the head
Linear(out_dim) -> ReLU -> Linear(128), tau = 0.1 (its ImageNet runs) and its view
augmentations, :func:`paper_views`. ``preset = "paper"``; docs/methods/simclr.md."""


def paper_views(spatial_dims: int) -> list[dict[str, Any]]:
    """SimCLR's augmentations (its appendix A) for grey 2D images and 3D volumes.

    Random resized crop of 8-100 % of the area (aspect 3/4-4/3) always; a horizontal flip half
    the time (2D: the width axis; 3D: left-right, axis 0); colour distortion 80 % of the time,
    its grey-level analogue: brightness and contrast factors in [0.2, 1.8] (jitter strength
    0.8; saturation, hue and grey-scale conversion have no grey-level counterpart); Gaussian
    blur half the time with sigma in [0.1, 2.0] pixels.
    """
    return [
        {"name": "random_resized_crop", "p": 1.0, "scale": [0.08, 1.0], "ratio": [0.75, 4 / 3]},
        {"name": "flip", "p": 0.5, "axes": [1 if spatial_dims == 2 else 0], "axis_p": 1.0},
        {"name": "intensity", "p": 0.8, "scale": [0.2, 1.8], "shift": [0.0, 0.0]},
        {"name": "contrast", "p": 0.8, "factor": [0.2, 1.8]},
        {"name": "gaussian_blur", "p": 0.5, "sigma": [0.1, 2.0]},
    ]


class SimCLRConfig(ProjectionHeadConfig, PresetConfig):
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": PAPER}
    proj_hidden_dim: int | None = Field(
        default=None, ge=1,
        description="Hidden width of the head; None uses the backbone's out_dim (the paper: "
                    "2048 = ResNet-50's width).")
    temperature: float = Field(default=0.1, gt=0, description="NT-Xent temperature tau.")
    gather_distributed: bool = Field(
        default=True, description="Under torch.distributed, use every rank's views as negatives.")
    augmentations: Literal["default", "paper"] = Field(
        default="default", description="View pipeline when pretrain.augmentations is unset: "
                                       "'default' (the engine's) or 'paper' (SimCLR's set).")


class SimCLR(Objective):
    """SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML 2020).

    Both views go through the backbone and a projection head ``g`` (``proj_layers`` Linear
    layers, 2 by default; 3 with ``proj_batch_norm`` is the SimCLRv2 head), and NT-Xent is
    computed over the 2N projections. Under DDP the projections of every rank are gathered
    (with gradients) so the negatives are the global batch.

    Logs: ``loss``, ``acc`` (top-1 accuracy of retrieving each view's positive among the other
    2N - 1 views).
    """

    name = "simclr"
    Config = SimCLRConfig
    n_views = 2

    def __init__(self, config: SimCLRConfig, backbone, anchor=None, registry=None):
        super().__init__(config, backbone, anchor=anchor, registry=registry)
        self.head = build_projection_head(config, backbone.out_dim)

    def view_pipeline(self, spatial_dims: int) -> list[dict[str, Any]] | None:
        """SimCLR's own augmentations under ``augmentations = "paper"``, else the default."""
        return paper_views(spatial_dims) if self.config.augmentations == "paper" else None

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial) -> (B, proj_dim)`` un-normalised projection."""
        return self.head(self.backbone(x))

    def forward(self, batch: Batch) -> ObjectiveOutput:
        v1, v2 = batch.views
        z1, z2 = self.project(v1), self.project(v2)  # (B, D) each
        # The loss in float32 even under autocast: logits are cosines / tau, up to 1 / tau.
        with torch.autocast(z1.device.type, enabled=False):
            g1, g2 = z1.float(), z2.float()
            if self.config.gather_distributed:
                g1, g2 = gather_with_grad(g1), gather_with_grad(g2)  # (W*B, D)
            logits, targets = nt_xent_logits(g1, g2, self.config.temperature)
            loss = F.cross_entropy(logits, targets)
        embeddings = F.normalize(torch.stack([z1, z2]).float(), dim=-1).detach()  # (2, B, D)
        logs = {"loss": loss.detach(), "acc": positive_top1(logits.detach(), targets)}
        return ObjectiveOutput(loss=loss, logs=logs, embeddings=embeddings)
