"""y-Aware: the loss against the published algorithm (numpy), a plain loop of eq. 3, the objective.

Published implementation: github.com/Duplums/yAwareContrastiveLearning, ``losses.py``,
``GeneralizedSupervisedNTXenLoss``; re-stated below with numpy from its description.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from ssltk_simclr import nt_xent_loss
from ssltk_yaware import YAware, yaware_loss

from ssltk.errors import ConfigError
from ssltk.interfaces import Batch

pytestmark = pytest.mark.numerics


def published_numpy(z_i, z_j, labels, sigma=5.0, tau=0.1):
    """The published algorithm step by step, numpy semantics (float64)."""
    z_i, z_j, labels = (np.asarray(a, dtype=np.float64) for a in (z_i, z_j, labels))
    n = len(z_i)
    z_i = z_i / np.linalg.norm(z_i, axis=1, keepdims=True)
    z_j = z_j / np.linalg.norm(z_j, axis=1, keepdims=True)
    big = 1e8  # self-pairs pushed out of the softmax by a large negative logit
    sim_ii = z_i @ z_i.T / tau - big * np.eye(n)
    sim_jj = z_j @ z_j.T / tau - big * np.eye(n)
    sim_ij = z_i @ z_j.T / tau
    y = np.tile(labels.reshape(n, -1), (2, 1))  # (2N, k): labels repeated for the 2 views
    sq_dist = ((y[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    weights = np.exp(-sq_dist / (2 * sigma**2)) * (1 - np.eye(2 * n))
    weights = weights / weights.sum(axis=1)  # broadcasting: column b / sum of row b (the quirk)
    sim = np.block([[sim_ii, sim_ij], [sim_ij.T, sim_jj]])
    log_p = sim - logsumexp(sim, axis=1, keepdims=True)
    return -(weights * log_p).sum() / n


def loop_yaware(z1, z2, ages, sigma, tau, normalization):
    """Eq. 3 one anchor at a time with math.exp/log; ``normalization`` picks the denominator."""
    z = [[x / math.sqrt(sum(v * v for v in row)) for x in row] for row in list(z1) + list(z2)]
    y = list(ages) * 2
    n2 = len(z)
    k = [[0.0 if a == b else math.exp(-((y[a] - y[b]) ** 2) / (2 * sigma**2)) for b in range(n2)]
         for a in range(n2)]
    row_sum = [sum(r) for r in k]
    total = 0.0
    for a in range(n2):
        sim = [sum(p * q for p, q in zip(z[a], z[b])) / tau for b in range(n2)]
        log_denominator = math.log(sum(math.exp(sim[c]) for c in range(n2) if c != a))
        for b in range(n2):
            if b == a:
                continue
            w = k[a][b] / (row_sum[b] if normalization == "published" else row_sum[a])
            total += -w * (sim[b] - log_denominator)
    return total / (n2 // 2)


def fixed_inputs():
    """RNG-free inputs: N = 4 subjects, D = 3, ages 20, 25, 31, 47."""
    idx = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    return torch.sin(idx + 1.0), torch.cos(2.0 * idx + 0.5), torch.tensor([20.0, 25.0, 31.0, 47.0],
                                                                           dtype=torch.float64)


# loop_yaware / published_numpy on fixed_inputs(), recorded when this test was written.
REFERENCE = {
    ("published", 5.0, 0.1): 19.4588955636,
    ("per_anchor", 5.0, 0.1): 19.4421674678,
    ("published", 10.0, 0.5): 5.2439341809,
}


def seeded(n=6, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z1, z2 = (torch.randn(n, d, generator=g, dtype=dtype) for _ in range(2))
    ages = 20 + 60 * torch.rand(n, generator=g, dtype=torch.float64)
    return z1, z2, ages


@pytest.mark.parametrize("key", sorted(REFERENCE))
def test_reference_values(key):
    normalization, sigma, tau = key
    z1, z2, ages = fixed_inputs()
    expected = REFERENCE[key]
    loss = yaware_loss(z1, z2, labels=ages, sigma=sigma, temperature=tau, normalization=normalization)
    assert loss.item() == pytest.approx(expected, abs=1e-9)
    assert loop_yaware(z1.tolist(), z2.tolist(), ages.tolist(), sigma, tau,
                       normalization) == pytest.approx(expected, abs=1e-9)
    if normalization == "published":
        assert published_numpy(z1, z2, ages, sigma, tau) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("sigma", [1.0, 5.0, 20.0])
def test_default_reproduces_published(seed, sigma):
    z1, z2, ages = seeded(n=3 + seed, seed=seed)
    expected = published_numpy(z1, z2, ages, sigma=sigma)
    assert yaware_loss(z1, z2, labels=ages, sigma=sigma).item() == pytest.approx(expected, abs=1e-10)
    # float32 embeddings, as in training: still within 1e-5 of the float64 published numbers
    got = yaware_loss(z1.float(), z2.float(), labels=ages.float(), sigma=sigma).item()
    assert got == pytest.approx(expected, abs=1e-5)


def test_multi_column_labels_and_kernel_argument(age_anchor):
    z1, z2, ages = seeded(n=5, seed=7)
    labels = torch.stack([ages, ages / 3], dim=1)  # (N, 2)
    expected = published_numpy(z1, z2, labels, sigma=4.0)
    assert yaware_loss(z1, z2, labels=labels, sigma=4.0).item() == pytest.approx(expected, abs=1e-10)
    kernel = age_anchor(sigma=5.0)({"age": ages})  # (N, N) float32, as an Anchor returns it
    expected = published_numpy(z1, z2, ages, sigma=5.0)
    assert yaware_loss(z1.float(), z2.float(), kernel).item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("normalization", ["published", "per_anchor"])
def test_matches_plain_loop(normalization):
    z1, z2, ages = seeded(n=5, d=4, seed=3)
    expected = loop_yaware(z1.tolist(), z2.tolist(), ages.tolist(), 5.0, 0.1, normalization)
    got = yaware_loss(z1, z2, labels=ages, normalization=normalization)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_published_quirk_differs_from_per_anchor_unless_row_sums_are_equal():
    z1, z2, ages = seeded(n=6, seed=1)
    published = yaware_loss(z1, z2, labels=ages)
    per_anchor = yaware_loss(z1, z2, labels=ages, normalization="per_anchor")
    assert abs(published.item() - per_anchor.item()) > 1e-4
    same_age = torch.full((6,), 50.0, dtype=torch.float64)  # every row sums to 2N - 1
    torch.testing.assert_close(yaware_loss(z1, z2, labels=same_age),
                               yaware_loss(z1, z2, labels=same_age, normalization="per_anchor"))


@pytest.mark.parametrize("seed", range(3))
def test_small_sigma_is_twice_nt_xent(seed):
    # Distinct ages, sigma -> 0: the kernel keeps only each view's positive (weight 1), so the
    # loss is -1/N sum over 2N anchors of log p(positive) = 2 * NT-Xent (a mean over 2N).
    z1, z2, ages = seeded(n=6, seed=seed)
    loss = yaware_loss(z1, z2, labels=ages, sigma=1e-3)
    torch.testing.assert_close(loss, 2 * nt_xent_loss(z1, z2, 0.1), rtol=1e-10, atol=1e-10)


def test_loss_arguments_are_checked():
    z1, z2, ages = seeded()
    with pytest.raises(ValueError, match="exactly one"):
        yaware_loss(z1, z2)
    with pytest.raises(ValueError, match="normalization"):
        yaware_loss(z1, z2, labels=ages, normalization="rows")


# -- the objective -------------------------------------------------------------------------------
def test_objective_with_anchor(tiny_backbone, batch, age_anchor):
    objective = YAware(YAware.Config(), backbone=tiny_backbone, anchor=age_anchor(sigma=5.0))
    assert objective.uses_anchor and objective.n_views == 2
    assert objective.required_columns() == ("age",)
    out = objective(batch)
    assert out.embeddings.shape == (2, 8, 128) and set(out.logs) == {"loss", "acc"}
    torch.testing.assert_close(out.embeddings.norm(dim=-1), torch.ones(2, 8))
    z1, z2 = (objective.head(tiny_backbone(v)) for v in batch.views)
    expected = yaware_loss(z1, z2, labels=batch.meta["age"], sigma=5.0, temperature=0.5)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_backbone.parameters())


def test_objective_default_anchor_is_age_rbf_sigma_5(tiny_backbone, batch, registry):
    for reg in (None, registry):  # without a registry: the built-in RBF; with one: its 'rbf'
        objective = YAware(YAware.Config(), backbone=tiny_backbone, registry=reg).eval()
        assert objective.required_columns() == ("age",)
        z1, z2 = (objective.head(tiny_backbone(v)) for v in batch.views)
        expected = yaware_loss(z1, z2, labels=batch.meta["age"], sigma=5.0, temperature=0.5)
        torch.testing.assert_close(objective(batch).loss, expected, rtol=1e-5, atol=1e-5)


def test_per_anchor_option_and_config_validation(registry, tiny_backbone, batch):
    objective = registry.create("objectives", "yaware", {"normalization": "per_anchor"},
                                backbone=tiny_backbone, anchor=None, registry=registry).eval()
    z1, z2 = (objective.head(tiny_backbone(v)) for v in batch.views)
    expected = yaware_loss(z1, z2, labels=batch.meta["age"], normalization="per_anchor",
                           temperature=0.5)
    torch.testing.assert_close(objective(batch).loss, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="normalization"):
        registry.config("objectives", "yaware", {"normalization": "rows"})


def test_loss_decreases(mlp_backbone, batch, trainer, age_anchor):
    objective = YAware(YAware.Config(proj_dim=16), backbone=mlp_backbone, anchor=age_anchor())
    losses = trainer(objective, batch, steps=20)
    assert losses[-1] < 0.8 * losses[0], losses


def test_missing_column_is_a_clear_error(tiny_backbone, batch):
    objective = YAware(YAware.Config(column="bmi"), backbone=tiny_backbone)
    with pytest.raises(KeyError, match="bmi"):
        objective(Batch(views=batch.views, meta=batch.meta))


def test_defaults_end_the_head_with_a_batch_norm_and_use_tau_half(tiny_backbone):
    """docs/methods/yaware.md: the published head (tau 0.1) collapses at small batch / wide sigma."""
    objective = YAware(YAware.Config(), backbone=tiny_backbone)
    assert objective.config.temperature == 0.5
    last = objective.head[-1]
    assert isinstance(last, torch.nn.BatchNorm1d) and not last.affine
    published = YAware(YAware.Config(proj_output_norm=False, temperature=0.1),
                       backbone=tiny_backbone)
    assert [type(m).__name__ for m in published.head] == ["Linear", "ReLU", "Linear"]


def test_loss_is_float32_under_autocast(tiny_backbone, batch, age_anchor):
    objective = YAware(YAware.Config(), backbone=tiny_backbone, anchor=age_anchor())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = objective(batch)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


def test_with_the_anchors_plugin_rbf(registry, tiny_backbone, batch):
    if "rbf" not in registry.names("anchors"):
        pytest.skip("the anchors plugin is not installed")
    anchor = registry.create("anchors", "rbf", {"columns": ["age"], "sigma": 5.0})
    objective = YAware(YAware.Config(), backbone=tiny_backbone, anchor=anchor).eval()
    z1, z2 = (objective.head(tiny_backbone(v)) for v in batch.views)
    expected = published_numpy(z1.detach(), z2.detach(), batch.meta["age"], sigma=5.0,
                               tau=0.5)
    assert objective(batch).loss.item() == pytest.approx(expected, abs=1e-5)
