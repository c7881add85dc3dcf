"""Pure tensor pieces shared by objectives (SimCLR, y-Aware, multitask, supervised...).

Plugins never import each other: what two objectives compute alike lives here, in the core.

* :func:`cosine_logits` – the temperature-scaled cosine similarities of the 2N stacked views
  ``[z1; z2]``, self-pairs masked, and each view's positive (Chen et al., "A Simple Framework for
  Contrastive Learning of Visual Representations", ICML 2020, eq. 1; Dufumier et al.,
  "Contrastive Learning with Continuous Proxy Meta-Data for 3D MRI Classification", MICCAI 2021,
  eq. 3 uses the same logits).
* :func:`positive_top1` – how often a view's most similar candidate is its positive.
* :func:`masked_mse`, :func:`masked_smooth_l1`, :func:`masked_cross_entropy` – supervised losses
  on metadata with missing labels masked out, and :func:`update_running_stats` /
  :func:`stats_mean_std` – exact running mean and std of regression targets (multitask's heads
  and the supervised objective).

Missing labels follow ssltk's metadata convention: NaN for continuous columns, -1 for
categorical codes. A batch in which a task has no label contributes exactly 0 for it (not NaN),
while keeping the head in the autograd graph (DDP expects every parameter to get a gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cosine_logits", "masked_cross_entropy", "masked_mse", "masked_smooth_l1",
           "positive_top1", "stats_mean_std", "update_running_stats"]


def cosine_logits(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> tuple[Tensor, Tensor]:
    """Cosine-similarity logits of the 2N views and the index of each view's positive.

    Args:
        z1: first views' projections ``(N, D)`` (need not be normalised).
        z2: second views' projections ``(N, D)``; row i of ``z1`` and of ``z2`` are positives.
        temperature: softmax temperature tau.

    Returns:
        ``logits (2N, 2N)``: ``cos(z_a, z_b) / tau`` with the self-pairs (diagonal) set to
        ``-inf``; rows and columns stack ``z1`` then ``z2``.
        ``positives (2N,)``: column of each row's positive, ``(a + N) mod 2N``.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)  # (2N, D)
    logits = z @ z.T / temperature  # (2N, 2N)
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    positives = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
    return logits, positives


def positive_top1(logits: Tensor, positives: Tensor) -> Tensor:
    """Fraction of rows whose positive is strictly more similar than every other candidate.

    ``logits (R, C)``, ``positives (R,)``. Strict: a tie is a miss, so collapsed embeddings (all
    logits equal, where ``argmax`` would return the first column) score 0, not 1/C or more (a
    collapsed MoCo run logged 0.3 at chance loss). A 0-d tensor on the logits' device (reading
    it as a float would stall a GPU step).
    """
    pos = logits.gather(1, positives[:, None]).squeeze(1)  # (R,)
    others = logits.scatter(1, positives[:, None], float("-inf")).amax(dim=1)  # (R,)
    return (pos > others).float().mean()


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


def masked_smooth_l1(pred: Tensor, target: Tensor, beta: float = 1.0) -> Tensor:
    """Smooth-L1 (Huber) loss over the labelled samples.

    Per sample ``0.5 e^2 / beta`` if ``|e| < beta`` else ``|e| - 0.5 beta``, ``e = pred - target``
    (Girshick, "Fast R-CNN", ICCV 2015, eq. 3 with ``beta = 1``): quadratic near 0, linear in
    the tails, so a few outlying targets pull less than under MSE.

    Args:
        pred: ``(B,)`` predictions.
        target: ``(B,)`` float targets, NaN where missing.
        beta: where the loss turns from quadratic to linear (> 0).

    Returns:
        Scalar mean over labelled samples, or 0 when no label.
    """
    labelled = ~torch.isnan(target)
    if not labelled.any():
        return pred.sum() * 0.0
    return F.smooth_l1_loss(pred[labelled], target[labelled], beta=beta)


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
