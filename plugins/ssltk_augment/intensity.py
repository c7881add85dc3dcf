"""Intensity augmentations: gamma, contrast, bias field, scale/shift, z-score normalisation.

All act per sample and channel on ``(B, C, *spatial)`` and keep shape, dtype and device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ssltk.interfaces import Augmentation
from ssltk_augment._common import (
    BaseConfig, Range, apply_mask, channel_minmax, expand, on_subset, uniform,
)


class Gamma(Augmentation):
    """Gamma curve ``y = x^gamma`` on min-max normalised intensities, range restored after.

    Per sample and channel: ``lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma``; mimics
    scanner/contrast differences (Pérez-García et al., TorchIO, CMPB 2021, RandomGamma).
    """

    name = "gamma"

    class Config(BaseConfig):
        p: float = Field(default=0.5, ge=0, le=1, description="Probability a sample is changed.")
        gamma: Range = Field(default=(0.7, 1.5), description="Exponent range (> 0).")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        mask = apply_mask(generator, x.shape[0], self.config.p)
        gamma = uniform(generator, x.shape[0], *self.config.gamma).clamp(min=1e-3).cpu()

        def apply(sub: Tensor, idx: list[int]) -> Tensor:
            lo, hi = channel_minmax(sub)
            span = (hi - lo).clamp(min=1e-8)
            unit = ((sub - lo) / span).clamp(0, 1)
            return lo + span * unit.pow(expand(gamma[idx], sub))

        return on_subset(x, mask, apply)


class Contrast(Augmentation):
    """Scale deviations from the mean: ``y = mean + c (x - mean)``, per sample and channel."""

    name = "contrast"

    class Config(BaseConfig):
        p: float = Field(default=0.5, ge=0, le=1, description="Probability a sample is changed.")
        factor: Range = Field(default=(0.75, 1.25), description="Contrast factor range.")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        mask = apply_mask(generator, x.shape[0], self.config.p)
        factor = uniform(generator, x.shape[0], *self.config.factor).cpu()

        def apply(sub: Tensor, idx: list[int]) -> Tensor:
            mean = sub.flatten(2).mean(-1).view(*sub.shape[:2], *([1] * (sub.ndim - 2)))
            return mean + (sub - mean) * expand(factor[idx], sub)

        return on_subset(x, mask, apply)


class BiasField(Augmentation):
    """Smooth multiplicative intensity inhomogeneity, as MRI's B1 bias field.

    ``y = x * exp(f)`` where ``f`` is a coarse ``control_points^D`` grid of N(0, a^2) values
    (``a ~ U(0, strength)`` per sample) upsampled (bi/trilinear, corners aligned) to the
    volume: a cheap low-resolution field, in the spirit of N4's B-spline model (Tustison et
    al., IEEE TMI 2010) and TorchIO's RandomBiasField. Channels share the field.
    """

    name = "bias_field"

    class Config(BaseConfig):
        p: float = Field(default=0.5, ge=0, le=1, description="Probability a sample is changed.")
        strength: float = Field(default=0.3, ge=0,
                                description="Max std of the log-field (0.3: about ±30 %).")
        control_points: int = Field(default=4, ge=2, le=16,
                                    description="Coarse grid size per axis (smoothness).")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        cfg = self.config
        batch, dims = x.shape[0], x.ndim - 2
        mask = apply_mask(generator, batch, cfg.p)
        amp = uniform(generator, batch, 0.0, cfg.strength).cpu()
        coarse = torch.randn((batch, 1, *([cfg.control_points] * dims)), generator=generator,
                             dtype=torch.float64, device=generator.device).cpu()

        def apply(sub: Tensor, idx: list[int]) -> Tensor:
            work = torch.float32 if sub.dtype in (torch.float16, torch.bfloat16) else sub.dtype
            low = (coarse[idx] * amp[idx].view(-1, *([1] * (dims + 1)))).to(sub.device, work)
            mode = "bilinear" if dims == 2 else "trilinear"
            field = F.interpolate(low, size=sub.shape[2:], mode=mode, align_corners=True)
            return sub * field.exp_()

        return on_subset(x, mask, apply)


class Intensity(Augmentation):
    """Random global scale and shift: ``y = s x + t``, one ``(s, t)`` per sample."""

    name = "intensity"

    class Config(BaseConfig):
        p: float = Field(default=0.5, ge=0, le=1, description="Probability a sample is changed.")
        scale: Range = Field(default=(0.9, 1.1), description="Multiplicative factor range.")
        shift: Range = Field(default=(-0.1, 0.1), description="Additive offset range.")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        mask = apply_mask(generator, x.shape[0], self.config.p)
        scale = uniform(generator, x.shape[0], *self.config.scale).cpu()
        shift = uniform(generator, x.shape[0], *self.config.shift).cpu()

        def apply(sub: Tensor, idx: list[int]) -> Tensor:
            return sub * expand(scale[idx], sub) + expand(shift[idx], sub)

        return on_subset(x, mask, apply)


class ZScore(Augmentation):
    """Normalise each sample and channel to zero mean, unit std (deterministic).

    With ``nonzero`` the statistics come from non-zero voxels only and the zero background is
    kept (skull-stripped MRI). ``p`` is fixed to 1: a normalisation is applied to every sample
    or not put in the pipeline. It draws nothing from the generator.
    """

    name = "zscore"

    class Config(BaseConfig):
        p: float = Field(default=1.0, ge=1, le=1, description="Always 1 (deterministic op).")
        nonzero: bool = Field(default=False, description="Use and change non-zero voxels only.")
        eps: float = Field(default=1e-8, gt=0, description="Added to the std.")

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self._normalise(x).to(x.dtype)

    def _normalise(self, sub: Tensor) -> Tensor:
        work = sub.float() if sub.dtype in (torch.float16, torch.bfloat16) else sub
        flat = work.flatten(2)
        shape = (*sub.shape[:2], *([1] * (sub.ndim - 2)))
        if not self.config.nonzero:
            mean, std = flat.mean(-1), flat.std(-1, unbiased=False)
            return (work - mean.view(shape)) / (std.view(shape) + self.config.eps)
        keep = flat != 0
        count = keep.sum(-1).clamp(min=1)
        mean = (flat * keep).sum(-1) / count
        var = (((flat - mean[..., None]) * keep) ** 2).sum(-1) / count
        out = (work - mean.view(shape)) / (var.sqrt().view(shape) + self.config.eps)
        return torch.where(work != 0, out, work)
