"""The y-Aware objective: SimCLR-like views whose pairs are weighted by a meta-data kernel."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ssltk.distributed import concat_all_gather, gather_with_grad
from ssltk.errors import ConfigError
from ssltk.heads import ProjectionHeadConfig, build_projection_head
from ssltk.interfaces import Anchor, Batch, Objective, ObjectiveOutput
from ssltk.losses import cosine_logits, positive_top1
from ssltk.presets import PresetConfig
from ssltk_yaware.loss import log_probs, rbf_kernel, weighted_nll, yaware_weights


PAPER: dict[str, Any] = {
    "proj_hidden_dim": 512, "proj_dim": 128, "proj_layers": 2, "proj_batch_norm": False,
    "proj_output_norm": False, "temperature": 0.1, "normalization": "published",
    "column": "age", "sigma": 5.0,
}
"""y-Aware's published setting (Dufumier et al., MICCAI 2021, and the authors' code): the head
Linear(512) -> ReLU -> Linear(128) without batch norm, tau = 0.1, an RBF kernel on age with
sigma = 5 years, the code's row normalisation. ``preset = "paper"``; docs/methods/yaware.md."""


class YAwareConfig(ProjectionHeadConfig, PresetConfig):
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": PAPER}
    proj_hidden_dim: int | None = Field(
        default=512, ge=1, description="Hidden width of the head (512 in the published code).")
    proj_output_norm: bool = Field(
        default=True,
        description="End the head with BatchNorm1d(affine=False) (MoCo v3's projector). The "
                    "published head (false) collapses into a narrow cone when sigma is wide "
                    "relative to the anchor's spread in a batch (docs/methods/yaware.md).")
    temperature: float = Field(
        default=0.5, gt=0,
        description="Softmax temperature tau (published: 0.1, with the published head).")
    normalization: Literal["published", "per_anchor"] = Field(
        default="published",
        description="'published' reproduces the authors' code (W / W.sum(axis=1) with numpy "
                    "broadcasting); 'per_anchor' divides each row by its own sum (paper eq. 3).")
    column: str = Field(
        default="age", description="Meta-data column of the default RBF anchor (no anchor given).")
    sigma: float = Field(
        default=5.0, gt=0, description="Width of the default RBF anchor (no anchor given).")
    gather_distributed: bool = Field(
        default=True, description="Under torch.distributed, use every rank's views as negatives.")


def default_anchor(config: YAwareConfig, registry) -> Anchor | None:
    """The registry's ``rbf`` anchor on ``config.column``/``config.sigma``, if one is registered."""
    if registry is None:
        return None
    try:
        return registry.build("anchors", {"name": "rbf", "columns": [config.column],
                                          "sigma": config.sigma}, "yaware.anchor")
    except ConfigError:  # no anchors plugin installed: fall back to the built-in RBF
        return None


class YAware(Objective):
    """y-Aware contrastive learning (Dufumier et al., "Contrastive Learning with Continuous Proxy
    Meta-Data for 3D MRI Classification", MICCAI 2021).

    Two views per subject go through the backbone and a projection head (published: Linear(512),
    ReLU, Linear(128); ours by default adds BatchNorm1d(affine=False) on the output and uses
    tau = 0.5, because the published head collapses at small batch or wide sigma, see
    docs/methods/yaware.md; ``preset = "paper"``, i.e. ``proj_output_norm = false, temperature =
    0.1``, is the published setting); every pair of the 2N views is attracted in proportion to the kernel of
    their subjects' meta-data. The kernel is the ``anchor`` given in the TOML, or an RBF of width
    ``sigma`` on ``column`` (age, sigma = 5 years) when none is. Under DDP the projections and
    the meta-data are gathered from every rank.

    Logs: ``loss``, ``acc`` (top-1 accuracy of retrieving each view's own positive).
    """

    name = "yaware"
    Config = YAwareConfig
    n_views = 2
    uses_anchor = True

    def __init__(self, config: YAwareConfig, backbone, anchor: Anchor | None = None,
                 registry=None):
        super().__init__(config, backbone, anchor=anchor, registry=registry)
        self.head = build_projection_head(config, backbone.out_dim)
        self.kernel_fn = anchor if anchor is not None else default_anchor(config, registry)

    def required_columns(self) -> tuple[str, ...]:
        if self.kernel_fn is not None:
            return tuple(self.kernel_fn.columns)
        return (self.config.column,)

    def complete_columns(self) -> tuple[str, ...]:
        if self.kernel_fn is not None:
            return tuple(self.kernel_fn.complete_columns)
        return (self.config.column,)

    def kernel(self, meta: dict[str, Tensor]) -> Tensor:
        """Subjects' similarity ``(N, N)`` from the (gathered) meta-data columns ``(N,)``."""
        if self.kernel_fn is not None:
            return self.kernel_fn(meta)
        return rbf_kernel(meta[self.config.column], self.config.sigma)

    def _columns(self, batch: Batch) -> dict[str, Tensor]:
        missing = [c for c in self.required_columns() if c not in batch.meta]
        if missing:
            raise KeyError(f"yaware needs metadata column(s) {missing}; the batch has "
                           f"{sorted(batch.meta)}")
        return {c: batch.meta[c] for c in self.required_columns()}

    def forward(self, batch: Batch) -> ObjectiveOutput:
        v1, v2 = batch.views
        z1, z2 = self.head(self.backbone(v1)), self.head(self.backbone(v2))  # (B, D)
        meta = self._columns(batch)
        # The loss in float32 even under autocast: logits are cosines / tau, up to 1 / tau.
        with torch.autocast(z1.device.type, enabled=False):
            g1, g2 = z1.float(), z2.float()
            if self.config.gather_distributed:
                g1, g2 = gather_with_grad(g1), gather_with_grad(g2)  # (W*B, D)
                meta = {c: concat_all_gather(v) for c, v in meta.items()}  # (W*B,)
            n = g1.shape[0]
            weights = yaware_weights(self.kernel(meta).detach().to(g1.dtype),
                                     self.config.normalization)  # (2N, 2N)
            logits, positives = cosine_logits(g1, g2, self.config.temperature)  # (2N, 2N)
            loss = weighted_nll(weights, log_probs(logits), n)
        acc = positive_top1(logits.detach(), positives)
        embeddings = F.normalize(torch.stack([z1, z2]).float(), dim=-1).detach()  # (2, B, D)
        return ObjectiveOutput(loss=loss, logs={"loss": loss.detach(), "acc": acc},
                               embeddings=embeddings)
