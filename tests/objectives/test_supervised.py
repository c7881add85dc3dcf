"""Supervised pretraining on metadata: hand-computed losses, masking, standardisation, errors,
and a tiny benchmark from a TOML through the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _tiny import IdentityBackbone
from torch import Tensor
from typer.testing import CliRunner

from ssltk.errors import ConfigError
from ssltk.interfaces import Batch
from ssltk.registry import get_registry

pytestmark = pytest.mark.numerics

# The representation of each sample is its two "pixels": h = x.
H = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 2.0], [2.0, 0.0]])
AGE = torch.tensor([70.0, 80.0, float("nan"), 60.0])  # third missing
SEX = torch.tensor([-1, 0, 1, 1])  # first missing


@pytest.fixture(scope="module")
def registry():
    return get_registry()


def hand_objective(registry, tasks):
    """The objective with heads set by hand: age = h0 + 2 h1, sex logits = h."""
    objective = registry.create("objectives", "supervised", {"tasks": tasks},
                                backbone=IdentityBackbone(), registry=registry)
    with torch.no_grad():
        for task, head in zip(objective.config.tasks, objective.heads, strict=True):
            head.bias.zero_()
            head.weight.copy_(torch.tensor([[1.0, 2.0]]) if task.kind == "regression"
                              else torch.eye(2))
    return objective


def batch(h: Tensor = H, **meta) -> Batch:
    return Batch(views=[h.view(-1, 1, 1, 2)], meta=meta or {"age": AGE, "sex": SEX})


AGE_FIXED = {"column": "age", "kind": "regression", "mean": 70.0, "std": 10.0}
SEX_TASK = {"column": "sex", "kind": "classification", "n_classes": 2}


def test_weighted_mse_and_cross_entropy_hand_computed(registry):
    """Predictions 1, 2, (5), 2 against standardised ages 0, 1, (missing), -1: errors 1, 1, 3;
    sex logits [0, 1] -> 0, [1, 2] -> 1, [2, 0] -> 1, the first sample's sex missing."""
    tasks = [{**AGE_FIXED, "weight": 2.0}, {**SEX_TASK, "weight": 0.5}]
    out = hand_objective(registry, tasks)(batch())
    mse = (1 + 1 + 9) / 3
    ce = (math.log(1 + math.e) + (math.log(math.e + math.e**2) - 2)
          + math.log(math.e**2 + 1)) / 3
    assert float(out.loss.detach()) == pytest.approx(2.0 * mse + 0.5 * ce, rel=1e-6)
    assert float(out.logs["loss_age"]) == pytest.approx(mse, rel=1e-6)
    assert float(out.logs["loss_sex"]) == pytest.approx(ce, rel=1e-6)
    # In years: predictions 80, 90, 90 against 70, 80, 60.
    assert float(out.logs["mae_age"]) == pytest.approx((10 + 10 + 30) / 3, rel=1e-6)
    assert float(out.logs["acc_sex"]) == pytest.approx(1 / 3)
    assert out.embeddings is None


@pytest.mark.parametrize("beta, expected", [
    (1.0, (0.5 + 0.5 + 2.5) / 3),      # |e| = 1 is not < 1: linear, |e| - 0.5
    (2.0, (0.25 + 0.25 + 2.0) / 3),    # 0.5 e^2 / 2 for |e| = 1, |e| - 1 for |e| = 3
])
def test_smooth_l1_hand_computed(registry, beta, expected):
    tasks = [{**AGE_FIXED, "loss": "smooth_l1", "beta": beta}]
    out = hand_objective(registry, tasks)(batch(age=AGE))
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-6)


def test_missing_labels_are_masked(registry):
    """A sample without a label changes nothing, whatever its image; no label at all adds 0."""
    objective = hand_objective(registry, [AGE_FIXED, SEX_TASK])
    base = objective(batch())
    for row, unchanged in ((2, "loss_age"), (0, "loss_sex")):  # row 2: no age, row 0: no sex
        moved = H.clone()
        moved[row] = torch.tensor([100.0, -50.0])
        out = objective(batch(moved))
        assert float(out.logs[unchanged]) == pytest.approx(float(base.logs[unchanged]), rel=1e-6)
        # the other task sees the moved sample
        assert float(out.loss.detach()) != pytest.approx(float(base.loss.detach()), rel=1e-3)
    empty = objective(batch(age=torch.full((4,), float("nan")), sex=torch.full((4,), -1)))
    assert float(empty.loss.detach()) == 0.0 and empty.loss.requires_grad
    empty.loss.backward()  # the heads stay in the graph (DDP needs every parameter)
    assert all(p.grad is not None for p in objective.heads.parameters())
    assert "mae_age" not in empty.logs and "acc_sex" not in empty.logs


def test_running_standardisation_is_the_labels_mean_and_std(registry):
    objective = hand_objective(registry, [{"column": "age", "kind": "regression"}])
    objective.train()
    out = objective(batch(age=AGE))
    ages = np.array([70.0, 80.0, 60.0])
    target = (ages - ages.mean()) / ages.std()  # population std, as the running statistics
    pred = np.array([1.0, 2.0, 2.0])  # samples 0, 1 and 3
    assert float(out.loss.detach()) == pytest.approx(float(np.mean((pred - target) ** 2)), rel=1e-5)
    count, mean, m2 = objective.stats_0.tolist()
    assert (count, mean) == (3, pytest.approx(70.0)) and m2 == pytest.approx(200.0)
    objective.eval()  # evaluation does not update the statistics
    objective(batch(age=torch.tensor([1.0, 2.0, 3.0, 4.0])))
    assert objective.stats_0[0] == 3


