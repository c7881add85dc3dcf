"""Small synthetic volumes for the plugin contract tests (no files, no downloads)."""

from __future__ import annotations

import pytest
import torch


def smooth_volume(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """``(B, C, *spatial)`` in [0, 1]: a sum of low-frequency cosines (interpolation-friendly)."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.linspace(0, 1, n) for n in shape[2:]], indexing="ij")
    out = torch.zeros(shape)
    for b in range(shape[0]):
        for c in range(shape[1]):
            freq = torch.rand(len(grids), generator=g) * 2 + 0.5
            phase = torch.rand(len(grids), generator=g) * 6.28
            vol = sum(torch.cos(f * 3.14 * grid + ph) for f, grid, ph in zip(freq, grids, phase))
            out[b, c] = (vol / len(grids) + 1) / 2
    return out


@pytest.fixture
def vol3d() -> torch.Tensor:
    """``(2, 1, 16, 16, 16)`` uniform noise in [0, 1]."""
    return torch.rand((2, 1, 16, 16, 16), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def vol2d() -> torch.Tensor:
    """``(3, 2, 12, 16)`` uniform noise in [0, 1] (2 channels, non-square)."""
    return torch.rand((3, 2, 12, 16), generator=torch.Generator().manual_seed(2))
