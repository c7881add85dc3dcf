"""Helpers shared by the augmentations: ranged configs, seeded draws, per-sample application.

Randomness rules (see docs/augmentations.md):

* Small per-sample parameters are drawn from the caller's generator (a CPU generator), for all B
  samples, *before* looking at which samples ``p`` selected, then moved to the batch's device.
  The generator therefore advances by the same amount whatever ``p`` decided, and a sample's
  parameters do not depend on the other samples' outcomes.
* Large random fields (noise volumes, shuffling keys) are drawn on the batch's device from a
  per-sample seed that is itself one of those small draws: reproducible for a given device type,
  and cheap on GPU (no host->device copy of a volume of noise).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch
from pydantic import AfterValidator, Field
from torch import Tensor

from ssltk.interfaces import AugmentationConfig


def _ordered(value: tuple[float, float]) -> tuple[float, float]:
    if value[0] > value[1]:
        raise ValueError(f"range must be (low, high) with low <= high, got {list(value)}")
    return value


Range = Annotated[tuple[float, float], AfterValidator(_ordered)]
"""A ``[low, high]`` pair (a TOML list), validated ``low <= high``."""

IntRange = Annotated[tuple[int, int], AfterValidator(_ordered)]


class BaseConfig(AugmentationConfig):
    """``p`` with bounds and a description; subclasses override the default."""

    p: float = Field(default=1.0, ge=0.0, le=1.0,
                     description="Probability that a sample is transformed.")


def uniform(generator: torch.Generator, shape: tuple[int, ...] | int, low: float,
            high: float) -> Tensor:
    """``shape`` draws from U[low, high), float64, on the generator's device."""
    shape = (shape,) if isinstance(shape, int) else shape
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=generator.device)
    return low + (high - low) * u


def randint(generator: torch.Generator, shape: tuple[int, ...] | int, low: Tensor | int,
            high: Tensor | int) -> Tensor:
    """Integers uniform in ``[low, high]`` (inclusive, broadcast), int64, one uniform per value."""
    shape = (shape,) if isinstance(shape, int) else shape
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=generator.device)
    low_t = torch.as_tensor(low, dtype=torch.float64)
    high_t = torch.as_tensor(high, dtype=torch.float64).clamp(min=low_t)
    return (low_t + torch.floor(u * (high_t - low_t + 1))).clamp(max=high_t).long()


def apply_mask(generator: torch.Generator, batch: int, p: float) -> Tensor:
    """``(B,)`` bool: which samples are transformed. Always draws B uniforms (seed alignment)."""
    return torch.rand(batch, generator=generator, device=generator.device) < p


def seeds(generator: torch.Generator, batch: int) -> Tensor:
    """``(B,)`` int64 seeds for the per-sample generators of large random fields."""
    return torch.randint(0, 2**62, (batch,), generator=generator, device=generator.device)


def sample_generator(seed: Tensor | int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded for one sample."""
    return torch.Generator(device=device).manual_seed(int(seed))


def selected(mask: Tensor) -> list[int]:
    """Indices of the samples to transform."""
    return [int(i) for i in torch.nonzero(mask.cpu()).flatten()]


def per_sample(x: Tensor, mask: Tensor, fn: Callable[[Tensor, int], Tensor]) -> Tensor:
    """``out[i] = fn(x[i], i)`` where ``mask[i]``, else ``x[i]``; ``x`` is not modified."""
    out = x.clone()
    for i in selected(mask):
        out[i] = fn(x[i], i)
    return out


def on_subset(x: Tensor, mask: Tensor, fn: Callable[[Tensor, list[int]], Tensor]) -> Tensor:
    """``out[idx] = fn(x[idx], idx)`` for the selected ``idx`` (one batched call), else copy."""
    out = x.clone()
    idx = selected(mask)
    if idx:
        out[idx] = fn(x[idx], idx).to(x.dtype)
    return out


def expand(values: Tensor, x: Tensor) -> Tensor:
    """``(k,)`` per-sample values -> ``(k, 1, ..., 1)`` on ``x``'s device and dtype."""
    return values.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))


def channel_minmax(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample and channel min and max of ``(k, C, *spatial)``, each ``(k, C, 1, ...)``."""
    flat = x.flatten(2)
    shape = (*x.shape[:2], *([1] * (x.ndim - 2)))
    return flat.amin(-1).view(shape), flat.amax(-1).view(shape)
