"""What the frozen baselines of a benchmark probe, besides the untrained encoder.

* :func:`fit_batch_norm` – the random-init encoder with its batch-norm statistics re-estimated
  on unlabelled volumes (no gradient step): the ``random_init_bn`` baseline. An untrained
  encoder keeps BatchNorm's initial running statistics (mean 0, variance 1), which fit none of
  its layers' activations, so its eval-mode features sit in a narrow cone; fitting them is
  the cheapest thing any training would do first.
* :class:`RawInput` – the input volume itself, average-pooled to at most
  :data:`MAX_RAW_FEATURES` values: the ``raw_input`` baseline, probed like an encoder's
  embeddings (same standardisation, classifier and regularisation choice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ssltk.data.loading import BatchReader
from ssltk.engine import runtime
from ssltk.errors import SsltkError

__all__ = ["MAX_RAW_FEATURES", "BatchNormFit", "RawInput", "batch_norm_layers",
           "fit_batch_norm", "raw_input_grid"]

MAX_RAW_FEATURES = 4096
"""Most values a raw-input row has (channels x pooled voxels)."""


def batch_norm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``module`` that keep running statistics, in module order.

    Group and instance norm are not among them: they normalise each sample by its own
    statistics and keep none.
    """
    return [m for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@dataclass
class _Moments:
    """Per-channel count, mean and sum of squared deviations, merged batch by batch (Chan et
    al. 1979's pairwise update, in float64 so the merge does not drift)."""

    n: int = 0
    mean: Tensor | None = None  # (C,)
    m2: Tensor | None = None  # (C,)

    def add(self, x: Tensor) -> None:
        """``x``: ``(B, C, *spatial)``, a BatchNorm layer's input."""
        x = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)  # (C, B * voxels)
        n_b, mean_b = x.shape[1], x.mean(1)
        m2_b = ((x - mean_b[:, None]) ** 2).sum(1)
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta ** 2 * (self.n * n_b / n)
        self.n = n

    def variance(self) -> Tensor:
        """The unbiased variance, BatchNorm's convention for ``running_var``."""
        return self.m2 / max(self.n - 1, 1)


@dataclass(frozen=True)
class BatchNormFit:
    """What :func:`fit_batch_norm` did: layers fitted, volumes and batches passed."""

    layers: int
    rows: int
    batches: int


@torch.no_grad()
def fit_batch_norm(backbone: nn.Module, reader: BatchReader, rows, batch_size: int,
                   ctx: runtime.Context) -> BatchNormFit:
    """Re-estimate every BatchNorm layer's running statistics on ``rows``; nothing else changes.

    Forward passes in train mode (each layer normalises by its batch's statistics, as in
    training; no gradient, no parameter update, fp32), over ``rows`` as they are stored (no
    augmentation), in order, in batches of ``batch_size`` or a little more (the remainder is
    spread over the batches, so no batch is a lone volume). Each layer's ``running_mean`` and
    ``running_var`` become the mean and unbiased variance, per channel, of its input over every
    voxel of every volume: what ``momentum=None`` (a cumulative average) estimates, exactly,
    whatever the batch sizes. ``num_batches_tracked`` counts the batches. The module is left
    in eval mode.

    Args:
        backbone: the encoder, on ``ctx.device``.
        reader: reads the volumes of ``rows``.
        rows: store rows (at least 2 volumes).

    Returns:
        The number of layers fitted (0 for a backbone without BatchNorm: nothing changes),
        volumes and batches.
    """
    rows = np.asarray(rows, dtype=np.int64)
    layers = batch_norm_layers(backbone)
    if not layers:
        backbone.eval()
        return BatchNormFit(0, len(rows), 0)
    if len(rows) < 2:
        raise SsltkError(f"batch-norm statistics need at least 2 volumes, got {len(rows)}; "
                         "use a pretraining store with more volumes")
    batches = np.array_split(rows, max(1, len(rows) // batch_size))
    moments = [_Moments() for _ in layers]
    hooks = [layer.register_forward_pre_hook(lambda _m, args, acc=acc: acc.add(args[0]))
             for layer, acc in zip(layers, moments)]
    try:
        backbone.train()
        for batch in batches:
            x, _ = reader.read(batch)
            backbone(x.to(ctx.device))
    finally:
        for hook in hooks:
            hook.remove()
        backbone.eval()
    for layer, acc in zip(layers, moments):
        layer.running_mean.copy_(acc.mean.to(layer.running_mean.dtype))
        layer.running_var.copy_(acc.variance().to(layer.running_var.dtype))
        layer.num_batches_tracked.fill_(len(batches))
    return BatchNormFit(len(layers), len(rows), len(batches))


def raw_input_grid(shape: tuple[int, ...], max_features: int = MAX_RAW_FEATURES
                   ) -> tuple[int, ...]:
    """The pooled spatial size of a raw-input row.

    The largest cubic (3D) or square (2D) grid ``g^d`` with ``channels * g^d <= max_features``,
    each side capped at the volume's own (an axis shorter than ``g`` is kept whole).

    Args:
        shape: ``(C, *spatial)`` of one volume.

    Returns:
        ``(g_1, ..., g_d)``; e.g. ``(16, 16, 16)`` for ``(1, 32, 32, 32)`` (4096 values),
        ``(12, 12, 12)`` for two channels, ``(28, 28)`` for ``(1, 28, 28)``.
    """
    channels, spatial = shape[0], shape[1:]
    g = 1
    while channels * (g + 1) ** len(spatial) <= max_features:
        g += 1
    return tuple(min(g, side) for side in spatial)


class RawInput(nn.Module):
    """``(B, C, *spatial) -> (B, C * prod(grid))``: the volume average-pooled to
    :func:`raw_input_grid` (``adaptive_avg_pool``: cell ``i`` of an axis of length ``L``
    averages voxels ``floor(i L / g)`` to ``ceil((i + 1) L / g) - 1``), flattened channel
    first. No parameters: what a probe of the input itself reads.

    Args:
        shape: ``(C, *spatial)`` of the volumes it will see.
    """

    def __init__(self, shape: tuple[int, ...], max_features: int = MAX_RAW_FEATURES):
        super().__init__()
        self.grid = raw_input_grid(tuple(shape), max_features)
        self.out_dim = int(shape[0] * np.prod(self.grid))

    def forward(self, x: Tensor) -> Tensor:
        pool = (nn.functional.adaptive_avg_pool3d if len(self.grid) == 3
                else nn.functional.adaptive_avg_pool2d)
        return pool(x, self.grid).flatten(1)
