"""Fixtures for objective tests: a tiny 3D conv backbone and synthetic two-view batches."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from ssltk.interfaces import Anchor, Backbone, Batch, ComponentConfig


class TinyBackbone(Backbone):
    """Conv3d(stride 2) -> BatchNorm -> ReLU -> global pool -> Linear: ``(B, 1, 8^3) -> (B, 16)``.

    Small enough that an objective trains for 20 steps in well under a second; has BatchNorm so
    that shuffled BN and momentum updates are exercised.
    """

    name = "tiny_test_backbone"

    def __init__(self, config: ComponentConfig | None = None, in_channels: int = 1,
                 spatial_dims: int = 3):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm3d(8)
        self.fc = nn.Linear(8, 16)
        self.out_dim = 16
        self.feature_channels, self.feature_strides = (8,), (2,)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        return [torch.relu(self.bn(self.conv(x)))]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x)[-1].flatten(2).mean(-1))


class MLPBackbone(Backbone):
    """Flatten -> Linear(64) -> BatchNorm1d -> ReLU -> Linear(16): ``(B, 1, 8^3) -> (B, 16)``.

    Learns instance discrimination of random volumes in a few steps (the conv backbone's global
    pooling makes noise volumes look alike), so MoCo's loss visibly drops within 24 steps.
    """

    name = "mlp_test_backbone"

    def __init__(self, config: ComponentConfig | None = None, in_channels: int = 1,
                 spatial_dims: int = 3, size: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * size**spatial_dims, 64),
                                 nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 16))
        self.out_dim = 16
        self.feature_channels, self.feature_strides = (in_channels,), (1,)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        return [x]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class AgeRBF(Anchor):
    """Stand-in for the anchors plugin's ``rbf``: ``exp(-(a_i - a_j)^2 / (2 sigma^2))`` on age."""

    name = "test_age_rbf"

    def __init__(self, sigma: float = 5.0):
        super().__init__(ComponentConfig())
        self.sigma = sigma

    @property
    def columns(self) -> tuple[str, ...]:
        return ("age",)

    def __call__(self, meta: dict[str, Tensor]) -> Tensor:
        age = meta["age"].double()
        return torch.exp(-(age[:, None] - age[None, :]) ** 2 / (2 * self.sigma**2)).float()


def make_batch(n: int = 8, seed: int = 0, noise: float = 0.1, size: int = 8) -> Batch:
    """Two noisy views of ``n`` random volumes ``(n, 1, size^3)`` and an ``age`` column."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, size, generator=g)
    views = [x + noise * torch.randn(x.shape, generator=g) for _ in range(2)]
    age = 20.0 + 60.0 * torch.rand(n, generator=g)
    return Batch(views=views, meta={"age": age}, generator=torch.Generator().manual_seed(seed))


def train_steps(objective: nn.Module, batch: Batch, steps: int = 20,
                lr: float = 3e-3) -> list[float]:
    """Run ``steps`` Adam steps of ``objective`` on one fixed batch; return the losses."""
    params = [p for p in objective.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    objective.train()
    losses = []
    for _ in range(steps):
        out = objective(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        objective.on_step_end()
        losses.append(out.loss.item())
    return losses


# Helpers are handed out as fixtures so test modules never import this conftest by name
# (tests/conftest.py has the same module name).
@pytest.fixture
def tiny_backbone() -> TinyBackbone:
    """A fresh :class:`TinyBackbone`, seeded."""
    torch.manual_seed(0)
    return TinyBackbone()


@pytest.fixture
def mlp_backbone() -> MLPBackbone:
    """A fresh :class:`MLPBackbone`, seeded."""
    torch.manual_seed(0)
    return MLPBackbone()


@pytest.fixture
def batch() -> Batch:
    """8 subjects, two views of ``(8, 1, 8, 8, 8)``, ``age`` in [20, 80)."""
    return make_batch()


@pytest.fixture
def batch_factory():
    """:func:`make_batch`."""
    return make_batch


@pytest.fixture
def age_anchor():
    """:class:`AgeRBF` class (call with ``sigma``)."""
    return AgeRBF


@pytest.fixture
def trainer():
    """:func:`train_steps`."""
    return train_steps
