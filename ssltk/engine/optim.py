"""Optimisers, learning-rate schedule and gradient clipping of the training loops.

* :class:`~ssltk.config.OptimConfig` (defined with the TOML's tables, re-exported here) – the
  ``[pretrain.optimizer]`` table: a registered optimiser (adamw, sgd, lars, sam... from the
  ``register_optimizers`` plugins), warmup, cosine decay, gradient clipping.
* :func:`build_optimizer` – the optimiser, with biases and normalisation parameters in a
  separate group free of weight decay (and of LARS adaptation), as SimCLR, BYOL and MoCo v3 do.
* :class:`LARS` – layer-wise adaptive rate scaling (You et al., 2017, "Large Batch Training of
  Convolutional Networks", arXiv:1708.03888), the optimiser of SimCLR (Chen et al., 2020).
* :func:`cosine_schedule` – linear warmup then cosine decay (Loshchilov & Hutter, 2017), stepped
  once per optimiser step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ssltk.config import OptimConfig
from ssltk.errors import SsltkError
from ssltk.registry import Registry, default_registry

__all__ = ["LARS", "OptimConfig", "WarmupCosine", "build_optimizer", "clip_gradients",
           "cosine_schedule", "param_groups"]


# -- parameter groups --------------------------------------------------------------------------
def _is_bias_or_norm(name: str, param: Tensor) -> bool:
    # Biases and the affine weights of BatchNorm/LayerNorm/GroupNorm are exactly the <=1-D
    # parameters of common networks (timm's rule); the name catches 2-D+ biases, if any.
    return param.ndim <= 1 or name.endswith("bias")


def _named(params: nn.Module | Iterable) -> list[tuple[str, Tensor]]:
    if isinstance(params, nn.Module):
        return list(params.named_parameters())
    return [("", p) for p in params]


def param_groups(params_or_model: nn.Module | Iterable, weight_decay: float,
                 exclude_bias_and_norm: bool = True) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed group and a bias/norm group.

    Args:
        params_or_model: a module, an iterable of parameters, or an iterable of param-group
            dicts (``{"params": module_or_params, "lr": ...}``) whose other keys are kept.
        weight_decay: decay of the decayed group(s).
        exclude_bias_and_norm: put biases and normalisation parameters (every parameter with
            ``ndim <= 1`` or a name ending in ``bias``) in groups with ``weight_decay=0`` and
            ``lars_adapt=False``.

    Returns:
        Param-group dicts for ``torch.optim`` (empty groups dropped); each has
        ``weight_decay`` and ``lars_adapt``. Parameters with ``requires_grad=False`` are left out.
    """
    items = params_or_model if isinstance(params_or_model, nn.Module) else list(params_or_model)
    if not isinstance(items, nn.Module) and items and isinstance(items[0], dict):
        sources = [(g["params"], {k: v for k, v in g.items() if k != "params"}) for g in items]
    else:
        sources = [(items, {})]
    groups = []
    for params, extra in sources:
        decay, no_decay = [], []
        for name, p in _named(params):
            if p.requires_grad:
                excluded = exclude_bias_and_norm and _is_bias_or_norm(name, p)
                (no_decay if excluded else decay).append(p)
        groups += [{"params": decay, "weight_decay": weight_decay, "lars_adapt": True, **extra},
                   {**extra, "params": no_decay, "weight_decay": 0.0, "lars_adapt": False}]
    return [g for g in groups if g["params"]]