def test_unstandardised_regression(registry):
    tasks = [{"column": "age", "kind": "regression", "standardize": False}]
    out = hand_objective(registry, tasks)(batch(age=torch.tensor([1.0, 0.0, 5.0, 4.0])))
    assert float(out.loss.detach()) == pytest.approx((0 + 4 + 0 + 4) / 4, rel=1e-6)


def test_original_input_reads_the_unaugmented_batch(registry):
    tasks = [AGE_FIXED]
    augmented = hand_objective(registry, tasks)
    original = registry.create("objectives", "supervised", {"tasks": tasks, "input": "original"},
                               backbone=IdentityBackbone(), registry=registry)
    original.load_state_dict(augmented.state_dict())
    assert original.needs_original and not augmented.needs_original
    noise = torch.full((4, 1, 1, 2), 9.0)
    both = Batch(views=[noise], meta={"age": AGE}, original=H.view(-1, 1, 1, 2))
    assert float(original(both).loss.detach()) == pytest.approx((1 + 1 + 9) / 3, rel=1e-6)
    assert float(augmented(both).loss.detach()) != pytest.approx((1 + 1 + 9) / 3, rel=1e-3)
    with pytest.raises(ConfigError, match="un-augmented batch"):
        original(batch(age=AGE))


def test_default_is_age_regression_with_one_view(registry):
    cls = registry.get("objectives", "supervised")
    objective = registry.create("objectives", "supervised", {}, backbone=IdentityBackbone(),
                                registry=registry)
    assert objective.required_columns() == ("age",) and cls.n_views == 1
    assert not cls.uses_anchor


@pytest.mark.parametrize("params, match", [
    ({"tasks": [{"column": "sex", "kind": "classification"}]}, "needs n_classes"),
    ({"tasks": [{"column": "age", "kind": "regression", "n_classes": 3}]}, "classification only"),
    ({"tasks": [{"column": "age", "kind": "regression", "loss": "cross_entropy"}]}, "mse"),
    ({"tasks": [{**SEX_TASK, "loss": "mse"}]}, "cross_entropy"),
    ({"tasks": [{"column": "age", "kind": "regression", "mean": 3.0}]}, "both mean and std"),
    ({"tasks": [AGE_FIXED, AGE_FIXED]}, "appears twice"),
    ({"tasks": [{**AGE_FIXED, "weight": 0.0}]}, "weight > 0"),
    ({"tasks": []}, "at least 1"),
    ({"tasks": [{**AGE_FIXED, "colum": "age"}]}, "colum"),
])
def test_config_errors(registry, params, match):
    with pytest.raises(ConfigError, match=match):
        registry.create("objectives", "supervised", params, backbone=IdentityBackbone(),
                        registry=registry)


@pytest.mark.parametrize("tasks, meta, match", [
    ([AGE_FIXED], {"sex": SEX}, "no column 'age'"),
    ([{"column": "sex", "kind": "regression"}], {"sex": SEX}, "categorical; use kind = "
                                                              "'classification'"),
    ([{"column": "age", "kind": "classification", "n_classes": 2}], {"age": AGE},
     "continuous; use kind = 'regression'"),
    ([{**SEX_TASK, "n_classes": 2}], {"sex": torch.tensor([0, 1, 2, 1])}, "has code 2"),
])
def test_batch_errors_name_the_task(registry, tasks, meta, match):
    objective = hand_objective(registry, tasks)
    with pytest.raises(ConfigError, match=match):
        objective(batch(**meta))


def test_an_anchor_is_refused(registry):
    anchor = registry.create("anchors", "rbf", {"columns": ["age"], "sigma": 5.0})
    with pytest.raises(ConfigError, match="takes no anchor"):
        registry.create("objectives", "supervised", {}, backbone=IdentityBackbone(),
                        anchor=anchor, registry=registry)


TOML = """
name = "sup"
output_dir = "{out}"
seeds = [0]
devices = "cpu"

[data]
pretrain_store = "{store}"
finetune_store = "{store}"
target = "diagnosis"
classes = ["CN", "AD"]

[backbone]
name = "resnet10"
widen_factor = 0.25
norm = "group"

[pretrain]
epochs = 2
batch_size = 8
augmentations = [{{name = "flip", p = 0.5}}]
objectives = [
    {{name = "supervised", tasks = [
        {{column = "age", kind = "regression", loss = "smooth_l1", weight = 1.0}},
        {{column = "sex", kind = "classification", n_classes = 2, weight = 0.5}},
    ]}},
]

[finetune]
modes = ["frozen"]
n_per_class = [4]
repeats = 2
val_fraction = 0.25
test_fraction = 0.25
baselines = ["random_init"]
"""


def test_a_benchmark_row_from_a_toml_through_the_cli(tmp_path, make_tiny_store):
    from ssltk.bench.results import read_results
    from ssltk.cli import app

    store = make_tiny_store(tmp_path / "tiny.h5", (1, 16, 16, 16), n=24)
    cfg = tmp_path / "sup.toml"
    cfg.write_text(TOML.format(out=tmp_path / "runs", store=store))
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 0, result.output
    root = tmp_path / "runs" / "sup"
    records = read_results(root / "results.jsonl")
    assert sorted(r["method"] for r in records) == ["scratch"] * 2 + ["supervised"] * 2
    assert {r["pretrain"]["objective"] for r in records if r["pretrain"]} == {"supervised"}
    history = [json.loads(line) for line in
               next((root / "pretrain").glob("supervised-*/history.jsonl")).read_text()
               .splitlines()]
    history = [h for h in history if "loss" in h]  # not the random-init monitor record
    assert len(history) == 2
    assert all(math.isfinite(h[k]) for h in history for k in ("loss", "mae_age", "acc_sex")), \
        history
    assert "| supervised |" in (root / "report.md").read_text()
