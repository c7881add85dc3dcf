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

from pydantic import Field, model_validator
from torch import nn

from ssltk.errors import ConfigError
from ssltk.interfaces import Batch, ComponentConfig, Objective, ObjectiveOutput
from ssltk.metadata_heads import MetadataHeads, MetadataTask, unique_columns

SupervisedTask = MetadataTask  # the name this plugin exported before the heads moved to the core


class SupervisedConfig(ComponentConfig):
    tasks: list[MetadataTask] = Field(
        default_factory=lambda: [MetadataTask(column="age", kind="regression")],
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
        unique_columns(self.tasks)
        if not any(t.weight > 0 for t in self.tasks):
            raise ValueError("tasks: every weight is 0; give at least one task a weight > 0")
        return self


class Supervised(MetadataHeads, Objective):
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
        self.init_metadata_heads(config.tasks, width)

    def required_columns(self) -> tuple[str, ...]:
        return self.task_columns()

    def complete_columns(self) -> tuple[str, ...]:
        return ()  # a head learns from the labelled samples of a batch only

    def forward(self, batch: Batch) -> ObjectiveOutput:
        x = batch.original if self.needs_original else batch.views[0]
        if x is None:
            raise ConfigError("supervised.input: 'original' needs the un-augmented batch, which "
                              "this caller did not pass (Batch.original)")
        h = self.trunk(self.backbone(x))  # (B, width)
        loss, logs = self.metadata_loss(h, batch.meta)
        logs["loss"] = loss.detach()
        return ObjectiveOutput(loss=loss, logs=logs)
