"""Tiny problems and a reference pretraining loop for objective tests.

Imported by test modules as ``from _tiny import ...`` (pytest puts this folder on ``sys.path``).

* :func:`pretrain_steps` – the plain loop every objective test trains with (AdamW, step,
  ``on_step_end``), independent of the engine.
* :class:`IdentityBackbone` – ``h = x`` on ``(B, 1, 1, 2)`` inputs, for heads set by hand.
* :func:`tiny_volumes`, :func:`tiny_meta`, :func:`flip_noise_views` – a fixed problem: a few
  blob volumes in [0, 1], age (continuous, one missing) and sex (codes, one missing), views made
  by a seeded flip + Gaussian noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ssltk.interfaces import Backbone, Batch, Objective
from ssltk.registry import Registry

MakeViews = Callable[[Tensor, int, torch.Generator], list[Tensor]]


# -- a backbone whose representation is its input ------------------------------------------
class IdentityBackbone(Backbone):
    """``(B, 1, 1, 2) -> (B, 2)``: the representation is the input's two pixels."""

    name = "identity"

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.out_dim, self.feature_channels, self.feature_strides = 2, (1,), (1,)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        return [x * self.scale]

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.scale).flatten(1)


# -- a fixed tiny problem -------------------------------------------------------------------
def tiny_volumes(n: int = 4, spatial_dims: int = 3, size: int = 16, seed: int = 0) -> Tensor:
    """``(n, 1, *[size] * spatial_dims)`` images in [0, 1]: two Gaussian blobs each."""
    gen = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.linspace(-1, 1, size)] * spatial_dims, indexing="ij")
    grid = torch.stack(axes)  # (d, *spatial)
    out = torch.zeros((n, 1) + (size,) * spatial_dims)
    for i in range(n):
        for _ in range(2):
            centre = torch.rand(spatial_dims, generator=gen) - 0.5
            width = 0.2 + 0.3 * torch.rand(1, generator=gen)
            d2 = ((grid - centre.view(-1, *[1] * spatial_dims)) ** 2).sum(0)
            out[i, 0] += torch.exp(-d2 / (2 * width**2))
    return out / out.amax(dim=tuple(range(1, out.dim())), keepdim=True)


def tiny_meta(n: int = 4, missing: bool = True) -> dict[str, Tensor]:
    """``age`` (float, NaN = missing) and ``sex`` (int64 codes, -1 = missing); with ``missing``
    the last age and the first sex are missing."""
    age = torch.linspace(60.0, 80.0, n)
    sex = torch.arange(n, dtype=torch.int64) % 2
    if missing:
        age[-1] = float("nan")
        sex[0] = -1
    return {"age": age, "sex": sex}


def flip_noise_views(volumes: Tensor, n_views: int, generator: torch.Generator) -> list[Tensor]:
    """``n_views`` views: per sample a random flip of the last axis, N(0, 0.05) noise, clip."""
    views = []
    for _ in range(n_views):
        flip = torch.rand(volumes.shape[0], generator=generator) < 0.5
        v = torch.where(flip.view(-1, *[1] * (volumes.dim() - 1)), volumes.flip(-1), volumes)
        noise = torch.randn(volumes.shape, generator=generator)
        views.append((v + 0.05 * noise).clamp(0, 1))
    return views


def make_batch(objective: Objective, volumes: Tensor, meta: dict[str, Tensor],
               generator: torch.Generator, make_views: MakeViews = flip_noise_views) -> Batch:
    """One :class:`Batch` as the engine would build it for ``objective``."""
    views = make_views(volumes, objective.n_views, generator)
    original = volumes if objective.needs_original else None
    return Batch(views=views, meta=meta, generator=generator, original=original)


def pretrain_steps(objective: Objective, volumes: Tensor, meta: dict[str, Tensor], steps: int,
                   lr: float = 1e-3, seed: int = 0,
                   make_views: MakeViews = flip_noise_views) -> list[float]:
    """Reference loop: ``steps`` AdamW steps of ``objective`` on the same volumes; the losses."""
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    objective.train()
    losses = []
    for _ in range(steps):
        out = objective(make_batch(objective, volumes, meta, generator, make_views))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        objective.on_step_end()
        losses.append(float(out.loss.detach()))
    return losses


def backbone(registry: Registry, spatial_dims: int = 3, name: str = "resnet10",
             **params) -> torch.nn.Module:
    """A small backbone (resnet10 at a quarter width unless ``params`` say otherwise)."""
    params = {"widen_factor": 0.25, **params} if name.startswith("resnet") else params
    return registry.create("backbones", name, params, in_channels=1, spatial_dims=spatial_dims)


def finite_grads(module: torch.nn.Module) -> Sequence[Tensor]:
    """The gradients of ``module``'s parameters that are set, non-zero and finite."""
    return [p.grad for p in module.parameters()
            if p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0]
