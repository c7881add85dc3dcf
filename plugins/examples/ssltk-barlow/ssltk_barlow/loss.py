"""The Barlow Twins loss as pure tensor functions.

Zbontar, Jing, Misra, LeCun, Deny. "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021, eq. (1)-(2).
"""

from __future__ import annotations

import torch
from torch import Tensor


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """Cross-correlation ``C (D, D)`` of two batches of embeddings normalised along the batch.

    Each feature is standardised over the batch, ``(z - mean_b z) / sqrt(var_b z + eps)`` with
    the biased variance (what ``BatchNorm1d(affine=False)`` does in training), then
    ``C_ij = sum_b z1n_bi * z2n_bj / N`` (eq. 2).

    Args:
        z1: ``(N, D)`` embeddings of the first views (N >= 2).
        z2: ``(N, D)`` embeddings of the second views; row b of each is the same sample.
        eps: added to the variance for stability.
    """
    n = z1.shape[0]

    def standardise(z: Tensor) -> Tensor:
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)

    return standardise(z1).T @ standardise(z2) / n  # (D, N) @ (N, D) -> (D, D)


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float = 5e-3, eps: float = 1e-5) -> Tensor:
    """Barlow Twins loss (eq. 1): ``sum_i (1 - C_ii)^2 + lambd * sum_i sum_{j != i} C_ij^2``.

    The invariance term pulls the diagonal of the cross-correlation ``C`` to 1 (the two views
    agree), the redundancy-reduction term pushes the off-diagonal to 0 (decorrelated features).

    Args:
        z1: ``(N, D)`` projector outputs of the first views.
        z2: ``(N, D)`` projector outputs of the second views.
        lambd: weight of the off-diagonal term (5e-3 in the paper, with D = 8192).
        eps: see :func:`cross_correlation`.

    Returns:
        Scalar loss.
    """
    c = cross_correlation(z1, z2, eps)
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = (c - torch.diag_embed(torch.diagonal(c))).pow(2).sum()
    return on_diag + lambd * off_diag
