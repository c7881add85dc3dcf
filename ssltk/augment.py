"""Augmentation pipelines: ordered, seeded, batched, with consecutive spatial ops fused.

A :class:`Pipeline` is a list of registered augmentations applied in order to a batch
``(B, C, *spatial)`` with one explicit ``torch.Generator``. Runs of consecutive
:class:`~ssltk.interfaces.SpatialAugmentation` (crop, flip, affine) are fused: their per-sample
matrices are multiplied and the batch is resampled once (:func:`resample`), which is faster and
blurs less than one interpolation per op. The draws are the same as when the ops run one by one,
so a fused and an unfused pipeline see the same random parameters for the same seed.

The core never imports a plugin: augmentations are built by name through the registry.

>>> pipeline = Pipeline.from_specs(get_registry(), DEFAULT_PIPELINE)
>>> v1, v2 = pipeline.views(x, 2, torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ssltk.config import ComponentSpec
from ssltk.errors import ConfigError
from ssltk.interfaces import Augmentation, SpatialAugmentation

DEFAULT_PIPELINE: list[dict[str, Any]] = [
    {"name": "random_resized_crop", "p": 1.0, "scale": [0.6, 1.0], "ratio": [0.8, 1.25]},
    {"name": "flip", "p": 0.5, "axes": [0], "axis_p": 1.0},
    {"name": "affine", "p": 0.5, "degrees": 10.0, "scale": [0.9, 1.1], "translate": 0.05},
    {"name": "gaussian_blur", "p": 0.5, "sigma": [0.5, 1.0]},
    {"name": "gaussian_noise", "p": 0.5, "std": [0.01, 0.05]},
    {"name": "cutout", "p": 0.5, "n_boxes": [1, 1], "size": [0.1, 0.25], "fill": 0.0},
]
"""Default view-making pipeline for brain MRI (intensities in [0, 1], RAS, axis 0 left-right).

Crop 60-100 % of the volume (aspect 0.8-1.25) resized back; left-right flip half the time (the
only anatomically plausible flip); small rigid-ish affine (±10°, ±10 % scale, ±5 % shift) half
the time; blur (sigma 0.5-1 voxel) and noise (std 0.01-0.05) half the time each; one cutout box
of 10-25 % of each side half the time. See docs/augmentations.md.
"""

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


class Pipeline:
    """Registered augmentations applied in order, consecutive spatial ones fused.

    Args:
        augmentations: built augmentations, applied first to last.
        fuse: fuse runs of consecutive :class:`SpatialAugmentation` into one resampling
            (same random draws as unfused; only the interpolation error differs).
    """

    def __init__(self, augmentations: Sequence[Augmentation], fuse: bool = True):
        self.augmentations = list(augmentations)
        self.fuse = fuse

    @classmethod
    def from_specs(cls, registry: Any, specs: Sequence[dict[str, Any] | ComponentSpec],
                   path: str = "pretrain.augmentations", fuse: bool = True) -> Pipeline:
        """Build from ``[{"name": "flip", "p": 0.5, ...}, ...]``, each validated by the registry.

        Raises:
            ConfigError: a spec has no name, names an unknown augmentation or has a bad
                parameter; the message starts with ``{path}[i]``.
        """
        augmentations = []
        for i, spec in enumerate(specs):
            where = f"{path}[{i}]"
            if isinstance(spec, ComponentSpec):
                name, params = spec.name, spec.params()
            else:
                params = dict(spec)
                name = params.pop("name", None)
            if not isinstance(name, str):
                raise ConfigError(f"{where}: missing 'name' (e.g. {{name = \"flip\"}})")
            try:
                config = registry.config("augmentations", name, params, path=where)
            except ConfigError as exc:
                if str(exc).startswith(where):
                    raise
                raise ConfigError(f"{where}: {exc}") from None
            augmentations.append(registry.get("augmentations", name)(config))
        return cls(augmentations, fuse=fuse)

    def groups(self) -> list[list[Augmentation]]:
        """The ops as run: each group is one op, or a run of fused spatial ops."""
        groups: list[list[Augmentation]] = []
        for aug in self.augmentations:
            fusable = self.fuse and isinstance(aug, SpatialAugmentation)
            if fusable and groups and isinstance(groups[-1][-1], SpatialAugmentation):
                groups[-1].append(aug)
            else:
                groups.append([aug])
        return groups

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """One augmented view: ``(B, C, *spatial) -> same shape``; ``x`` is never modified."""
        if not self.augmentations:
            return x.clone()
        for group in self.groups():
            if len(group) == 1:
                x = group[0](x, generator)
            else:
                mats = [aug.sample_matrices(x.shape, generator) for aug in group]  # type: ignore[attr-defined]
                x = resample(x, compose(mats))
        return x

    def views(self, x: Tensor, n: int, generator: torch.Generator) -> list[Tensor]:
        """``n`` independent draws of the pipeline on the same batch."""
        return [self(x, generator) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.augmentations)

    def __repr__(self) -> str:
        inner = ", ".join(repr(a) for a in self.augmentations)
        return f"Pipeline([{inner}], fuse={self.fuse})"
