"""InfoNCE with a queue of negatives, as in MoCo.

He, Fan, Wu, Xie, Girshick, "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020, eq. (1) and Algorithm 1; Chen, Fan, Girshick, He, "Improved Baselines with
Momentum Contrastive Learning" (MoCo v2), arXiv:2003.04297.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def moco_logits(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """Logits ``(N, 1 + K)``: column 0 is the positive ``q_i . k_i``, then ``q_i . queue_j``.

    Args:
        q: queries ``(N, D)``; normalised here.
        k: keys ``(N, D)`` (row i is the positive of ``q[i]``); normalised here, no gradient.
        queue: ``(K, D)`` L2-normalised negatives (keys of previous batches).
        temperature: tau.
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    l_pos = torch.einsum("nd,nd->n", q, k).unsqueeze(1)  # (N, 1)
    l_neg = q @ queue.detach().T  # (N, D) @ (D, K) -> (N, K)
    return torch.cat([l_pos, l_neg], dim=1) / temperature


def moco_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """InfoNCE with a queue (MoCo, He et al. CVPR 2020, eq. 1), averaged over the N queries::

        l(i) = -log  exp(q_i . k_i / tau) / (exp(q_i . k_i / tau) + sum_j exp(q_i . n_j / tau))

    i.e. cross-entropy over ``[l_pos, l_neg]`` with the positive at index 0. Keys and queue
    carry no gradient.

    Args:
        q: queries ``(N, D)`` (query encoder; normalised here).
        k: keys ``(N, D)`` (momentum encoder; normalised here).
        queue: negatives ``(K, D)``, L2-normalised.
        temperature: tau (0.2 in MoCo v2, 0.07 in MoCo v1).

    Returns:
        Scalar loss.
    """
    logits = moco_logits(q, k, queue, temperature)
    targets = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, targets)
