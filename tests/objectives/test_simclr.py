"""SimCLR: NT-Xent against a plain-loop statement of Chen et al. (ICML 2020) eq. 1, the objective."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ssltk_simclr import SimCLR, nt_xent_loss

from ssltk.heads import build_projection_head
from ssltk.interfaces import Batch

pytestmark = pytest.mark.numerics


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def loop_nt_xent(z1: list[list[float]], z2: list[list[float]], tau: float) -> float:
    """Eq. (1) of SimCLR, one anchor at a time: 2N anchors, self excluded, positive in the sum."""
    z = [_unit(v) for v in z1 + z2]
    n2, n = len(z), len(z1)
    total = 0.0
    for a in range(n2):
        sim = [sum(x * y for x, y in zip(z[a], z[b])) / tau for b in range(n2)]
        denominator = sum(math.exp(sim[b]) for b in range(n2) if b != a)
        positive = (a + n) % n2
        total += -math.log(math.exp(sim[positive]) / denominator)
    return total / n2


def fixed_inputs(n: int = 4, d: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic inputs that do not depend on any RNG implementation."""
    idx = torch.arange(n * d, dtype=torch.float64).reshape(n, d)
    return torch.sin(idx + 1.0), torch.cos(2.0 * idx + 0.5)


# loop_nt_xent(fixed_inputs(), tau) in float64, recorded when this test was written; pins the
# formula against silent changes of both implementations (also in docs/methods/simclr.md).
REFERENCE = {0.1: 9.9399122650, 0.5: 2.7954262923, 1.0: 2.2429391563}


@pytest.mark.parametrize("tau", sorted(REFERENCE))
def test_nt_xent_reference_values(tau):
    z1, z2 = fixed_inputs()
    assert loop_nt_xent(z1.tolist(), z2.tolist(), tau) == pytest.approx(REFERENCE[tau], abs=1e-9)
    assert nt_xent_loss(z1, z2, tau).item() == pytest.approx(REFERENCE[tau], abs=1e-9)
    assert nt_xent_loss(z1.float(), z2.float(), tau).item() == pytest.approx(REFERENCE[tau], abs=1e-5)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), d=st.integers(2, 5), tau=st.sampled_from([0.05, 0.1, 0.2, 1.0]),
       seed=st.integers(0, 2**16))
def test_nt_xent_matches_plain_loop(n, d, tau, seed):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = torch.randn(n, d, generator=g, dtype=torch.float64)
    expected = loop_nt_xent(z1.tolist(), z2.tolist(), tau)
    assert nt_xent_loss(z1, z2, tau).item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_nt_xent_is_scale_invariant_and_symmetric():
    z1, z2 = fixed_inputs(5, 4)
    base = nt_xent_loss(z1, z2)
    torch.testing.assert_close(nt_xent_loss(3.0 * z1, 0.5 * z2), base)
    torch.testing.assert_close(nt_xent_loss(z2, z1), base)  # swapping the views: same 2N anchors


def test_perfect_alignment_of_orthogonal_pairs_gives_low_loss():
    z = torch.eye(4, dtype=torch.float64)
    # Positives identical, every negative orthogonal: l = -log(e^{1/t} / (e^{1/t} + 6))
    tau = 0.1
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 6))
    assert nt_xent_loss(z, z, tau).item() == pytest.approx(expected, rel=1e-12)


def test_objective_output_and_gradients(tiny_backbone, batch):
    objective = SimCLR(SimCLR.Config(), backbone=tiny_backbone)
    out = objective(batch)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert set(out.logs) == {"loss", "acc"} and 0.0 <= out.logs["acc"] <= 1.0
    assert out.embeddings.shape == (2, 8, 128)
    torch.testing.assert_close(out.embeddings.norm(dim=-1), torch.ones(2, 8))
    out.loss.backward()
    grads = [p.grad for p in tiny_backbone.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_objective_loss_equals_pure_function(tiny_backbone, batch):
    objective = SimCLR(SimCLR.Config(temperature=0.2), backbone=tiny_backbone).eval()
    out = objective(batch)
    z1, z2 = (objective.project(v) for v in batch.views)
    torch.testing.assert_close(out.loss, nt_xent_loss(z1, z2, 0.2))


def test_loss_decreases(mlp_backbone, batch, trainer):
    objective = SimCLR(SimCLR.Config(proj_dim=16), backbone=mlp_backbone)
    losses = trainer(objective, batch, steps=20)
    assert losses[-1] < 0.7 * losses[0], losses


def test_head_config():
    head = build_projection_head(SimCLR.Config(proj_hidden_dim=32, proj_dim=8, proj_layers=3,
                                               proj_batch_norm=True), in_dim=16)
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 32), (32, 8)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head) == 2
    default = build_projection_head(SimCLR.Config(), in_dim=16)
    assert [m.out_features for m in default if isinstance(m, torch.nn.Linear)] == [16, 128]


def test_built_from_registry_with_resnet10(registry):
    backbone = registry.create("backbones", "resnet10", {"widen_factor": 0.25},
                               in_channels=1, spatial_dims=3)
    objective = registry.create("objectives", "simclr", {"temperature": 0.1, "proj_dim": 32},
                                backbone=backbone, anchor=None, registry=registry)
    assert isinstance(objective, SimCLR) and objective.n_views == 2 and not objective.uses_anchor
    g = torch.Generator().manual_seed(0)
    views = [torch.rand(4, 1, 16, 16, 16, generator=g) for _ in range(2)]
    out = objective(Batch(views=views))
    out.loss.backward()
    assert backbone.net.conv1.weight.grad.abs().sum() > 0


def test_loss_is_float32_under_autocast(tiny_backbone, batch):
    objective = SimCLR(SimCLR.Config(), backbone=tiny_backbone)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = objective(batch)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert out.embeddings.dtype == torch.float32


def test_positive_top1_counts_ties_as_misses():
    from ssltk_simclr import positive_top1

    logits = torch.tensor([[float("-inf"), 1.0, 1.0], [0.5, float("-inf"), 0.2],
                           [0.3, 0.9, float("-inf")]])
    targets = torch.tensor([1, 0, 1])
    assert float(positive_top1(logits, targets)) == pytest.approx(2 / 3)  # row 0 tie: a miss
    collapsed = torch.zeros(4, 4).fill_diagonal_(float("-inf"))
    assert float(positive_top1(collapsed, torch.tensor([2, 3, 0, 1]))) == 0.0
