"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, eq. (1) and Algorithm 1.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ssltk.losses import cosine_logits, positive_top1

__all__ = ["nt_xent_logits", "nt_xent_loss", "positive_top1"]


def nt_xent_logits(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> tuple[Tensor, Tensor]:
    """The 2N x 2N logits NT-Xent takes and the index of each view's positive.

    :func:`ssltk.losses.cosine_logits` (shared with y-Aware): ``cos(z_a, z_b) / tau`` over the
    stacked views ``[z1; z2]`` ``(2N, 2N)`` with self-pairs ``-inf``, and ``targets (2N,)``
    ``= (a + N) mod 2N``.
    """
    return cosine_logits(z1, z2, temperature)


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
