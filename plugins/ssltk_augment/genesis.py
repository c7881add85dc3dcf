"""Models Genesis intensity and texture corruptions: non-linear curve and local pixel shuffling.

Zhou et al., "Models Genesis: Generic Autodidactic Models for 3D Medical Image Analysis",
MICCAI 2019; extended in Medical Image Analysis 67, 2021. Defaults follow the authors' code
(MrGiovanni/ModelsGenesis, ``config.py``: ``nonlinear_rate = 0.9``, ``local_rate = 0.5``).
Intensities are assumed in [0, 1] (the paper's min-max scaled CT); transformed samples are
clamped to [0, 1]. Batched re-implementation, not a port: see docs/augmentations.md.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from ssltk.interfaces import Augmentation
from ssltk_augment._common import (
    BaseConfig, apply_mask, per_sample, randint, sample_generator, seeds, uniform,
)


def bezier_luts(ctrl: Tensor, reverse: Tensor, n_lut: int, n_curve: int = 2000) -> Tensor:
    """Per-sample intensity look-up tables from cubic Bezier curves.

    Args:
        ctrl: ``(B, 2, 2)`` the two inner control points ``(x, y)``; the ends are (0,0), (1,1).
        reverse: ``(B,)`` bool, map to a decreasing curve (the paper's "flipped" curve).
        n_lut: LUT size over a uniform grid of [0, 1].

    Returns:
        ``(B, n_lut)`` float64: ``lut[b, k]`` = output intensity for input ``k / (n_lut - 1)``.
    """
    t = torch.linspace(0, 1, n_curve, dtype=torch.float64)[None, :, None]  # (1, T, 1)
    p1, p2 = ctrl[:, None, 0], ctrl[:, None, 1]  # (B, 1, 2)
    curve = 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3  # P0 = 0, P3 = 1
    xs = curve[..., 0].sort(-1).values
    ys = curve[..., 1].sort(-1).values  # sorted independently, as the authors do: monotone
    ys = torch.where(reverse[:, None], ys.flip(-1), ys)
    grid = torch.linspace(0, 1, n_lut, dtype=torch.float64).expand(ctrl.shape[0], -1).contiguous()
    hi = torch.searchsorted(xs, grid).clamp(1, n_curve - 1)
    x0, x1 = xs.gather(1, hi - 1), xs.gather(1, hi)
    y0, y1 = ys.gather(1, hi - 1), ys.gather(1, hi)
    w = ((grid - x0) / (x1 - x0).clamp(min=1e-12)).clamp(0, 1)
    return y0 + w * (y1 - y0)


def apply_lut(x: Tensor, lut: Tensor) -> Tensor:
    """Piecewise-linear lookup of ``x`` (clamped to [0, 1]) in a uniform-grid ``(K,)`` LUT."""
    k = lut.shape[0]
    pos = x.clamp(0, 1) * (k - 1)
    low = pos.floor().clamp(max=k - 2)
    frac = pos - low
    low = low.long()
    return torch.lerp(lut[low], lut[low + 1], frac)


class GenesisNonlinear(Augmentation):
    """Monotone non-linear intensity curve (Models Genesis "non-linear transformation").

    A cubic Bezier curve through (0, 0) and (1, 1) with two random control points in [0, 1]^2
    maps intensities; half of the time (``reverse_p``) the curve is decreasing, which inverts
    the contrast. The network learns to restore intensity distributions.
    ``(B, C, *spatial) -> same``, values in [0, 1].
    """

    name = "genesis_nonlinear"

    class Config(BaseConfig):
        p: float = Field(default=0.9, ge=0, le=1,
                         description="Probability a sample is transformed (paper: nonlinear_rate 0.9).")
        reverse_p: float = Field(default=0.5, ge=0, le=1,
                                 description="Probability the curve is decreasing (paper: 0.5).")
        lut_size: int = Field(default=1024, ge=16, description="Resolution of the intensity LUT.")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        batch = x.shape[0]
        mask = apply_mask(generator, batch, self.config.p)
        ctrl = uniform(generator, (batch, 2, 2), 0.0, 1.0).cpu()
        reverse = (uniform(generator, batch, 0.0, 1.0) < self.config.reverse_p).cpu()
        luts = bezier_luts(ctrl, reverse, self.config.lut_size)
        work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype

        def apply(xi: Tensor, i: int) -> Tensor:
            return apply_lut(xi.to(work), luts[i].to(xi.device, work))

        return per_sample(x, mask, apply)


def _shuffle_blocks(xi: Tensor, side: list[int], offset: list[int], block_p: float,
                    g: torch.Generator) -> Tensor:
    """Permute voxels inside each block of a regular grid of ``side`` blocks (``(C, *spatial)``).

    The grid starts at ``offset``; edge strips narrower than a block stay in place. A block is
    shuffled with probability ``block_p``; all channels share the permutation.
    """
    sizes, dims = xi.shape[1:], xi.ndim - 1
    counts = [(n - o) // s for n, o, s in zip(sizes, offset, side)]
    if min(counts) < 1 or math.prod(side) < 2:
        return xi.clone()
    channels, n_blocks, vol = xi.shape[0], math.prod(counts), math.prod(side)
    index = (slice(None), *(slice(o, o + c * s) for o, c, s in zip(offset, counts, side)))
    split = [channels] + [v for c, s in zip(counts, side) for v in (c, s)]
    order = [0] + [1 + 2 * a for a in range(dims)] + [2 + 2 * a for a in range(dims)]
    blocks = xi[index].reshape(split).permute(order).reshape(channels, n_blocks, vol)
    perm = torch.rand((n_blocks, vol), generator=g, device=xi.device).argsort(-1)
    keep = torch.rand(n_blocks, generator=g, device=xi.device) >= block_p
    perm = torch.where(keep[:, None], torch.arange(vol, device=xi.device), perm)
    shuffled = blocks.gather(-1, perm.expand(channels, -1, -1))
    inverse = [order.index(a) for a in range(len(order))]
    grid_shape = [channels] + counts + side
    out = xi.clone()
    out[index] = shuffled.reshape(grid_shape).permute(inverse).reshape(out[index].shape)
    return out


class GenesisLocalShuffle(Augmentation):
    """Local pixel shuffling (Models Genesis): permute voxels within many small blocks.

    The authors shuffle 10000 random, possibly overlapping blocks (sides 1..dim//10 per axis)
    in a 64x64x32 sub-volume, one at a time. Batched version: per sample, block sides are drawn
    in ``1..max(1, dim * max_block)`` per axis and the volume is tiled by such blocks from a
    random offset; each block is shuffled with probability ``block_p``. The default 0.85 is the
    fraction of voxels the authors' 10000 blocks cover at 64x64x32 (1 - exp(-10000 * 24.5 /
    131072)), and the block count scales with the volume as their density does.
    Sides are at least 2 (a 1-voxel block is a no-op; the authors' code has only those below
    20 voxels per axis). Values keep their block: the multiset of each block is preserved. ``(B, C, *spatial)``.
    """

    name = "genesis_local_shuffle"

    class Config(BaseConfig):
        p: float = Field(default=0.5, ge=0, le=1,
                         description="Probability a sample is shuffled (paper: local_rate 0.5).")
        max_block: float = Field(default=0.1, gt=0, le=1,
                                 description="Largest block side as a fraction of each axis.")
        block_p: float = Field(default=0.85, ge=0, le=1,
                               description="Fraction of the blocks that are shuffled.")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        batch = x.shape[0]
        sizes = torch.tensor(x.shape[2:], dtype=torch.float64)
        mask = apply_mask(generator, batch, self.config.p)
        largest = (sizes * self.config.max_block).floor().clamp(min=2).minimum(sizes)
        side = randint(generator, (batch, sizes.numel()), 1, largest).cpu()
        offset = randint(generator, (batch, sizes.numel()), 0, side - 1).cpu()
        seed = seeds(generator, batch)

        def apply(xi: Tensor, i: int) -> Tensor:
            g = sample_generator(seed[i], xi.device)
            return _shuffle_blocks(xi.clamp(0, 1), side[i].tolist(), offset[i].tolist(),
                                   self.config.block_p, g)

        return per_sample(x, mask, apply)
