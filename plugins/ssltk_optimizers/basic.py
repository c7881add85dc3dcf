"""The one-step optimisers: AdamW, SGD with momentum, LARS.

Their keys in ``[pretrain.optimizer]`` (or in SAM's ``base``) are the optimiser's own; learning
rate and weight decay come from the engine's param groups (``ssltk.engine.optim.param_groups``).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ssltk.engine.optim import LARS
from ssltk.interfaces import ComponentConfig, Optimizer


class AdamWConfig(ComponentConfig):
    betas: tuple[float, float] = Field(
        default=(0.9, 0.999), description="Decay rates of the first and second moments.")


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, ICLR 2019): ``torch.optim.AdamW``."""

    name = "adamw"
    Config = AdamWConfig

    def build(self, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(groups, lr=lr, betas=self.config.betas)


class MomentumConfig(ComponentConfig):
    momentum: float = Field(default=0.9, ge=0, lt=1, description="Momentum of the buffer.")


class Sgd(Optimizer):
    """SGD with (heavy-ball) momentum and L2 weight decay: ``torch.optim.SGD``."""

    name = "sgd"
    Config = MomentumConfig

    def build(self, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(groups, lr=lr, momentum=self.config.momentum)


class LarsConfig(MomentumConfig):
    lars_eta: float = Field(default=0.001, gt=0, description="LARS trust coefficient eta.")


class Lars(Optimizer):
    """Layer-wise adaptive rate scaling (You et al., 2017), SimCLR's optimiser:
    :class:`ssltk.engine.optim.LARS`; biases and norms (``lars_adapt=False``) get plain SGD."""

    name = "lars"
    Config = LarsConfig

    def build(self, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
        return LARS(groups, lr=lr, momentum=self.config.momentum, eta=self.config.lars_eta)
