"""Helpers for objectives running under ``torch.distributed`` (DDP, torchrun).

Every function also works in a single process, where it is the identity (or a local
equivalent), so objectives call them unconditionally.

Gradient scaling of :func:`gather_with_grad`
---------------------------------------------
Contrastive objectives gather every rank's embeddings and compute the loss of the *global*
batch on every rank (its value is then the single-process loss of the concatenated batch). The
backward pass of the gather sums the incoming gradients over ranks (``all_reduce(SUM)``) and
keeps this rank's slice, i.e. it returns the gradient of ``sum over ranks of loss_rank`` with
respect to the local input. With the global loss ``L`` replicated on ``W`` ranks this is
``W * dL/dx_local``; DDP then *averages* parameter gradients over the ``W`` ranks, which divides
the factor back out, so the parameters receive exactly the gradient single-process training on
the concatenated batch would give. (Losses that keep only local anchors and average over them,
as in lightly/solo-learn, get the same result through the same mechanism.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "batch_shuffle",
    "batch_unshuffle",
    "concat_all_gather",
    "gather_with_grad",
    "is_distributed",
    "randperm",
    "rank",
    "world_size",
]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised in this process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward routes each rank's slice of the summed gradient home."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)  # (W * B, ...), rank r's rows at [r*B:(r+1)*B]

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()  # all_reduce works in place: never touch autograd's
        # Every rank's loss may depend on this rank's rows: sum their gradients.
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.chunk(world_size(), dim=0)[rank()]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` ``(B, ...)`` from every rank into ``(W * B, ...)``, keeping gradients.

    Rank order is kept (rank 0's rows first). The backward pass all-reduces (sums) the gradient
    and returns this rank's slice; see the module docstring for why that is the right scaling
    under DDP. Every rank must pass the same shape (use ``drop_last=True`` in the sampler).
    Identity when not distributed.
    """
    if not is_distributed() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def concat_all_gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` ``(B, ...)`` from every rank into ``(W * B, ...)``; no gradient.

    Identity (detached) when not distributed.
    """
    if not is_distributed() or world_size() == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=0)


def randperm(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """A permutation of ``n`` drawn from ``generator`` (on its own device), moved to ``device``."""
    if generator is None:
        return torch.randperm(n, device=device)
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


@torch.no_grad()
def batch_shuffle(x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Shuffle a batch across ranks (MoCo's shuffled BN; He et al., CVPR 2020, sec. 3.3).

    The global batch is gathered, permuted by a permutation drawn on rank 0 and broadcast, and
    each rank keeps its slice, so BatchNorm statistics of the key encoder are computed on a
    random subset of the global batch and cannot leak which key matches which query.

    Args:
        x: local batch ``(B, ...)``.
        generator: draws the permutation on rank 0 (global RNG when None).

    Returns:
        ``(x_shuffled (B, ...), idx_unshuffle (W * B,))`` to pass to :func:`batch_unshuffle`.
        Without a process group the whole batch is permuted locally.
    """
    x_all = concat_all_gather(x)  # (W * B, ...)
    perm = randperm(x_all.shape[0], generator, x.device)
    if is_distributed() and world_size() > 1:
        dist.broadcast(perm, src=0)
    idx_unshuffle = torch.argsort(perm)
    idx_this = perm.view(world_size(), -1)[rank()]  # (B,) global rows this rank encodes
    return x_all[idx_this], idx_unshuffle


@torch.no_grad()
def batch_unshuffle(x: Tensor, idx_unshuffle: Tensor) -> Tensor:
    """Undo :func:`batch_shuffle` on the encoded batch ``(B, ...)``: row i matches input row i."""
    x_all = concat_all_gather(x)  # (W * B, ...) in shuffled order
    idx_this = idx_unshuffle.view(world_size(), -1)[rank()]
    return x_all[idx_this]
