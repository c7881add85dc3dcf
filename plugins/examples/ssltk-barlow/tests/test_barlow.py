"""Tests of the ssltk-barlow plugin: ``pytest plugins/examples/ssltk-barlow/tests``."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from ssltk.interfaces import Backbone, Batch
from ssltk_barlow import BarlowTwins, BarlowTwinsConfig, barlow_twins_loss


def plain_loop_loss(z1: Tensor, z2: Tensor, lambd: float, eps: float = 1e-5) -> float:
    """Eq. (1)-(2) of Zbontar et al. (2021) with Python loops over features and samples."""
    a, b = z1.double().tolist(), z2.double().tolist()
    n, d = len(a), len(a[0])

    def standardise(rows):
        cols = []
        for i in range(d):
            col = [r[i] for r in rows]
            mean = sum(col) / n
            var = sum((v - mean) ** 2 for v in col) / n
            cols.append([(v - mean) / (var + eps) ** 0.5 for v in col])
        return cols  # d lists of n values

    ca, cb = standardise(a), standardise(b)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(ca[i][k] * cb[j][k] for k in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lambd * c_ij**2
    return loss


@pytest.mark.parametrize("lambd", [5e-3, 0.1])
def test_loss_matches_plain_loop(lambd):
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen)
    got = barlow_twins_loss(z1.double(), z2.double(), lambd)
    assert got.item() == pytest.approx(plain_loop_loss(z1, z2, lambd), rel=1e-9)


def test_loss_is_zero_for_identical_decorrelated_views():
    # columns of a Hadamard matrix: zero mean except the first, mutually orthogonal
    h = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]).double()
    z = h[:, 1:]  # (4 samples, 3 features), each zero mean, unit variance, uncorrelated
    assert barlow_twins_loss(z, z, 5e-3, eps=0.0).item() == pytest.approx(0.0, abs=1e-12)


class TinyBackbone(Backbone):
    """A 2D conv + global pooling: enough to test the objective without ssltk's backbones."""

    name = "tiny"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.out_dim, self.feature_channels, self.feature_strides = 8, (8,), (1,)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        return [torch.relu(self.conv(x))]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0].mean((2, 3))


def test_objective_trains():
    torch.manual_seed(0)
    objective = BarlowTwins(BarlowTwinsConfig(projector_dims=[32, 16]), backbone=TinyBackbone())
    x = torch.rand(8, 1, 12, 12)
    opt = torch.optim.SGD(objective.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        views = [x + 0.05 * torch.randn_like(x) for _ in range(2)]
        out = objective(Batch(views=views))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert out.embeddings.shape == (2, 8, 16)
    assert losses[-1] < losses[0]


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError):
        BarlowTwinsConfig(lamda=0.1)
