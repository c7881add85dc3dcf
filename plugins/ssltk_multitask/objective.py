"""Multitask pretraining: one self-supervised objective plus supervised heads on metadata.

The total loss is ``ssl_weight * L_ssl + sum_t weight_t * L_t``, where ``L_ssl`` is any
registered objective (SimCLR by default) and each ``L_t`` is a linear head on the backbone's
representation of the first view: MSE on standardised targets for a regression column,
cross-entropy for a categorical one. Labels that are missing are masked out.

This is the usual "auxiliary supervision" recipe, e.g. combining a contrastive loss with age
and sex prediction on brain MRI (cf. Dufumier et al., MICCAI 2021, whose y-Aware loss uses the
same metadata as a kernel instead of as targets).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from ssltk.errors import ConfigError
from ssltk.interfaces import Batch, ComponentConfig, Objective, ObjectiveOutput
from ssltk.losses import (
    masked_cross_entropy,
    masked_mse,
    stats_mean_std,
    update_running_stats,
)


class TaskConfig(BaseModel):
    """One supervised head on a metadata column."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str = Field(description="Metadata column to predict.")
    kind: Literal["regression", "classification"]
    n_classes: int | None = Field(default=None, ge=2, description="Classification only.")
    weight: float = Field(default=1.0, ge=0, description="Weight of this task's loss.")
    standardize: bool = Field(
        default=True, description="Regression: fit (y - mean) / std instead of y.")
    mean: float | None = Field(default=None, description="Regression: fixed mean (else running).")
    std: float | None = Field(
        default=None, gt=0, description="Regression: fixed std (else running).")

    @model_validator(mode="after")
    def _consistent(self) -> TaskConfig:
        if self.kind == "classification" and self.n_classes is None:
            raise ValueError(f"task '{self.column}': classification needs n_classes")
        if self.kind == "regression" and self.n_classes is not None:
            raise ValueError(f"task '{self.column}': n_classes is for classification only")
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"task '{self.column}': give both mean and std, or neither")
        if self.kind == "classification" and self.mean is not None:
            raise ValueError(f"task '{self.column}': mean/std are for regression only")
        return self


class MultitaskConfig(ComponentConfig):
    ssl: dict[str, Any] = Field(
        default_factory=lambda: {"name": "simclr"},
        description="The self-supervised objective: {name = ..., <its parameters>, "
                    "anchor = {name = ..., ...} if it takes one}.")
    ssl_weight: float = Field(default=1.0, ge=0, description="Weight of the SSL loss.")
    tasks: list[TaskConfig] = Field(default_factory=list, description="Supervised heads.")

    @model_validator(mode="after")
    def _check(self) -> MultitaskConfig:
        if not isinstance(self.ssl.get("name"), str):
            raise ValueError("ssl: give the objective's name, e.g. ssl = {name = 'simclr'}")
        columns = [t.column for t in self.tasks]
        if len(set(columns)) != len(columns):
            raise ValueError(f"tasks: a column appears twice in {columns}")
        return self


def build_ssl(config: MultitaskConfig, backbone: nn.Module, registry: Any,
              path: str = "multitask.ssl") -> Objective:
    """Validate and build the inner objective (and its anchor) named by ``config.ssl``."""
    if config.ssl["name"] == Multitask.name:
        raise ConfigError(f"{path}.name: multitask cannot wrap itself; name an SSL objective")
    return registry.build("objectives", config.ssl, path, backbone=backbone)


