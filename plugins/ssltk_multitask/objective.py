"""Multitask pretraining: one self-supervised objective plus supervised heads on metadata.

The total loss is ``ssl_weight * L_ssl + sum_t weight_t * L_t``, where ``L_ssl`` is any
registered objective (SimCLR by default) and each ``L_t`` is a linear head on the backbone's
representation of the first view (shared with the ``supervised`` objective:
:mod:`ssltk.metadata_heads`): MSE or smooth L1 on standardised targets for a regression column,
cross-entropy for a categorical one. Labels that are missing are masked out.

This is the usual "auxiliary supervision" recipe, e.g. combining a contrastive loss with age
and sex prediction on brain MRI (cf. Dufumier et al., MICCAI 2021, whose y-Aware loss uses the
same metadata as a kernel instead of as targets).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator
from torch import nn

from ssltk.errors import ConfigError
from ssltk.interfaces import Batch, ComponentConfig, Objective, ObjectiveOutput
from ssltk.metadata_heads import MetadataHeads, MetadataTask, unique_columns

TaskConfig = MetadataTask  # the name this plugin exported before the heads moved to the core


class MultitaskConfig(ComponentConfig):
    ssl: dict[str, Any] = Field(
        default_factory=lambda: {"name": "simclr"},
        description="The self-supervised objective: {name = ..., <its parameters>, "
                    "anchor = {name = ..., ...} if it takes one}.")
    ssl_weight: float = Field(default=1.0, ge=0, description="Weight of the SSL loss.")
    tasks: list[MetadataTask] = Field(default_factory=list, description="Supervised heads.")

    @model_validator(mode="after")
    def _check(self) -> MultitaskConfig:
        if not isinstance(self.ssl.get("name"), str):
            raise ValueError("ssl: give the objective's name, e.g. ssl = {name = 'simclr'}")
        unique_columns(self.tasks)
        return self


def build_ssl(config: MultitaskConfig, backbone: nn.Module, registry: Any,
              path: str = "multitask.ssl") -> Objective:
    """Validate and build the inner objective (and its anchor) named by ``config.ssl``."""
    if config.ssl["name"] == Multitask.name:
        raise ConfigError(f"{path}.name: multitask cannot wrap itself; name an SSL objective")
    return registry.build("objectives", config.ssl, path, backbone=backbone)


class Multitask(MetadataHeads, Objective):
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
        self.init_metadata_heads(config.tasks, backbone.out_dim)

    @classmethod
    def check_nested(cls, config: MultitaskConfig, registry: Any, path: str) -> None:
        """Validate the inner objective and its anchor (for ``ssltk validate``)."""
        registry.validate("objectives", config.ssl, f"{path}.ssl")

    def required_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.task_columns() + tuple(self.ssl.required_columns())))

    def complete_columns(self) -> tuple[str, ...]:
        return tuple(self.ssl.complete_columns())  # the heads skip unlabelled samples

    def forward(self, batch: Batch) -> ObjectiveOutput:
        inner = self.ssl(batch)
        loss = self.config.ssl_weight * inner.loss
        logs = {"loss_ssl": inner.loss.detach()}
        logs.update({f"ssl_{k}": v for k, v in inner.logs.items()})
        if self.config.tasks:
            h = self.backbone(batch.views[0])  # (B, out_dim)
            task_loss, task_logs = self.metadata_loss(h, batch.meta)
            loss = loss + task_loss
            logs.update(task_logs)
        logs["loss"] = loss.detach()
        return ObjectiveOutput(loss=loss, logs=logs, embeddings=inner.embeddings)

    def on_step_end(self) -> None:
        self.ssl.on_step_end()
