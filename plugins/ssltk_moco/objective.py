"""The MoCo v2 objective: query encoder, momentum key encoder, queue of negatives."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ssltk.distributed import (
    randperm,
    batch_shuffle,
    batch_unshuffle,
    concat_all_gather,
    is_distributed,
    world_size,
)
from ssltk.heads import ProjectionHeadConfig, build_projection_head
from ssltk.interfaces import Batch, Objective, ObjectiveOutput
from ssltk.losses import positive_top1
from ssltk.presets import PresetConfig
from ssltk_moco.loss import moco_logits


PAPER: dict[str, Any] = {
    "proj_hidden_dim": 2048, "proj_dim": 128, "proj_layers": 2, "proj_batch_norm": False,
    "proj_output_norm": False, "temperature": 0.2, "momentum": 0.999, "queue_size": 65536,
    "queue_warm_start": False, "symmetric": False, "shuffle_bn": True,
}
"""MoCo v2's published setting (Chen, Fan, Girshick, He, arXiv:2003.04297, 2020): the MLP head
2048 -> 128 without batch norm, tau = 0.2, m = 0.999, K = 65536 negatives starting as random
unit vectors, one query per pair, shuffled BN. ``preset = "paper"``; docs/methods/moco.md."""


class MoCoConfig(ProjectionHeadConfig, PresetConfig):
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": PAPER}
    proj_hidden_dim: int | None = Field(
        default=2048, ge=1, description="Hidden width of the MLP head (2048 in MoCo v2).")
    temperature: float = Field(default=0.2, gt=0, description="InfoNCE temperature tau.")
    proj_output_norm: bool = Field(
        default=True,
        description="End the head with BatchNorm1d(affine=False) (MoCo v3's projector). The "
                    "MoCo v2 head (false) puts a random-init encoder's keys in a narrow cone "
                    "and the queries collapse onto it (docs/methods/moco.md).")
    momentum: float = Field(
        default=0.99, ge=0, le=1,
        description="Key encoder momentum m: k <- m k + (1 - m) q (the paper: 0.999, for "
                    "~10^5-10^6 steps; 0.99 suits runs of a few hundred steps).")
    queue_size: int = Field(
        default=1024, ge=1,
        description="Negatives in the queue K (the paper: 65536 on ImageNet). Need not be a "
                    "multiple of the batch size: the pointer wraps around.")
    symmetric: bool = Field(
        default=False, description="Use both views as queries and average the two losses.")
    queue_warm_start: bool = Field(
        default=True,
        description="Use only enqueued keys as negatives (false: the official random initial "
                    "queue, which collapses short runs, see docs/methods/moco.md).")
    shuffle_bn: bool = Field(
        default=True, description="Shuffled BN for the keys (across ranks under DDP).")
    shuffle_bn_splits: int = Field(
        default=2, ge=1,
        description="Single process: 'virtual GPUs' whose key BN statistics are computed "
                    "separately after a random permutation (1 disables).")


class MoCo(Objective):
    """MoCo v2 (He et al., CVPR 2020; Chen et al., "Improved Baselines with Momentum Contrastive
    Learning", arXiv:2003.04297, 2020), with defaults for short runs: the head ends with a batch
    norm (MoCo v3, Chen, Xie, He, ICCV 2021), m = 0.99, K = 1024, and only real keys serve as
    negatives (docs/methods/moco.md; the paper's setting, ``preset = "paper"``: ``proj_output_norm =
    false, momentum = 0.999, queue_size = 65536, queue_warm_start = false``).

    Queries come from the backbone + MLP head; keys from a momentum copy of both (no gradient),
    updated in :meth:`on_step_end`, i.e. after each optimiser step and so before the next
    step's keys, the order of the official ``_momentum_update_key_encoder()``. Negatives are a
    FIFO queue of past keys (buffers ``queue (K, D)`` and ``queue_ptr``, saved in checkpoints).
    Keys use shuffled BN: across ranks under DDP (official code), or, in one process, BN
    statistics computed on ``shuffle_bn_splits`` random chunks of the batch.

    Logs: ``loss``, ``acc`` (top-1: the positive key beats every queued negative).
    """

    name = "moco"
    Config = MoCoConfig
    n_views = 2
    sync_batchnorm = False  # shuffled BN needs per-rank statistics (official MoCo v2)

    def __init__(self, config: MoCoConfig, backbone, anchor=None, registry=None):
        super().__init__(config, backbone, anchor=anchor, registry=registry)
        self.head = build_projection_head(config, backbone.out_dim)
        self.key_backbone = copy.deepcopy(backbone)
        self.key_head = copy.deepcopy(self.head)
        for p in self._key_params():
            p.requires_grad_(False)
        queue = F.normalize(torch.randn(config.queue_size, config.proj_dim), dim=1)
        self.register_buffer("queue", queue)  # (K, D), row j = one negative key
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        # Rows of the queue holding real keys (rows [0, queue_len) since the pointer starts at
        # 0); the random rows are never used as negatives, see :meth:`negatives`.
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))

    def _key_params(self):
        yield from self.key_backbone.parameters()
        yield from self.key_head.parameters()

    def _query_params(self):
        yield from self.backbone.parameters()
        yield from self.head.parameters()

    def query(self, x: Tensor) -> Tensor:
        """``(B, C, *spatial) -> (B, D)`` normalised queries."""
        return F.normalize(self.head(self.backbone(x)), dim=1)

    def _encode_key(self, x: Tensor) -> Tensor:
        return F.normalize(self.key_head(self.key_backbone(x)), dim=1)

    @torch.no_grad()
    def keys(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, C, *spatial) -> (B, D)`` normalised keys, with shuffled BN."""
        if not self.config.shuffle_bn:
            return self._encode_key(x)
        if is_distributed() and world_size() > 1:
            x_shuffled, idx_unshuffle = batch_shuffle(x, generator)
            return batch_unshuffle(self._encode_key(x_shuffled), idx_unshuffle)
        # One process: BN statistics per chunk of at least 2 samples, on a random split.
        splits = max(1, min(self.config.shuffle_bn_splits, x.shape[0] // 2))
        perm = randperm(x.shape[0], generator, x.device)
        k = torch.cat([self._encode_key(chunk) for chunk in x[perm].chunk(splits)])
        return k[torch.argsort(perm)]  # back to the input order

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``theta_k <- m theta_k + (1 - m) theta_q`` over backbone and head parameters."""
        m = self.config.momentum
        for pk, pq in zip(self._key_params(), self._query_params(), strict=True):
            pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Push ``keys`` ``(B, D)`` (every rank's, under DDP) into the queue, oldest out first."""
        keys = concat_all_gather(keys)  # (W*B, D)
        size = self.queue.shape[0]
        keys = keys[-size:]  # a batch larger than the queue keeps its last K keys
        n, ptr = keys.shape[0], int(self.queue_ptr)
        idx = (ptr + torch.arange(n, device=keys.device)) % size  # wraps past the end
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + n) % size)
        self.queue_len.fill_(min(size, int(self.queue_len) + n))

    def negatives(self) -> Tensor:
        """The queue's real keys ``(min(K, keys enqueued so far), D)``, a copy.

        The official code starts from K random unit vectors. A random-init encoder's keys sit in
        a narrow cone, so a query beats those random rows by pointing at the cone's centre: on
        PneumoniaMNIST every query collapsed onto one vector within 5 steps (cosine 0.995 between
        any two images) and never recovered (docs/methods/moco.md). Until K keys have been
        enqueued, only the real ones are negatives (none at the very first step, where
        :meth:`_contrast` uses the batch's other keys).
        """
        if not self.config.queue_warm_start:
            return self.queue.clone()
        return self.queue[: int(self.queue_len)].clone()

    def _contrast(self, q: Tensor, k: Tensor, queue: Tensor) -> tuple[Tensor, Tensor]:
        """InfoNCE of queries ``q`` against keys ``k`` ``(B, D)`` and negatives ``queue``.

        An empty ``queue`` (the first step under ``queue_warm_start``) contrasts each query with
        the batch's other keys instead: column j + 1 is ``k_j``, and ``k_i`` itself is masked.
        """
        in_batch = queue.shape[0] == 0
        if in_batch:
            queue = F.normalize(k.detach().float(), dim=1)
        # The loss in float32 even under autocast: logits are cosines / tau, up to 1 / tau.
        with torch.autocast(q.device.type, enabled=False):
            logits = moco_logits(q.float(), k.float(), queue.float(),
                                 self.config.temperature)  # (B, 1 + K)
            if in_batch:
                own = F.pad(torch.eye(q.shape[0], dtype=torch.bool, device=q.device), (1, 0))
                logits = logits.masked_fill(own, float("-inf"))  # (B, 1 + B)
            targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
            loss = F.cross_entropy(logits, targets)  # the positive is column 0
        # strict: with collapsed embeddings every logit ties and argmax would say "column 0"
        acc = positive_top1(logits.detach(), targets)
        return loss, acc

    def forward(self, batch: Batch) -> ObjectiveOutput:
        v1, v2 = batch.views
        queue = self.negatives()  # a copy: enqueue below must not touch what autograd saved
        q1, k2 = self.query(v1), self.keys(v2, batch.generator)
        loss, acc = self._contrast(q1, k2, queue)
        new_keys, embeddings = k2, torch.stack([q1, k2])
        if self.config.symmetric:
            q2, k1 = self.query(v2), self.keys(v1, batch.generator)
            loss2, acc2 = self._contrast(q2, k1, queue)
            loss, acc = 0.5 * (loss + loss2), 0.5 * (acc + acc2)
            new_keys, embeddings = torch.cat([k2, k1]), torch.stack([q1, q2])
        if self.training:
            self.enqueue(new_keys)
        return ObjectiveOutput(loss=loss, logs={"loss": loss.detach(), "acc": acc},
                               embeddings=embeddings.detach().float())  # (2, B, D)

    def on_step_end(self) -> None:
        """Momentum update of the key encoder, after the optimiser step."""
        self.momentum_update()
