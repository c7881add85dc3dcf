"""Gaussian blur and Gaussian noise, batched with per-sample parameters."""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from ssltk.interfaces import Augmentation
from ssltk_augment._common import (
    BaseConfig, Range, apply_mask, on_subset, sample_generator, seeds, selected, uniform,
)


def gaussian_matrices(sigma: Tensor, n: int, truncate: float) -> Tensor:
    """``(k,)`` sigmas -> ``(k, n, n)`` matrices ``T`` with ``T @ v`` = 1D Gaussian smoothing of v.

    Taps beyond ``truncate * sigma`` are dropped, weights normalised to sum 1 and, at the
    borders, taps falling outside are folded onto the edge voxel (replicate padding), so every row
    sums to 1 and a constant signal is unchanged.
    """
    radius = max(1, math.ceil(truncate * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (offsets[None] / sigma[:, None].clamp(min=1e-6)) ** 2)  # (k, taps)
    w = torch.where(offsets.abs()[None] <= truncate * sigma[:, None] + 1e-9, w, 0.0)
    w = w / w.sum(1, keepdim=True)
    rows = torch.arange(n)
    cols = (rows[:, None] + offsets.long()[None]).clamp(0, n - 1)  # (n, taps)
    mats = torch.zeros(sigma.shape[0], n, n, dtype=torch.float64)
    index = cols[None].expand(sigma.shape[0], n, -1)
    return mats.scatter_add_(2, index, w[:, None, :].expand(-1, n, -1).contiguous())


def smooth_axis(x: Tensor, mats: Tensor, axis: int) -> Tensor:
    """Apply ``(k, n, n)`` per-sample matrices along spatial ``axis`` of ``(k, C, *spatial)``.

    A dense banded matmul per axis instead of a depthwise convolution: BLAS makes it 2-3x
    faster than ``conv3d(groups=k)`` on CPU at 96^3, and per-sample kernels come for free.
    """
    k, sizes = x.shape[0], x.shape[2:]
    n = sizes[axis]
    post = math.prod(sizes[axis + 1:])
    if post == 1:  # last axis: (k, rest, n) @ (k, n, n)^T
        return torch.bmm(x.reshape(k, -1, n), mats.transpose(1, 2)).view(x.shape)
    pre = x.shape[1] * math.prod(sizes[:axis])
    return torch.matmul(mats[:, None], x.reshape(k, pre, n, post)).view(x.shape)


class GaussianBlur(Augmentation):
    """Gaussian smoothing with a random sigma (in voxels) per sample, separable over the axes.

    Chen et al. (SimCLR), ICML 2020, use blur as a view augmentation; in MRI it mimics lower
    resolution. ``(B, C, *spatial) -> same``; channels share their sample's sigma.
    """

    name = "gaussian_blur"

    class Config(BaseConfig):
        p: float = Field(default=0.5, ge=0, le=1, description="Probability a sample is blurred.")
        sigma: Range = Field(default=(0.5, 1.5), description="Sigma range, in voxels.")
        isotropic: bool = Field(default=True, description="One sigma for every axis.")
        truncate: float = Field(default=4.0, gt=0, description="Kernel radius in sigmas.")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        cfg = self.config
        batch, dims = x.shape[0], x.ndim - 2
        mask = apply_mask(generator, batch, cfg.p)
        sigma = uniform(generator, (batch, dims), *cfg.sigma).cpu()
        if cfg.isotropic:
            sigma = sigma[:, :1].expand(batch, dims)

        def blur(sub: Tensor, idx: list[int]) -> Tensor:
            work = sub if sub.dtype in (torch.float32, torch.float64) else sub.float()
            for axis in range(dims):
                mats = gaussian_matrices(sigma[idx, axis], sub.shape[2 + axis], cfg.truncate)
                work = smooth_axis(work, mats.to(work.device, work.dtype), axis)
            return work

        return on_subset(x, mask, blur)


class GaussianNoise(Augmentation):
    """Additive Gaussian noise with a random standard deviation per sample.

    ``(B, C, *spatial) -> same``; the noise volume is drawn on the batch's device from a
    per-sample seed (see the module docs of ``ssltk_augment._common``).
    """

    name = "gaussian_noise"

    class Config(BaseConfig):
        p: float = Field(default=0.5, ge=0, le=1, description="Probability a sample gets noise.")
        std: Range = Field(default=(0.01, 0.1),
                           description="Noise standard deviation range (intensity units).")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        batch = x.shape[0]
        mask = apply_mask(generator, batch, self.config.p)
        std = uniform(generator, batch, *self.config.std).cpu()
        seed = seeds(generator, batch)
        out = x.clone()
        for i in selected(mask):
            g = sample_generator(seed[i], x.device)
            noise = torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype)
            out[i].add_(noise, alpha=float(std[i]))
        return out
