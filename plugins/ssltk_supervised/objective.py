"""Supervised pretraining: heads on the backbone that predict metadata columns.

``loss = sum_t weight_t * L_t`` over the configured tasks, each a head on the backbone's
representation ``h = f(x)`` of one augmented view:

* regression (continuous column, e.g. age): ``L_t = mean_i l((w·h_i + b) - (y_i - mu) / sigma)``
  with ``l`` the squared error (``loss = "mse"``) or the smooth-L1 / Huber loss
  (``loss = "smooth_l1"``); the target is standardised so that a task's weight does not depend
  on the column's unit (``mu``, ``sigma``: fixed in the config, or running statistics of every
  label seen in training);
* classification (categorical column, e.g. sex, site, diagnosis): cross-entropy of a
  ``K``-way head, the column's codes (the index of the value in the store's sorted categories)
  being the classes.

Missing labels (NaN / code -1) are masked out; a task without any label in a batch adds 0.
This is the supervised baseline of Dufumier et al., "Contrastive Learning with Continuous Proxy
Meta-Data for 3D MRI Classification", MICCAI 2021 (an encoder pretrained to predict age on the
pretraining cohort, then transferred), generalised to several columns at once.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from ssltk.errors import ConfigError
from ssltk.interfaces import Batch, ComponentConfig, Objective, ObjectiveOutput
from ssltk.losses import (
    masked_cross_entropy,
    masked_mse,
    masked_smooth_l1,
    stats_mean_std,
    update_running_stats,
)


class SupervisedTask(BaseModel):
    """One metadata column to predict."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str = Field(description="Metadata column of the pretraining store.")
    kind: Literal["regression", "classification"] = Field(
        description="regression for a continuous column, classification for a categorical one.")
    n_classes: int | None = Field(
        default=None, ge=2, description="Classification: number of categories of the column.")
    weight: float = Field(default=1.0, ge=0, description="Weight of this task in the sum.")
    loss: Literal["mse", "smooth_l1", "cross_entropy"] | None = Field(
        default=None, description="Regression: 'mse' (default) or 'smooth_l1'; classification: "
                                  "'cross_entropy' (the default and only choice).")
    beta: float = Field(default=1.0, gt=0, description="smooth_l1: quadratic below |e| < beta "
                                                       "(in standardised units).")
    standardize: bool = Field(default=True, description="Regression: fit (y - mean) / std.")
    mean: float | None = Field(default=None, description="Regression: fixed mean (else running).")
    std: float | None = Field(default=None, gt=0, description="Regression: fixed std (else "
                                                              "running).")

    @model_validator(mode="after")
    def _consistent(self) -> SupervisedTask:
        where = f"task '{self.column}'"
        if self.kind == "classification":
            if self.n_classes is None:
                raise ValueError(f"{where}: classification needs n_classes (the number of "
                                 "categories of the column)")
            if self.loss not in (None, "cross_entropy"):
                raise ValueError(f"{where}: loss '{self.loss}' is for regression; "
                                 "classification uses cross_entropy")
            if self.mean is not None or self.std is not None:
                raise ValueError(f"{where}: mean/std are for regression only")
        else:
            if self.n_classes is not None:
                raise ValueError(f"{where}: n_classes is for classification only")
            if self.loss == "cross_entropy":
                raise ValueError(f"{where}: regression takes loss = 'mse' or 'smooth_l1'")
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"{where}: give both mean and std, or neither")
        return self

    @property
    def regression_loss(self) -> str:
        return self.loss or "mse"


class SupervisedConfig(ComponentConfig):
    tasks: list[SupervisedTask] = Field(
        default_factory=lambda: [SupervisedTask(column="age", kind="regression")],
        min_length=1,
        description="Columns to predict; default: age, regression (the y-Aware paper's baseline).")
    input: Literal["augmented", "original"] = Field(
        default="augmented",
        description="Train on one augmented view (the run's pipeline) or on the un-augmented "
                    "batch: crops and rescaling change the sizes that age and atrophy show in.")
    hidden_dim: int | None = Field(
        default=None, ge=1, description="Width of a hidden layer shared by the heads (Linear, "
                                        "ReLU); None: one linear head per task on the backbone.")

    @model_validator(mode="after")
    def _unique(self) -> SupervisedConfig:
        columns = [t.column for t in self.tasks]
        if len(set(columns)) != len(columns):
            raise ValueError(f"tasks: a column appears twice in {columns}")
        if not any(t.weight > 0 for t in self.tasks):
            raise ValueError("tasks: every weight is 0; give at least one task a weight > 0")
        return self


