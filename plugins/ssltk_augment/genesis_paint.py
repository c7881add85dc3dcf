"""Models Genesis in-painting and out-painting (Zhou et al., MICCAI 2019 / MedIA 2021).

In-painting replaces up to 5 random boxes (sides 1/6..1/3 of each axis) with uniform noise;
out-painting replaces everything with uniform noise except up to 5 random boxes (sides
3/7..4/7 of each axis) that keep the image. A box is added while a U(0,1) draw stays below
0.95 (the first out-painting box always); boxes keep ``margin`` voxels from the border. The
authors paint 90 % of samples (``paint_rate``), in-painting 20 % and out-painting 80 % of those
(``inpaint_rate = 0.2``): :class:`GenesisPaint` reproduces that exclusive choice; the two single
ops default to the marginal rates 0.18 and 0.72. Intensities assumed in [0, 1], clamped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field
from torch import Tensor

from ssltk.interfaces import Augmentation
from ssltk_augment._common import (
    BaseConfig, Range, apply_mask, randint, sample_generator, seeds, selected, uniform,
)
from ssltk_augment.erase import box_slices


@dataclass
class Boxes:
    """Per-sample boxes, all drawn up front: counts ``(B,)``, starts/sides ``(B, n, D)``, seeds."""

    count: Tensor
    start: Tensor
    side: Tensor
    seed: Tensor


class _PaintConfig(BaseConfig):
    max_boxes: int = Field(default=5, ge=1, description="Most boxes per sample (paper: 5).")
    continue_p: float = Field(default=0.95, ge=0, le=1,
                              description="Probability of adding each further box (paper: 0.95).")
    margin: int = Field(default=3, ge=0, description="Voxels kept between a box and the border.")


def draw_boxes(generator: torch.Generator, shape: torch.Size, cfg: _PaintConfig,
               first_always: bool) -> Boxes:
    """Draw ``cfg.max_boxes`` boxes per sample (all of them, for seed alignment)."""
    batch, n_max = shape[0], cfg.max_boxes
    sizes = torch.tensor(shape[2:], dtype=torch.float64)
    go = (uniform(generator, (batch, n_max), 0.0, 1.0) < cfg.continue_p).cpu()
    if first_always:
        go[:, 0] = True
    count = go.long().cumprod(1).sum(1)  # boxes until the first failed draw
    lo = (sizes * cfg.size[0]).floor().clamp(min=1)
    hi = (sizes * cfg.size[1]).floor().clamp(min=1).maximum(lo)
    side = randint(generator, (batch, n_max, sizes.numel()), lo, hi).cpu().double()
    side = side.minimum(sizes)
    first = torch.minimum(torch.tensor(float(cfg.margin)), sizes - side)
    last = (sizes - side - cfg.margin).maximum(first)
    start = randint(generator, (batch, n_max, sizes.numel()), first, last).cpu()
    return Boxes(count, start, side.long(), seeds(generator, batch))


def inpaint(xi: Tensor, boxes: Boxes, i: int) -> Tensor:
    """``(C, *spatial)``: noise inside sample ``i``'s boxes."""
    out = xi.clamp(0, 1)
    g = sample_generator(boxes.seed[i], xi.device)
    for j in range(int(boxes.count[i])):
        region = out[box_slices(boxes.start[i, j], boxes.side[i, j])]
        region.copy_(torch.rand(region.shape, generator=g, device=xi.device, dtype=xi.dtype))
    return out


def outpaint(xi: Tensor, boxes: Boxes, i: int) -> Tensor:
    """``(C, *spatial)``: noise outside the union of sample ``i``'s boxes."""
    g = sample_generator(boxes.seed[i], xi.device)
    out = torch.rand(xi.shape, generator=g, device=xi.device, dtype=xi.dtype)
    for j in range(int(boxes.count[i])):
        index = box_slices(boxes.start[i, j], boxes.side[i, j])
        out[index] = xi[index].clamp(0, 1)
    return out


def _paint(x: Tensor, masks: list[tuple[Tensor, Boxes, object]]) -> Tensor:
    out = x.clone()
    for mask, boxes, fn in masks:
        for i in selected(mask):
            out[i] = fn(x[i], boxes, i)  # type: ignore[operator]
    return out


class GenesisInpaint(Augmentation):
    """Models Genesis in-painting: up to 5 boxes of uniform noise. ``(B, C, *spatial)``."""

    name = "genesis_inpaint"

    class Config(_PaintConfig):
        p: float = Field(default=0.18, ge=0, le=1,
                         description="Probability a sample is in-painted (paper: 0.9 x 0.2).")
        size: Range = Field(default=(1 / 6, 1 / 3), description="Box side / axis (paper).")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        mask = apply_mask(generator, x.shape[0], self.config.p)
        boxes = draw_boxes(generator, x.shape, self.config, first_always=False)
        return _paint(x, [(mask, boxes, inpaint)])


class GenesisOutpaint(Augmentation):
    """Models Genesis out-painting: noise except inside 1-5 boxes. ``(B, C, *spatial)``."""

    name = "genesis_outpaint"

    class Config(_PaintConfig):
        p: float = Field(default=0.72, ge=0, le=1,
                         description="Probability a sample is out-painted (paper: 0.9 x 0.8).")
        size: Range = Field(default=(3 / 7, 4 / 7), description="Kept box side / axis (paper).")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        mask = apply_mask(generator, x.shape[0], self.config.p)
        boxes = draw_boxes(generator, x.shape, self.config, first_always=True)
        return _paint(x, [(mask, boxes, outpaint)])


class GenesisPaint(Augmentation):
    """The authors' exclusive choice: paint with ``p``; in-paint with ``inpaint_rate``, else
    out-paint (paper defaults: ``paint_rate`` 0.9, ``inpaint_rate`` 0.2). ``(B, C, *spatial)``."""

    name = "genesis_paint"

    class Config(BaseConfig):
        p: float = Field(default=0.9, ge=0, le=1,
                         description="Probability a sample is painted (paper: paint_rate 0.9).")
        inpaint_rate: float = Field(default=0.2, ge=0, le=1,
                                    description="Share of painted samples in-painted (paper: 0.2).")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        mask = apply_mask(generator, x.shape[0], self.config.p)
        choose_in = (uniform(generator, x.shape[0], 0.0, 1.0) < self.config.inpaint_rate)
        in_boxes = draw_boxes(generator, x.shape, GenesisInpaint.Config(), first_always=False)
        out_boxes = draw_boxes(generator, x.shape, GenesisOutpaint.Config(), first_always=True)
        choose_in = choose_in.to(mask.device)
        return _paint(x, [(mask & choose_in, in_boxes, inpaint),
                          (mask & ~choose_in, out_boxes, outpaint)])
