"""Supervised heads on metadata columns, shared by objectives that predict metadata.

An objective that predicts columns of the store (the ``supervised`` objective's heads, the
``multitask`` objective's auxiliary heads) declares its tasks with :class:`MetadataTask` and
inherits :class:`MetadataHeads`, which builds one head per task and computes::

    loss = sum_t weight_t * L_t

* regression (continuous column, e.g. age):
  ``L_t = mean_i l((w·h_i + b) - (y_i - mu) / sigma)`` with ``l`` the squared error
  (``loss = "mse"``) or the smooth-L1 / Huber loss (``loss = "smooth_l1"``); the target is
  standardised so that a task's weight does not depend on the column's unit (``mu``, ``sigma``:
  fixed in the config, or exact running statistics of every label seen in training, kept in a
  float64 buffer ``stats_<i>`` that is checkpointed);
* classification (categorical column, e.g. sex, site, diagnosis): cross-entropy of a ``K``-way
  head, the column's codes (the index of the value in the store's sorted categories) being the
  classes.

Missing labels (NaN / code -1) are masked out; a task without any label in a batch adds 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from ssltk.errors import ConfigError
from ssltk.losses import (
    masked_cross_entropy,
    masked_mse,
    masked_smooth_l1,
    stats_mean_std,
    update_running_stats,
)

__all__ = ["MetadataHeads", "MetadataTask", "unique_columns"]


class MetadataTask(BaseModel):
    """One metadata column to predict (an entry of an objective's ``tasks`` list)."""

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
    def _consistent(self) -> MetadataTask:
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
    def out_dim(self) -> int:
        return self.n_classes if self.kind == "classification" else 1


def unique_columns(tasks: Sequence[MetadataTask]) -> None:
    """Raise ValueError (for a pydantic validator) when a column appears twice."""
    columns = [t.column for t in tasks]
    if len(set(columns)) != len(columns):
        raise ValueError(f"tasks: a column appears twice in {columns}")


class MetadataHeads:
    """Mixin for an :class:`~ssltk.interfaces.Objective` with heads on metadata columns.

    Call :meth:`init_metadata_heads` in ``__init__`` (after ``super().__init__``), then
    :meth:`metadata_loss` in ``forward``. The heads are ``self.heads`` (an ``nn.ModuleList``)
    and the running statistics ``self.stats_<i>``; errors name ``<objective name>.tasks[i]``.
    """

    name: str
    tasks: tuple[MetadataTask, ...]

    def init_metadata_heads(self, tasks: Sequence[MetadataTask], in_dim: int) -> None:
        """One Linear head per task on ``(B, in_dim)`` representations."""
        self.tasks = tuple(tasks)
        self.heads = nn.ModuleList(nn.Linear(in_dim, t.out_dim) for t in self.tasks)
        for i in range(len(self.tasks)):
            # [count, mean, M2] of the labels seen; float64 so long runs stay exact
            self.register_buffer(f"stats_{i}", torch.zeros(3, dtype=torch.float64))

    def task_columns(self) -> tuple[str, ...]:
        return tuple(t.column for t in self.tasks)

    def standardisation(self, i: int, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)`` of task ``i`` (running statistics updated with ``y`` in training)."""
        task = self.tasks[i]
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
        task = self.tasks[i]
        mu, sigma = (t.to(out.device) for t in self.standardisation(i, y))
        pred, target = out.squeeze(1), (y - mu) / sigma
        if (task.loss or "mse") == "smooth_l1":
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
        task = self.tasks[i]
        y = y.long()
        if bool((y >= task.n_classes).any()):
            raise ConfigError(f"{self.name}.tasks[{i}].n_classes: column '{task.column}' has "
                              f"code {int(y.max())} but n_classes = {task.n_classes}; set "
                              "n_classes to its number of categories")
        loss = masked_cross_entropy(out, y)
        logs = {f"loss_{task.column}": loss.detach()}
        labelled = y >= 0
        if labelled.any():
            hits = out.detach()[labelled].argmax(1) == y[labelled]
            logs[f"acc_{task.column}"] = hits.float().mean()
        return loss, logs

    def metadata_loss(self, h: Tensor, meta: Mapping[str, Tensor]) -> tuple[Tensor, dict]:
        """``sum_t weight_t * L_t`` over the tasks from representations ``h`` ``(B, in_dim)``,
        and the tasks' logs.

        Raises:
            ConfigError: a task's column is not in ``meta``, or its kind does not match the
                column's type (continuous vs categorical).
        """
        loss, logs = h.new_zeros(()), {}
        for i, task in enumerate(self.tasks):
            if task.column not in meta:
                raise ConfigError(f"{self.name}.tasks[{i}].column: the batch has no column "
                                  f"'{task.column}'; name a column of the pretraining store")
            y = meta[task.column]
            if y.is_floating_point() != (task.kind == "regression"):
                kind = "continuous" if y.is_floating_point() else "categorical"
                fix = "regression" if kind == "continuous" else "classification"
                raise ConfigError(f"{self.name}.tasks[{i}].kind: column '{task.column}' is "
                                  f"{kind}; use kind = '{fix}'")
            step = self.regression if task.kind == "regression" else self.classification
            task_loss, task_logs = step(i, self.heads[i](h), y)
            loss = loss + task.weight * task_loss
            logs.update(task_logs)
        return loss, logs
