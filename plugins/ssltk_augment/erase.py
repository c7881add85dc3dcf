"""Cutout: erase random boxes (slice assignment, no full-volume mask)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from ssltk.interfaces import Augmentation
from ssltk_augment._common import BaseConfig, IntRange, Range, apply_mask, randint, uniform


def box_slices(start: Tensor, size: Tensor) -> tuple[slice, ...]:
    """``(D,)`` starts and sizes -> index for ``(C, *spatial)``: ``[:, s0:s0+n0, ...]``."""
    return (slice(None), *(slice(int(s), int(s) + int(n)) for s, n in zip(start, size)))


class Cutout(Augmentation):
    """Fill random boxes with a constant (DeVries & Taylor, "Improved Regularization of CNNs with
    Cutout", 2017; MONAI's RandCoarseDropout).

    Each selected sample gets ``n_boxes`` boxes (count drawn in the range), each side a random
    fraction ``size`` of the axis, placed uniformly inside the volume; ``fill`` is a value or
    ``"mean"`` (the sample's mean per channel). ``(B, C, *spatial) -> same``.
    """

    name = "cutout"

    class Config(BaseConfig):
        p: float = Field(default=0.5, ge=0, le=1, description="Probability a sample is erased.")
        n_boxes: IntRange = Field(default=(1, 1), description="Range of the number of boxes.")
        size: Range = Field(default=(0.1, 0.3),
                            description="Box side as a fraction of each axis (range).")
        fill: float | Literal["mean"] = Field(default=0.0, description="Value put in the boxes.")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        cfg = self.config
        batch, dims = x.shape[0], x.ndim - 2
        most = max(cfg.n_boxes[1], 0)
        sizes = torch.tensor(x.shape[2:], dtype=torch.float64)
        mask = apply_mask(generator, batch, cfg.p).cpu()
        count = randint(generator, batch, cfg.n_boxes[0], cfg.n_boxes[1]).cpu()
        frac = uniform(generator, (batch, most, dims), *cfg.size).cpu()
        pos = uniform(generator, (batch, most, dims), 0.0, 1.0).cpu()

        side = (frac * sizes).round().clamp(min=1).minimum(sizes)
        start = torch.floor(pos * (sizes - side + 1)).minimum(sizes - side)
        out = x.clone()
        for i in torch.nonzero(mask).flatten().tolist():
            fill = x[i].flatten(1).mean(1) if cfg.fill == "mean" else None
            for j in range(int(count[i])):
                region = out[i][box_slices(start[i, j], side[i, j])]
                if fill is None:
                    region.fill_(cfg.fill)
                else:
                    region.copy_(fill.view(-1, *([1] * dims)).expand_as(region))
        return out
