"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, eq. (1) and Algorithm 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent_logits(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> tuple[Tensor, Tensor]:
    """Cosine-similarity logits of the 2N views and the index of each view's positive.

    Args:
        z1: first views' projections ``(N, D)`` (need not be normalised).
        z2: second views' projections ``(N, D)``; row i of ``z1`` and of ``z2`` are positives.
        temperature: softmax temperature tau.

    Returns:
        ``logits (2N, 2N)``: ``cos(z_a, z_b) / tau`` with the self-pairs (diagonal) set to
        ``-inf``; rows and columns stack ``z1`` then ``z2``.
        ``targets (2N,)``: column of each row's positive, ``(a + N) mod 2N``.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)  # (2N, D)
    logits = z @ z.T / temperature  # (2N, 2N)
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    targets = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
    return logits, targets


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """NT-Xent loss of SimCLR (Chen et al., ICML 2020, eq. 1), averaged over the 2N anchors.

    For each of the 2N views ``a`` with positive ``p(a)``::

        l(a) = -log  exp(sim(z_a, z_p(a)) / tau) / sum_{b != a} exp(sim(z_a, z_b) / tau)

    where ``sim`` is the cosine similarity; the positive stays in the denominator and only the
    self-pair is excluded. The loss is ``mean_a l(a)``.

    Args:
        z1: ``(N, D)`` projections of the first views.
        z2: ``(N, D)`` projections of the second views (row i is the positive of ``z1[i]``).
        temperature: tau (0.1 by default; the paper's best for large batches is 0.1-0.5).

    Returns:
        Scalar loss.
    """
    logits, targets = nt_xent_logits(z1, z2, temperature)
    return F.cross_entropy(logits, targets)


def positive_top1(logits: Tensor, targets: Tensor) -> Tensor:
    """Fraction of rows whose most similar candidate is the positive (``(R, C)``, ``(R,)``).

    A 0-d tensor on the logits' device (reading it as a float would stall a GPU step).
    """
    return (logits.argmax(dim=1) == targets).float().mean()
