"""From a benchmark TOML to runs: every setting reaches the run, with one default."""

from __future__ import annotations

import tomllib

import pytest

from ssltk.config import (
    BenchmarkConfig,
    FinetuneConfig,
    FinetuneSettings,
    PretrainConfig,
    PretrainSettings,
    TargetSettings,
    load_config,
)
from ssltk.engine import FinetuneRun, PretrainRun, finetune_run, pretrain_run

FINETUNE = {
    "epochs": 7, "batch_size": 3, "lr": 0.5, "encoder_lr_ratio": 0.25, "weight_decay": 0.03,
    "patience": 2, "class_weighting": True, "precision": "bf16",
    "augmentations": [{"name": "flip", "p": 0.5}],
}
"""A value other than the default for every finetuning setting (the TOML's spelling)."""

PRETRAIN = {
    "epochs": 3, "batch_size": 4, "precision": "fp32", "channels_last": True,
    "optimizer": {"name": "lars", "lr": 0.3, "weight_decay": 1e-6, "warmup_epochs": 1.0},
    "monitor": {"every": 2, "size": 64, "target": "sex", "classes": ["F", "M"], "knn_k": 5},
}
"""A value other than the default for every pretraining setting."""

TARGET = {"target": "age", "task": "regression", "classes": ["MCI", "AD"]}
"""A value other than the tiny benchmark's or the default for every target setting."""

ROWS = ([0, 1, 2], [3], [4, 5])


@pytest.fixture
def config_with(tmp_path, make_benchmark):
    """``config_with(table, values)``: the tiny benchmark of tests/conftest.py with ``values``
    set in ``[table]``, read through load_config as a user's file."""

    def make(table: str, values: dict, **tables: dict) -> BenchmarkConfig:
        path = make_benchmark(tmp_path / "runs.toml", "fine.h5", **{table: values}, **tables)
        tomllib.loads(path.read_text())
        return load_config(path)

    return make


def dumped(model, base) -> dict:
    return {k: v for k, v in model.model_dump(mode="json").items() if k in base.model_fields}


def test_the_test_values_cover_every_setting():
    assert set(FINETUNE) == set(FinetuneSettings.model_fields)
    assert set(PRETRAIN) == set(PretrainSettings.model_fields)
    assert set(TARGET) == set(TargetSettings.model_fields)
    assert {"weight_decay", "precision", "batch_size"} <= set(FinetuneSettings.model_fields)


def test_every_finetune_setting_of_the_toml_reaches_the_run(config_with):
    config = config_with("finetune", FINETUNE)
    run = finetune_run(config, ROWS, "full", seed=5)
    assert dumped(run, FinetuneSettings) == FINETUNE
    assert (run.train_rows, run.val_rows, run.test_rows) == tuple(ROWS)
    assert run.mode == "full" and run.seed == 5 and run.encoder is None


def test_every_target_setting_of_the_toml_reaches_the_run(config_with):
    # a regression target takes budgets in subjects, not per class
    config = config_with("data", TARGET, finetune={"n_per_class": None, "n_total": [4]})
    run = finetune_run(config, ROWS, "frozen", seed=0)
    assert dumped(run, TargetSettings) == TARGET
    assert run.store == config.data.finetune_store and run.backbone == config.backbone


def test_every_pretrain_setting_of_the_toml_reaches_the_run(config_with):
    config = config_with("pretrain", PRETRAIN)
    run = pretrain_run(config, config.pretrain.objectives[0], store="pre.h5",
                       augmentations=None, seed=2)
    got = dumped(run, PretrainSettings)
    got["optimizer"] = {k: got["optimizer"][k] for k in PRETRAIN["optimizer"]}
    got["monitor"] = {k: got["monitor"][k] for k in PRETRAIN["monitor"]}
    assert got == PRETRAIN
    assert run.seed == 2 and run.objective.name == "simclr" and run.augmentations is None


@pytest.mark.parametrize("table, run, base", [
    (FinetuneConfig, FinetuneRun, FinetuneSettings),
    (PretrainConfig, PretrainRun, PretrainSettings),
])
def test_the_toml_and_the_run_have_the_same_defaults(table, run, base):
    for name in base.model_fields:
        toml_default = table.model_fields[name].get_default(call_default_factory=True)
        run_default = run.model_fields[name].get_default(call_default_factory=True)
        assert toml_default == run_default, name


def test_a_run_from_a_toml_without_settings_equals_a_run_built_by_hand(config_with):
    config = config_with("finetune", {})
    by_hand = FinetuneRun(store="fine.h5", target="diagnosis", classes=["CN", "AD"],
                          backbone=config.backbone, train_rows=ROWS[0], val_rows=ROWS[1],
                          test_rows=ROWS[2])
    assert finetune_run(config, ROWS, "frozen", seed=0) == by_hand
    assert finetune_run(config, ROWS, "frozen", seed=0).batch_size == 16


DISTILL = {"temperature": 3.0, "epochs": 4, "batch_size": 5, "lr": 0.2, "weight_decay": 0.01,
           "patience": 3, "label_weight": 0.5, "init": "pretrained"}
"""A value other than the default for every distillation setting."""


def test_every_distill_setting_of_the_toml_reaches_the_run(config_with):
    from ssltk.config import DistillSettings
    from ssltk.engine import distill_run

    assert set(DISTILL) == set(DistillSettings.model_fields)
    config = config_with("distill", DISTILL | {"modes": ["frozen"]})  # the tiny grid's mode
    teacher = finetune_run(config, ROWS, "full", seed=3)
    run = distill_run(config, teacher, [0, 1, 2, 9])
    assert dumped(run, DistillSettings) == DISTILL
    assert run.pool_rows == [0, 1, 2, 9] and run.student == config.backbone
    assert (run.train_rows, run.val_rows, run.test_rows) == tuple(ROWS) and run.seed == 3
    assert (run.precision, run.augmentations) == (teacher.precision, teacher.augmentations)