# -- LARS --------------------------------------------------------------------------------------
class LARS(torch.optim.Optimizer):
    """Momentum SGD with a layer-wise trust ratio (You et al., 2017; SimCLR's optimiser).

    For each parameter tensor ``w`` with gradient ``g`` in a group with ``lars_adapt=True``::

        trust = eta * ||w|| / (||g|| + wd * ||w||)     (1 if ||w|| or ||g|| is 0)
        d     = trust * (g + wd * w)
        v     = momentum * v + d                       (v = d at the first step)
        w     = w - lr * v

    In groups with ``lars_adapt=False`` (biases, norms: see :func:`param_groups`) ``trust`` is 1,
    i.e. plain momentum SGD with that group's weight decay (0 there by default). The learning
    rate multiplies the momentum buffer at each step, as in ``torch.optim.SGD``, so a schedule
    changes the step size at once.

    Args:
        params: parameters or param-group dicts.
        lr: learning rate; SimCLR uses ``0.3 * batch_size / 256``.
        momentum: momentum of the buffer ``v``.
        weight_decay: L2 coefficient ``wd``, added to the gradient.
        eta: trust coefficient.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"invalid LARS hyper-parameters lr={lr} momentum={momentum} "
                             f"weight_decay={weight_decay} eta={eta}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                    "lars_adapt": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, eta = group["weight_decay"], group["eta"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=wd) if wd else p.grad.clone()
                if group["lars_adapt"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                    trust = eta * w_norm / (g_norm + wd * w_norm)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
                    d.mul_(trust)
                state = self.state[p]
                if "momentum_buffer" in state:
                    d = state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                else:
                    state["momentum_buffer"] = d
                p.add_(d, alpha=-group["lr"])
        return loss


# -- building ----------------------------------------------------------------------------------
def build_optimizer(params_or_model: nn.Module | Iterable, config: OptimConfig,
                    registry: Registry | None = None) -> torch.optim.Optimizer:
    """The optimiser named by ``config``, over the groups of :func:`param_groups`.

    Args:
        params_or_model: a module, parameters, or param-group dicts (see :func:`param_groups`).
        config: the optimiser settings; ``config.spec()`` names a registered optimiser.
        registry: where to find it (default: the installed plugins).

    Returns:
        What the optimiser plugin builds (the built-ins: ``torch.optim.AdamW``,
        ``torch.optim.SGD``, :class:`LARS`, and SAM, a
        :class:`~ssltk.interfaces.TwoStepOptimizer` around one of them).

    Raises:
        SsltkError: there is no trainable parameter.
        ConfigError: an unknown optimiser or parameter (``optimizer.name: ...``).
    """
    groups = param_groups(params_or_model, config.weight_decay, config.exclude_bias_and_norm)
    if not groups:
        raise SsltkError("nothing to optimise: the model has no parameter with requires_grad=True")
    registry = registry or default_registry()
    config.check(registry, "optimizer")
    return registry.build("optimizers", config.spec(), "optimizer").build(groups, config.lr)


# -- schedule ----------------------------------------------------------------------------------
class WarmupCosine:
    """LR multiplier at step ``s`` (a callable object, so LambdaLR checkpoints its fields).

    * ``s < warmup_steps``: ``(s + 1) / (warmup_steps + 1)`` – a linear ramp from near 0 whose
      every step trains (no step at lr 0);
    * ``s >= warmup_steps``: ``r + (1 - r) * (1 + cos(pi * t)) / 2`` with
      ``t = (s - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1] and
      ``r = min_lr_ratio``: 1 at the end of warmup, ``r`` at ``total_steps``.
    """

    def __init__(self, total_steps: int, warmup_steps: int, min_lr_ratio: float):
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        t = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                    min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to each group's lr, then cosine decay to ``min_lr_ratio * lr``.

    Call ``scheduler.step()`` after each ``optimizer.step()``; see :class:`WarmupCosine` for the
    exact multiplier. Its ``state_dict`` holds only numbers, so it checkpoints with
    :func:`ssltk.engine.checkpoint.save_checkpoint`.

    Raises:
        SsltkError: ``total_steps < 1`` or a warmup not shorter than training.
    """
    if total_steps < 1:
        raise SsltkError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps < 0 or (warmup_steps > 0 and warmup_steps >= total_steps):
        raise SsltkError(f"warmup of {warmup_steps} steps is not shorter than the {total_steps} "
                         "training steps; lower optimizer.warmup_epochs")
    if not 0 <= min_lr_ratio <= 1:
        raise SsltkError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(total_steps, warmup_steps, min_lr_ratio))


def clip_gradients(params_or_model: nn.Module | Iterable[Tensor], max_norm: float) -> float:
    """Rescale gradients so that their global L2 norm is at most ``max_norm``.

    Returns:
        The total norm before clipping (inf or NaN if a gradient is not finite; the caller
        decides what to do); 0.0 when no parameter has a gradient.
    """
    params = params_or_model.parameters() if isinstance(params_or_model, nn.Module) \
        else params_or_model
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))
