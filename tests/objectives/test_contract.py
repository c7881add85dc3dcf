"""The contract every registered objective meets, built-in or third-party, with no new test code.

Parametrized over ``registry.names("objectives")`` at collection time. Each objective is built
with its default Config (plus ``TINY_PARAMS`` where the defaults need columns to predict) on a
quarter-width ResNet-10, and trained with the reference loop of ``_tiny.pretrain_steps`` on four
fixed blob volumes (16^3 in 3D, 32^2 in 2D), views = seeded flip + noise, meta = age
(continuous) and sex (categorical codes).
"""

from __future__ import annotations

import math

import pytest
import torch
from _tiny import (
    backbone,
    finite_grads,
    make_batch,
    pretrain_steps,
    tiny_meta,
    tiny_volumes,
)
from torch import Tensor

from ssltk.interfaces import Anchor, ComponentConfig, Objective
from ssltk.registry import get_registry

REGISTRY = get_registry()
OBJECTIVES = REGISTRY.names("objectives")
SIZE = {3: 16, 2: 32}

TINY_PARAMS: dict[str, dict] = {
    "multitask": {"tasks": [
        {"column": "age", "kind": "regression"},
        {"column": "sex", "kind": "classification", "n_classes": 2},
    ]},
    # Barlow Twins decorrelates D features from a batch of N samples: with N = 4 the paper-like
    # 2048-wide projector has no room to improve (its cross-correlation has rank < 4).
    "barlow": {"projector_dims": [128, 128, 128]},
    # MoCo contrasts with the keys enqueued so far: its loss grows with their number until the
    # queue is full, after 2 steps with 8 slots (the default 1024 would take 256 steps of 4).
    "moco": {"queue_size": 8},
}
"""Non-default parameters some objectives need on the tiny problem (by objective name)."""


class AgeKernel(Anchor):
    """RBF kernel on age (sigma 5 years), for objectives that take an anchor."""

    name = "contract_age_rbf"

    @property
    def columns(self) -> tuple[str, ...]:
        return ("age",)

    def __call__(self, meta: dict[str, Tensor]) -> Tensor:
        age = meta["age"].float()
        return torch.exp(-((age[:, None] - age[None, :]) ** 2) / (2 * 5.0**2))


def build(name: str, spatial_dims: int = 3, seed: int = 0) -> Objective:
    torch.manual_seed(seed)
    cls = REGISTRY.get("objectives", name)
    anchor = AgeKernel(ComponentConfig()) if cls.uses_anchor else None
    return REGISTRY.create("objectives", name, TINY_PARAMS.get(name, {}),
                           backbone=backbone(REGISTRY, spatial_dims), anchor=anchor,
                           registry=REGISTRY)


def problem(objective: Objective, spatial_dims: int = 3) -> tuple[Tensor, dict[str, Tensor]]:
    """Four volumes and exactly the metadata columns the objective asks for."""
    volumes = tiny_volumes(4, spatial_dims, SIZE[spatial_dims])
    meta = tiny_meta(4, missing=False)
    missing = set(objective.required_columns()) - set(meta)
    assert not missing, f"the contract's tiny meta has no column {missing}"
    return volumes, {c: meta[c] for c in objective.required_columns()}


@pytest.mark.parametrize("spatial_dims", [3, 2])
@pytest.mark.parametrize("name", OBJECTIVES)
def test_one_step_gives_a_finite_loss_and_backbone_gradients(name, spatial_dims):
    objective = build(name, spatial_dims)
    volumes, meta = problem(objective, spatial_dims)
    batch = make_batch(objective, volumes, meta, torch.Generator().manual_seed(0))
    out = objective(batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    # Floats or 0-d tensors (the built-ins keep them on the device: no host sync per step).
    assert all((isinstance(v, float) or (torch.is_tensor(v) and v.ndim == 0))
               and math.isfinite(float(v)) for v in out.logs.values()), out.logs
    assert not any(torch.is_tensor(v) and v.requires_grad for v in out.logs.values()), \
        "logs must be detached (they are kept for several steps)"
    if out.embeddings is not None:
        assert out.embeddings.dim() == 3 and out.embeddings.shape[1] == volumes.shape[0]
    out.loss.backward()
    assert finite_grads(objective.backbone), "no gradient reaches the backbone"
    for p in objective.backbone.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", OBJECTIVES)
def test_class_attributes(name):
    cls = REGISTRY.get("objectives", name)
    objective = build(name)
    assert objective.n_views >= 1 and isinstance(objective.needs_original, bool)
    assert isinstance(cls.uses_anchor, bool)
    assert all(isinstance(c, str) for c in objective.required_columns())


@pytest.mark.parametrize("name", OBJECTIVES)
def test_same_seed_same_losses(name):
    runs = []
    for _ in range(2):
        objective = build(name, seed=1)
        volumes, meta = problem(objective)
        runs.append(pretrain_steps(objective, volumes, meta, steps=2, seed=7))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("name", OBJECTIVES)
def test_own_state_advances(name):
    objective = build(name)
    backbone_buffers = {id(b) for b in objective.backbone.buffers()}
    own = {n: b.clone() for n, b in objective.named_buffers() if id(b) not in backbone_buffers}
    if not own:
        pytest.skip(f"{name} keeps no state besides the backbone's")
    volumes, meta = problem(objective)
    pretrain_steps(objective, volumes, meta, steps=1)
    after = dict(objective.named_buffers())
    assert any(not torch.equal(before, after[n]) for n, before in own.items()), \
        f"none of {sorted(own)} changed after a step and on_step_end()"


@pytest.mark.parametrize("name", OBJECTIVES)
def test_loss_decreases_on_a_tiny_problem(name):
    objective = build(name)
    volumes, meta = problem(objective)
    losses = pretrain_steps(objective, volumes, meta, steps=20, lr=2e-3)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) < sum(losses[:5]), losses
