"""Affine resampling of batched 2D/3D images: the geometry behind spatial augmentations.

A spatial augmentation (:class:`~ssltk.interfaces.SpatialAugmentation`) draws one matrix per
sample; :func:`resample` applies them. Matrices map *output* to *input* coordinates, normalised to
[-1, 1] per spatial axis (``align_corners=False``), so ops applied in order fuse into one
resampling with :func:`compose`. Pure tensor functions, no ssltk import: the interfaces and the
pipeline (:mod:`ssltk.augment`) both build on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_TOL = 1e-4  # how close to an integer a crop box must be to take the slicing path


def compose(matrices: Sequence[Tensor]) -> Tensor:
    """Fuse per-sample matrices of ops applied in order: ``[(B, D+1, D+1)] -> (B, D+1, D+1)``.

    Applying ``A`` then ``B`` samples the input at ``A @ B @ u`` for an output point ``u``.
    """
    out = matrices[0]
    for m in matrices[1:]:
        out = out @ m
    return out


def affine_grid(matrices: Tensor, sizes: Sequence[int], dtype: torch.dtype,
                device: torch.device) -> Tensor:
    """Sampling grid for :func:`torch.nn.functional.grid_sample`.

    Equivalent to ``F.affine_grid(..., align_corners=False)`` but built from D broadcast adds of
    per-axis terms instead of one ``(N, D+1) @ (D+1, D)`` product per sample: ~3x faster on CPU.

    Args:
        matrices: ``(k, D+1, D+1)`` output -> input maps in spatial-axis order.
        sizes: the D spatial sizes.

    Returns:
        ``(k, *sizes, D)``; the last dim lists coordinates last axis first, as grid_sample wants.
    """
    k, d = matrices.shape[0], len(sizes)
    rows = matrices[:, :d].to(device=device, dtype=dtype).flip(1)  # (k, D, D+1), reversed axes
    grid = rows[:, :, d].reshape(k, *([1] * d), d)
    for i, n in enumerate(sizes):
        coords = (torch.arange(n, device=device, dtype=dtype) * 2 + 1) / n - 1
        shape = [k] + [1] * d + [d]
        shape[1 + i] = n
        grid = grid + (rows[:, None, :, i] * coords[None, :, None]).view(shape)
    return grid


def crop_box(matrix: Tensor, sizes: Sequence[int]) -> list[tuple[int, int, bool]] | None:
    """``(start, size, flipped)`` per axis when ``matrix`` is an integer crop (+ flips), else None.

    Such a resampling is exactly slicing + a linear resize (+ torch.flip), which is much cheaper
    than a general grid_sample and, for pure flips, exact.
    """
    d = len(sizes)
    lin = matrix[:d, :d]
    if (lin - torch.diag(torch.diagonal(lin))).abs().max() > _TOL:
        return None
    box = []
    for i, n in enumerate(sizes):
        scale, shift = float(lin[i, i]), float(matrix[i, d])
        size = abs(scale) * n
        start = ((shift + 1) * n - size) / 2
        if abs(size - round(size)) > _TOL or abs(start - round(start)) > _TOL:
            return None
        size, start = round(size), round(start)
        if size < 1 or start < 0 or start + size > n:
            return None
        box.append((start, size, scale < 0))
    return box


def _apply_box(xi: Tensor, box: list[tuple[int, int, bool]]) -> Tensor:
    """``(C, *spatial)`` -> crop, resize back to the input size, flip."""
    sizes = xi.shape[1:]
    out = xi[(slice(None), *(slice(s, s + n) for s, n, _ in box))]
    if any(n != full for (_, n, _), full in zip(box, sizes)):
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(sizes)]
        out = F.interpolate(out[None], size=tuple(sizes), mode=mode, align_corners=False)[0]
    flips = [1 + i for i, (_, _, flipped) in enumerate(box) if flipped]
    return out.flip(flips) if flips else out


def resample(x: Tensor, matrices: Tensor) -> Tensor:
    """Resample each sample of ``x`` at its matrix: ``(B, C, *spatial) -> same shape``.

    Per sample, the cheapest exact path: identity -> copy; integer crop and/or flip -> slicing,
    ``F.interpolate`` and ``torch.flip``; anything else -> one bilinear/trilinear
    ``grid_sample`` (zeros outside the volume) over all such samples at once.

    Args:
        x: ``(B, C, *spatial)`` floating tensor, 2D or 3D.
        matrices: ``(B, D+1, D+1)`` output -> input maps (see
            :class:`~ssltk.interfaces.SpatialAugmentation`), on any device.
    """
    sizes = tuple(x.shape[2:])
    m = matrices.detach().to("cpu", torch.float64)
    eye = torch.eye(len(sizes) + 1, dtype=torch.float64)
    out = torch.empty_like(x)
    general = []
    for i in range(x.shape[0]):
        if torch.allclose(m[i], eye, atol=1e-12):
            out[i] = x[i]
        elif (box := crop_box(m[i], sizes)) is not None:
            out[i] = _apply_box(x[i], box)
        else:
            general.append(i)
    if general:
        work = x.dtype if x.is_cuda or x.dtype in (torch.float32, torch.float64) else torch.float32
        grid = affine_grid(m[general], sizes, work, x.device)
        sub = x[general].to(work)
        res = F.grid_sample(sub, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[general] = res.to(x.dtype)
    return out
