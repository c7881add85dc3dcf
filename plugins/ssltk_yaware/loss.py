"""The y-Aware InfoNCE loss (Dufumier et al., MICCAI 2021).

Dufumier, Gori, Victor, Grigis, Wessa, Brambilla, Favre, Polosan, McDonald, Piguet, Duchesnay,
"Contrastive Learning with Continuous Proxy Meta-Data for 3D MRI Classification", MICCAI 2021,
eq. (3). Published code: https://github.com/Duplums/yAwareContrastiveLearning (``losses.py``,
``GeneralizedSupervisedNTXenLoss``). The default ``normalization="published"`` reproduces that
code's numbers; see docs/methods/yaware.md for the quirk it carries.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ssltk.losses import cosine_logits

Normalization = Literal["published", "per_anchor"]


def rbf_kernel(labels: Tensor, sigma: float) -> Tensor:
    """``exp(-||y_a - y_b||^2 / (2 sigma^2))`` for labels ``(N,)`` or ``(N, k)`` -> ``(N, N)``."""
    y = labels.reshape(labels.shape[0], -1).to(torch.float64)  # (N, k)
    sq_dist = (y[:, None, :] - y[None, :, :]).pow(2).sum(-1)  # (N, N), exact (no mm trick)
    return torch.exp(-sq_dist / (2.0 * sigma**2))


def yaware_weights(kernel: Tensor, normalization: Normalization = "published") -> Tensor:
    """Pair weights ``(2N, 2N)`` from the subjects' kernel ``(N, N)``.

    The kernel is tiled over the two stacked views ``[z1; z2]`` and its diagonal (self-pairs)
    zeroed, giving ``K``. Then:

    * ``"published"``: ``W[a, b] = K[a, b] / sum_c K[b, c]`` - the published code divides by
      ``K.sum(axis=1)`` with numpy broadcasting, which scales *column* b by the sum of *row* b.
    * ``"per_anchor"``: ``W[a, b] = K[a, b] / sum_c K[a, c]`` - each anchor's weights sum to 1
      (eq. 3 of the paper).
    """
    n = kernel.shape[0]
    k2 = kernel.repeat(2, 2)  # (2N, 2N): both views of subject i carry subject i's labels
    k2 = k2.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=k2.device), 0.0)
    row_sums = k2.sum(dim=1)  # (2N,)
    if normalization == "published":
        return k2 / row_sums[None, :]  # numpy (2N,2N) / (2N,) broadcasts along columns
    if normalization == "per_anchor":
        return k2 / row_sums[:, None]
    raise ValueError(f"normalization must be 'published' or 'per_anchor', got {normalization!r}")


def log_probs(logits: Tensor) -> Tensor:
    """``log p[a, b]`` ``(2N, 2N)``: row-wise log-softmax of the logits of
    :func:`ssltk.losses.cosine_logits`.

    Self-pairs are excluded from the softmax (their -inf logit); their entry is then set to 0
    (it is always weighted 0) so that ``0 * log p`` stays finite. The other view of the same
    subject stays in the softmax.
    """
    self_pairs = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    return F.log_softmax(logits, dim=1).masked_fill(self_pairs, 0.0)


def weighted_nll(weights: Tensor, log_p: Tensor, n: int) -> Tensor:
    """``-1/N * sum_{a,b} W[a, b] log p[a, b]`` for ``(2N, 2N)`` weights and log-probabilities."""
    return -(weights * log_p).sum() / n


def yaware_loss(
    z1: Tensor,
    z2: Tensor,
    kernel: Tensor | None = None,
    *,
    labels: Tensor | None = None,
    sigma: float = 5.0,
    temperature: float = 0.1,
    normalization: Normalization = "published",
) -> Tensor:
    """y-Aware InfoNCE (Dufumier et al., MICCAI 2021, eq. 3).

    ::

        loss = -1/N * sum_{a=1..2N} sum_{b != a} W[a, b] * log p[a, b]
        p[a, b] = exp(cos(z_a, z_b) / tau) / sum_{c != a} exp(cos(z_a, z_c) / tau)

    with ``W`` from :func:`yaware_weights`. Note the division by N, not 2N: as sigma -> 0 (all
    labels distinct) ``W`` selects each view's positive and the loss is twice
    :func:`ssltk_simclr.nt_xent_loss`.

    Args:
        z1: ``(N, D)`` projections of the first views (normalised here).
        z2: ``(N, D)`` projections of the second views; row i matches ``z1[i]``.
        kernel: ``(N, N)`` subject similarity in [0, 1] (e.g. an Anchor's output). Exclusive
            with ``labels``.
        labels: ``(N,)`` or ``(N, k)`` meta-data; the kernel is then the RBF of width ``sigma``
            (``gamma = 1 / (2 sigma^2)``), as in the published code.
        sigma: RBF width, used with ``labels`` only (5 years of age in the paper).
        temperature: tau (0.1 in the paper).
        normalization: ``"published"`` (default, the authors' code) or ``"per_anchor"``.

    Returns:
        Scalar loss.
    """
    if (kernel is None) == (labels is None):
        raise ValueError("pass exactly one of kernel or labels")
    if kernel is None:
        kernel = rbf_kernel(labels, sigma)
    weights = yaware_weights(kernel.detach().to(z1.dtype), normalization)  # (2N, 2N)
    log_p = log_probs(cosine_logits(z1, z2, temperature)[0])  # (2N, 2N)
    return weighted_nll(weights, log_p, z1.shape[0])
