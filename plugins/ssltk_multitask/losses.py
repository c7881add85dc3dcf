"""Supervised losses on metadata with missing labels masked out, and running target statistics.

Missing labels follow ssltk's metadata convention: NaN for continuous columns, -1 for
categorical codes. A batch in which a task has no label contributes exactly 0 for it (not NaN),
while keeping the head in the autograd graph (DDP expects every parameter to get a gradient).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def masked_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over the labelled samples.

    Args:
        pred: ``(B,)`` predictions.
        target: ``(B,)`` float targets, NaN where missing.

    Returns:
        Scalar ``mean_{i: target_i labelled} (pred_i - target_i)^2``, or 0 when no label.
    """
    labelled = ~torch.isnan(target)
    if not labelled.any():
        return pred.sum() * 0.0
    return F.mse_loss(pred[labelled], target[labelled])


def masked_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over the labelled samples.

    Args:
        logits: ``(B, K)`` class scores.
        target: ``(B,)`` int64 class codes in ``[0, K)``, -1 where missing.

    Returns:
        Scalar mean cross-entropy over labelled samples, or 0 when no label.
    """
    labelled = target >= 0
    if not labelled.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[labelled], target[labelled])


def update_running_stats(stats: Tensor, values: Tensor) -> None:
    """Merge ``values`` (``(n,)``, NaN skipped) into ``stats = [count, mean, M2]`` in place.

    Chan et al.'s parallel form of Welford's algorithm: exact mean and variance of every value
    seen so far, whatever the batch sizes.
    """
    values = values[~torch.isnan(values)].to(stats.dtype)
    n_b = values.numel()
    if n_b == 0:
        return
    n_a, mean_a, m2_a = stats.unbind()
    mean_b = values.mean()
    m2_b = ((values - mean_b) ** 2).sum()
    n = n_a + n_b
    delta = mean_b - mean_a
    stats.copy_(torch.stack([n, mean_a + delta * n_b / n, m2_a + m2_b + delta**2 * n_a * n_b / n]))


def stats_mean_std(stats: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (population) std from ``[count, mean, M2]``; std is 1 until two values were seen."""
    count, mean, m2 = stats.unbind()
    if float(count) < 2:
        return mean, torch.ones_like(mean)
    return mean, (m2 / count).clamp_min(1e-12).sqrt()
