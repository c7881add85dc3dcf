"""Pure tensor pieces shared by contrastive objectives (SimCLR, y-Aware...).

Plugins never import each other: what two objectives compute alike lives here, in the core.

* :func:`cosine_logits` – the temperature-scaled cosine similarities of the 2N stacked views
  ``[z1; z2]``, self-pairs masked, and each view's positive (Chen et al., "A Simple Framework for
  Contrastive Learning of Visual Representations", ICML 2020, eq. 1; Dufumier et al.,
  "Contrastive Learning with Continuous Proxy Meta-Data for 3D MRI Classification", MICCAI 2021,
  eq. 3 uses the same logits).
* :func:`positive_top1` – how often a view's most similar candidate is its positive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cosine_logits", "positive_top1"]


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
    """Fraction of rows whose most similar candidate is the positive (``(R, C)``, ``(R,)``).

    A 0-d tensor on the logits' device (reading it as a float would stall a GPU step).
    """
    return (logits.argmax(dim=1) == positives).float().mean()
