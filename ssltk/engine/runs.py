"""What determines a result, and the one way a benchmark TOML becomes it.

* :class:`PretrainRun` – everything that determines the weights a pretraining ends with;
  :class:`FinetuneRun` – everything that determines a finetuning result. Both hash their
  content (``run.content_hash()``): the identity of a checkpoint and of a grid cell.
* :class:`DistillRun` – everything that determines a distillation (SimCLRv2's third stage)
  after a finetuning cell, built by :func:`distill_run` from the teacher's FinetuneRun.
* :func:`pretrain_run` and :func:`finetune_run` build them from a
  :class:`~ssltk.config.BenchmarkConfig`. The grid (:mod:`ssltk.bench.grid`), the CLI and
  notebooks all call these two functions, and the runs take their settings from the TOML
  tables through shared bases (:class:`~ssltk.config.PretrainSettings`,
  :class:`~ssltk.config.FinetuneSettings`, :class:`~ssltk.config.TargetSettings`), so a new
  setting reaches every run without a line here and the defaults cannot disagree.

>>> run = finetune_run(config, (train_rows, val_rows, test_rows), "frozen", seed=0)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from ssltk.config import (
    BenchmarkConfig,
    DistillSettings,
    FinetuneSettings,
    Precision,
    PretrainSettings,
    TargetSettings,
)
from ssltk.specs import ComponentSpec, ObjectiveSpec

__all__ = ["DistillRun", "FinetuneRun", "PretrainRun", "distill_run", "finetune_run",
           "pretrain_run"]


class PretrainRun(PretrainSettings):
    """Everything that determines the weights a pretraining run ends with."""

    store: Path
    rows: list[int] | None = Field(default=None, description="Store rows to use (all if None).")
    backbone: ComponentSpec
    objective: ObjectiveSpec
    augmentations: list[ComponentSpec] | None = Field(
        default=None, description="View pipeline; None uses ssltk.augment.default_pipeline "
                                   "(DEFAULT_PIPELINE in 3D, DEFAULT_PIPELINE_2D in 2D).")
    seed: int = 0


class FinetuneRun(FinetuneSettings, TargetSettings):
    """Everything that determines a finetuning result."""

    identity_defaults: ClassVar[frozenset[str]] = frozenset({"features"})
    """Fields left out of :meth:`identity` while at their default: fields added after grid
    cells were first keyed, so every earlier cell keeps its key."""

    store: Path
    backbone: ComponentSpec
    encoder: Path | None = Field(default=None, description="Pretrained encoder; None = scratch.")
    mode: Literal["frozen", "full"] = "frozen"
    train_rows: list[int]
    val_rows: list[int]
    test_rows: list[int]
    seed: int = 0
    features: Literal["encoder", "raw_input"] = Field(
        default="encoder", description="What the frozen probe reads: the encoder's embeddings, "
                                       "or the input volume average-pooled to at most 4096 "
                                       "values (ssltk.engine.baselines.RawInput).")

    @model_validator(mode="after")
    def _raw_input_is_frozen(self) -> FinetuneRun:
        if self.features == "raw_input" and self.mode != "frozen":
            raise ValueError("features = 'raw_input' is a frozen probe; use mode = 'frozen'")
        return self

    def identity(self) -> dict:
        """The run as JSON without its encoder path (a grid cell names its encoder by the
        pretraining's content hash) and without the :attr:`identity_defaults` at default."""
        exclude = {"encoder"} | {name for name in self.identity_defaults
                                 if getattr(self, name) == type(self).model_fields[name].default}
        return self.model_dump(mode="json", exclude=exclude)


class DistillRun(DistillSettings, TargetSettings):
    """Everything that determines a distillation result (the teacher is given apart: it is a
    finetuning cell's model, identified by that cell)."""

    store: Path
    student: ComponentSpec
    encoder: Path | None = Field(default=None, description="Initial student encoder (init = "
                                                           "'pretrained'); None = random.")
    pool_rows: list[int] = Field(description="Rows the teacher labels and the student learns: "
                                             "the training pool, never a val or test row.")
    train_rows: list[int] = Field(description="The budget's labelled rows (within the pool).")
    val_rows: list[int]
    test_rows: list[int]
    seed: int = 0
    precision: Precision = "auto"
    augmentations: list[ComponentSpec] = Field(default_factory=list)


def pretrain_run(config: BenchmarkConfig, objective: ObjectiveSpec, *, store: str | Path,
                 augmentations: Sequence[ComponentSpec] | None, seed: int,
                 rows: Sequence[int] | None = None) -> PretrainRun:
    """The pretraining of ``objective`` on ``store`` with one view pipeline and seed.

    Args:
        config: the benchmark; gives the backbone and every ``[pretrain]`` setting.
        objective: one of ``config.pretrain.objectives``.
        store: one of ``config.data.pretrain_stores()``.
        augmentations: the view pipeline (None: ``ssltk.augment.default_pipeline``, which
            adds grey-level jitter in 2D).
        seed: the run's seed.
        rows: the store rows to pretrain on (None: every row).
    """
    return PretrainRun(store=store, backbone=config.backbone, objective=objective,
                       augmentations=None if augmentations is None else list(augmentations),
                       seed=seed, rows=None if rows is None else [int(r) for r in rows],
                       **config.pretrain.fields_of(PretrainSettings))


def finetune_run(config: BenchmarkConfig, rows: tuple[Sequence[int], Sequence[int], Sequence[int]],
                 mode: str, seed: int, encoder: str | Path | None = None) -> FinetuneRun:
    """The finetuning of one cell: train/val/test ``rows`` of ``config.data.finetune_store``.

    Args:
        config: the benchmark; gives the store, the target, the backbone and every
            ``[finetune]`` setting.
        rows: store rows of the (train, val, test) sides, e.g. ``Split.rows`` of
            :mod:`ssltk.bench.cohort`.
        mode: ``frozen`` or ``full``.
        seed: the cell's seed.
        encoder: a pretraining's ``encoder.pt`` (None: from scratch).
    """
    train, val, test = ([int(r) for r in side] for side in rows)
    return FinetuneRun(store=config.data.finetune_store, backbone=config.backbone,
                       encoder=encoder, mode=mode, train_rows=train, val_rows=val,
                       test_rows=test, seed=seed, **config.data.fields_of(TargetSettings),
                       **config.finetune.fields_of(FinetuneSettings))


def distill_run(config: BenchmarkConfig, teacher: FinetuneRun,
                pool_rows: Sequence[int]) -> DistillRun:
    """The distillation after the finetuning ``teacher``: its split, store and target, the
    ``[distill]`` settings, and ``pool_rows`` (store rows of the split's training pool).

    Args:
        config: the benchmark; ``config.distill`` must be set.
        teacher: the teacher cell's run (its val and test rows are the student's).
        pool_rows: every training-pool row of the teacher's (seed, repeat) split.
    """
    d = config.distill
    return DistillRun(store=teacher.store, student=d.student or teacher.backbone,
                      pool_rows=[int(r) for r in pool_rows], train_rows=teacher.train_rows,
                      val_rows=teacher.val_rows, test_rows=teacher.test_rows, seed=teacher.seed,
                      precision=teacher.precision, augmentations=teacher.augmentations,
                      **teacher.fields_of(TargetSettings), **d.fields_of(DistillSettings))
