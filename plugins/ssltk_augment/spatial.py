"""Spatial augmentations: random resized crop, flip, affine.

Each only draws per-sample matrices (:meth:`sample_matrices`); :func:`ssltk.augment.resample`
applies them with the cheapest exact path (slicing + resize for crops, ``torch.flip`` for flips,
one ``grid_sample`` otherwise), and :class:`ssltk.augment.Pipeline` fuses consecutive ones.
Matrices map output to input coordinates normalised to [-1, 1] (``align_corners=False``).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from ssltk.errors import ConfigError
from ssltk.interfaces import SpatialAugmentation
from ssltk_augment._common import BaseConfig, Range, apply_mask, uniform


def _identity(batch: int, dims: int) -> Tensor:
    return torch.eye(dims + 1, dtype=torch.float64).repeat(batch, 1, 1)


class RandomResizedCrop(SpatialAugmentation):
    """Crop a random box and resize it back to the input size (SimCLR's main augmentation).

    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML
    2020, extended to D dims: the box keeps ``scale`` of the volume, with per-axis aspect ratios
    drawn log-uniformly in ``ratio`` (normalised so their product is 1); box sides are whole
    voxels, so the resampling is slicing + linear resize. ``(B, C, *spatial) -> same``.
    """

    name = "random_resized_crop"

    class Config(BaseConfig):
        p: float = Field(default=1.0, ge=0, le=1, description="Probability a sample is cropped.")
        scale: Range = Field(default=(0.5, 1.0), description="Fraction of the volume kept.")
        ratio: Range = Field(default=(0.75, 4 / 3),
                             description="Range of each axis' aspect factor (log-uniform).")

    def sample_matrices(self, x_shape: torch.Size, generator: torch.Generator) -> Tensor:
        cfg = self.config
        batch, sizes = x_shape[0], torch.tensor(x_shape[2:], dtype=torch.float64)
        dims = len(sizes)
        # every draw, for every sample, before masking
        mask = apply_mask(generator, batch, cfg.p).cpu()
        frac = uniform(generator, batch, *cfg.scale).cpu()
        log_r = uniform(generator, (batch, dims), math.log(cfg.ratio[0]),
                        math.log(cfg.ratio[1])).cpu()
        pos = uniform(generator, (batch, dims), 0.0, 1.0).cpu()

        log_r = log_r - log_r.mean(1, keepdim=True)  # aspect factors with product 1
        side = frac[:, None] ** (1 / dims) * log_r.exp()
        size = (side * sizes).round().clamp(min=1).minimum(sizes)
        start = torch.floor(pos * (sizes - size + 1)).minimum(sizes - size)
        m = _identity(batch, dims)
        idx = torch.arange(dims)
        m[:, idx, idx] = torch.where(mask[:, None], size / sizes, 1.0)
        m[:, idx, dims] = torch.where(mask[:, None], (2 * start + size) / sizes - 1, 0.0)
        return m


class Flip(SpatialAugmentation):
    """Mirror samples along random spatial axes (exact: ``torch.flip``, no interpolation).

    A selected sample (probability ``p``) flips each axis of ``axes`` with probability
    ``axis_p``. Brain MRI: only the left-right axis (axis 0 in RAS) gives plausible anatomy.
    ``(B, C, *spatial) -> same``.
    """

    name = "flip"

    class Config(BaseConfig):
        p: float = Field(default=1.0, ge=0, le=1, description="Probability a sample may flip.")
        axes: list[int] | None = Field(
            default=None, description="Spatial axes (0-based) that may flip; None = all.")
        axis_p: float = Field(default=0.5, ge=0, le=1,
                              description="Probability each axis of `axes` flips.")

    def sample_matrices(self, x_shape: torch.Size, generator: torch.Generator) -> Tensor:
        batch, dims = x_shape[0], len(x_shape) - 2
        axes = list(range(dims)) if self.config.axes is None else self.config.axes
        if any(not 0 <= a < dims for a in axes):
            raise ConfigError(f"flip.axes: {axes} has an axis outside 0..{dims - 1} "
                              f"for {dims}D input")
        mask = apply_mask(generator, batch, self.config.p).cpu()
        per_axis = (uniform(generator, (batch, dims), 0.0, 1.0) < self.config.axis_p).cpu()
        allowed = torch.zeros(dims, dtype=torch.bool)
        allowed[axes] = True
        flip = per_axis & allowed & mask[:, None]
        m = _identity(batch, dims)
        idx = torch.arange(dims)
        m[:, idx, idx] = torch.where(flip, -1.0, 1.0).double()
        return m


def rotation(angles: Tensor, dims: int) -> Tensor:
    """``(B, n_planes)`` radians -> ``(B, D, D)`` rotations, one per plane (D=2: 1, D=3: 3)."""
    batch = angles.shape[0]
    rot = torch.eye(dims, dtype=torch.float64).repeat(batch, 1, 1)
    planes = [(0, 1)] if dims == 2 else [(1, 2), (0, 2), (0, 1)]
    for k, (i, j) in enumerate(planes):
        c, s = angles[:, k].cos(), angles[:, k].sin()
        r = torch.eye(dims, dtype=torch.float64).repeat(batch, 1, 1)
        r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
        rot = rot @ r
    return rot


class Affine(SpatialAugmentation):
    """Random rotation, scaling and translation, rigid in voxel space (one ``grid_sample``).

    Rotations are about the volume centre, one angle per plane (3 in 3D, 1 in 2D); ``scale``
    above 1 enlarges the content; outside the volume is 0 (background of skull-stripped MRI).
    ``(B, C, *spatial) -> same``.
    """

    name = "affine"

    class Config(BaseConfig):
        p: float = Field(default=0.5, ge=0, le=1, description="Probability a sample is moved.")
        degrees: float = Field(default=10.0, ge=0, le=180,
                               description="Rotation angle per plane drawn in [-degrees, degrees].")
        scale: Range = Field(default=(0.9, 1.1), description="Zoom factor range.")
        translate: float = Field(default=0.05, ge=0, le=1,
                                 description="Shift per axis in [-t, t] x the axis extent.")
        isotropic: bool = Field(default=True, description="One zoom factor for every axis.")

    def sample_matrices(self, x_shape: torch.Size, generator: torch.Generator) -> Tensor:
        cfg = self.config
        batch, dims = x_shape[0], len(x_shape) - 2
        planes = 1 if dims == 2 else 3
        mask = apply_mask(generator, batch, cfg.p).cpu()
        angles = uniform(generator, (batch, planes), -cfg.degrees, cfg.degrees).cpu()
        zoom = uniform(generator, (batch, dims), *cfg.scale).cpu()
        shift = uniform(generator, (batch, dims), -cfg.translate, cfg.translate).cpu()
        if cfg.isotropic:
            zoom = zoom[:, :1].expand(batch, dims)

        half = torch.tensor(x_shape[2:], dtype=torch.float64) / 2  # normalised -> voxel units
        lin = rotation(torch.deg2rad(angles), dims) / zoom[:, None, :]
        lin = lin * half[None, None, :] / half[None, :, None]  # H^-1 (R S^-1) H
        m = _identity(batch, dims)
        m[:, :dims, :dims] = lin
        m[:, :dims, dims] = 2 * shift
        return torch.where(mask[:, None, None], m, _identity(batch, dims))