class Supervised(Objective):
    """Supervised pretraining on metadata columns (regression and/or classification heads).

    One augmented view per sample (or the un-augmented batch, ``input = "original"``); the
    heads (and the optional shared hidden layer) are the objective's own and are discarded
    after pretraining, like a projection head.

    Logs: ``loss``; per task ``loss_<column>``, and ``mae_<column>`` (regression, in the
    column's unit) or ``acc_<column>`` (classification) over the labelled samples of the batch.
    """

    name = "supervised"
    Config = SupervisedConfig
    n_views = 1

    def __init__(self, config: SupervisedConfig, backbone, anchor=None, registry=None):
        super().__init__(config, backbone, anchor, registry)
        if anchor is not None:
            raise ConfigError("supervised.anchor: the supervised objective takes no anchor; "
                              "remove it")
        # an instance attribute shadows the class default (read it from the built objective)
        self.needs_original = config.input == "original"
        width = backbone.out_dim
        self.trunk: nn.Module = nn.Identity()
        if config.hidden_dim is not None:
            self.trunk = nn.Sequential(nn.Linear(width, config.hidden_dim), nn.ReLU(inplace=True))
            width = config.hidden_dim
        self.heads = nn.ModuleList(
            nn.Linear(width, t.n_classes if t.kind == "classification" else 1)
            for t in config.tasks)
        for i in range(len(config.tasks)):
            # [count, mean, M2] of the labels seen; float64 so long runs stay exact
            self.register_buffer(f"stats_{i}", torch.zeros(3, dtype=torch.float64))

    def required_columns(self) -> tuple[str, ...]:
        return tuple(t.column for t in self.config.tasks)

    def standardisation(self, i: int, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)`` of task ``i`` (running statistics updated with ``y`` in training)."""
        task = self.config.tasks[i]
        if not task.standardize:
            return torch.zeros(()), torch.ones(())
        if task.mean is not None:
            return torch.tensor(task.mean), torch.tensor(task.std)
        stats = getattr(self, f"stats_{i}")
        if self.training:
            update_running_stats(stats, y.detach())
        mean, std = stats_mean_std(stats)
        return mean.float(), std.float()

    def regression(self, i: int, out: Tensor, y: Tensor) -> tuple[Tensor, dict]:
        """Loss and logs of regression task ``i``: ``out`` ``(B, 1)``, ``y`` ``(B,)`` float."""
        task = self.config.tasks[i]
        mu, sigma = (t.to(out.device) for t in self.standardisation(i, y))
        pred, target = out.squeeze(1), (y - mu) / sigma
        if task.regression_loss == "smooth_l1":
            loss = masked_smooth_l1(pred, target, beta=task.beta)
        else:
            loss = masked_mse(pred, target)
        logs = {f"loss_{task.column}": loss.detach()}
        labelled = ~torch.isnan(y)
        if labelled.any():
            error = pred.detach()[labelled] * sigma + mu - y[labelled]
            logs[f"mae_{task.column}"] = error.abs().mean()
        return loss, logs

    def classification(self, i: int, out: Tensor, y: Tensor) -> tuple[Tensor, dict]:
        """Loss and logs of classification task ``i``: ``out`` ``(B, K)``, ``y`` ``(B,)`` codes."""
        task = self.config.tasks[i]
        y = y.long()
        if bool((y >= task.n_classes).any()):
            raise ConfigError(f"supervised.tasks[{i}].n_classes: column '{task.column}' has code "
                              f"{int(y.max())} but n_classes = {task.n_classes}; set n_classes "
                              f"to its number of categories")
        loss = masked_cross_entropy(out, y)
        logs = {f"loss_{task.column}": loss.detach()}
        labelled = y >= 0
        if labelled.any():
            hits = out.detach()[labelled].argmax(1) == y[labelled]
            logs[f"acc_{task.column}"] = hits.float().mean()
        return loss, logs

    def forward(self, batch: Batch) -> ObjectiveOutput:
        x = batch.original if self.needs_original else batch.views[0]
        if x is None:
            raise ConfigError("supervised.input: 'original' needs the un-augmented batch, which "
                              "this caller did not pass (Batch.original)")
        h = self.trunk(self.backbone(x))  # (B, width)
        loss, logs = h.new_zeros(()), {}
        for i, task in enumerate(self.config.tasks):
            if task.column not in batch.meta:
                raise ConfigError(f"supervised.tasks[{i}].column: the batch has no column "
                                  f"'{task.column}'; name a column of the pretraining store")
            y = batch.meta[task.column]
            if y.is_floating_point() != (task.kind == "regression"):
                kind = "continuous" if y.is_floating_point() else "categorical"
                fix = "regression" if kind == "continuous" else "classification"
                raise ConfigError(f"supervised.tasks[{i}].kind: column '{task.column}' is {kind}; "
                                  f"use kind = '{fix}'")
            step = self.regression if task.kind == "regression" else self.classification
            task_loss, task_logs = step(i, self.heads[i](h), y)
            loss = loss + task.weight * task_loss
            logs.update(task_logs)
        logs["loss"] = loss.detach()
        return ObjectiveOutput(loss=loss, logs=logs)