class Multitask(Objective):
    """An SSL objective plus supervised heads on metadata columns.

    ``loss = ssl_weight * L_ssl + sum_t weight_t * L_t``. Each head is a Linear layer on the
    backbone's representation ``(B, out_dim)`` of ``views[0]`` (one extra backbone pass: the
    inner objective is a black box). Regression targets are standardised with the task's
    ``mean``/``std``, or with running statistics of every label seen in training. Missing labels
    (NaN, -1) are masked; a task without any label in a batch adds 0.

    ``n_views`` and ``needs_original`` are those of the inner objective: they are set on the
    instance, so read them from the built objective, not from the class.

    Logs: ``loss``, ``loss_ssl``, the inner objective's logs prefixed ``ssl_``, ``loss_<column>``
    for each task and ``acc_<column>`` for classification tasks with labels in the batch.
    """

    name = "multitask"
    Config = MultitaskConfig
    uses_anchor = False  # an anchor for the inner objective goes in ssl = {..., anchor = {...}}

    def __init__(self, config: MultitaskConfig, backbone, anchor=None, registry=None):
        super().__init__(config, backbone, anchor, registry)
        if anchor is not None:
            raise ConfigError(
                "multitask.anchor: give the anchor inside ssl = {..., anchor = {...}}")
        if registry is None:
            from ssltk.registry import get_registry

            registry = self.registry = get_registry()
        self.ssl = build_ssl(config, backbone, registry)
        self.n_views = self.ssl.n_views  # instance attributes shadow the class defaults
        self.needs_original = self.ssl.needs_original
        self.heads = nn.ModuleList(
            nn.Linear(backbone.out_dim, t.n_classes if t.kind == "classification" else 1)
            for t in config.tasks)
        for i, task in enumerate(config.tasks):
            # [count, mean, M2] of the labels seen; float64 so long runs stay exact
            self.register_buffer(f"stats_{i}", torch.zeros(3, dtype=torch.float64))

    @classmethod
    def check_nested(cls, config: MultitaskConfig, registry: Any, path: str) -> None:
        """Validate the inner objective and its anchor (for ``ssltk validate``)."""
        registry.validate("objectives", config.ssl, f"{path}.ssl")

    def required_columns(self) -> tuple[str, ...]:
        columns = [t.column for t in self.config.tasks] + list(self.ssl.required_columns())
        return tuple(dict.fromkeys(columns))

    def regression_target(self, i: int, y: Tensor) -> Tensor:
        """Task ``i``'s targets ``(B,)`` standardised as configured (running stats updated)."""
        task = self.config.tasks[i]
        y = y.float()
        if not task.standardize:
            return y
        if task.mean is not None:
            return (y - task.mean) / task.std
        stats = getattr(self, f"stats_{i}")
        if self.training:
            update_running_stats(stats, y.detach())
        mean, std = stats_mean_std(stats)
        return (y - mean.float()) / std.float()

    def task_loss(self, i: int, h: Tensor, meta: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """Loss of task ``i`` from representations ``h`` ``(B, out_dim)``, and its logs."""
        task = self.config.tasks[i]
        if task.column not in meta:
            raise ConfigError(f"multitask.tasks[{i}].column: batch has no column '{task.column}'")
        y, out = meta[task.column], self.heads[i](h)
        if task.kind == "regression":
            loss = masked_mse(out.squeeze(1), self.regression_target(i, y))
            return loss, {f"loss_{task.column}": loss.detach()}
        y = y.long()
        if bool((y >= task.n_classes).any()):
            raise ConfigError(f"multitask.tasks[{i}].n_classes: column '{task.column}' has code "
                              f"{int(y.max())} but n_classes = {task.n_classes}")
        loss = masked_cross_entropy(out, y)
        logs = {f"loss_{task.column}": loss.detach()}
        labelled = y >= 0
        if labelled.any():
            hits = out.detach()[labelled].argmax(1) == y[labelled]
            logs[f"acc_{task.column}"] = hits.float().mean()
        return loss, logs

    def forward(self, batch: Batch) -> ObjectiveOutput:
        inner = self.ssl(batch)
        loss = self.config.ssl_weight * inner.loss
        logs = {"loss_ssl": inner.loss.detach()}
        logs.update({f"ssl_{k}": v for k, v in inner.logs.items()})
        if self.config.tasks:
            h = self.backbone(batch.views[0])  # (B, out_dim)
            for i, task in enumerate(self.config.tasks):
                task_loss, task_logs = self.task_loss(i, h, batch.meta)
                loss = loss + task.weight * task_loss
                logs.update(task_logs)
        logs["loss"] = loss.detach()
        return ObjectiveOutput(loss=loss, logs=logs, embeddings=inner.embeddings)

    def on_step_end(self) -> None:
        self.ssl.on_step_end()
