"""Multitask: SSL loss + supervised heads, missing labels masked, weights, standardisation."""

from __future__ import annotations

import math

import pytest
import torch
from _tiny import IdentityBackbone, backbone, pretrain_steps, tiny_meta, tiny_volumes

from ssltk.errors import ConfigError
from ssltk.interfaces import Batch, Objective, ObjectiveOutput
from ssltk.registry import get_registry

pytestmark = pytest.mark.numerics


class ConstantSSL(Objective):
    """An SSL stand-in: loss 1.0 (with a zero-gradient path to the backbone), counts step ends."""

    name = "constant_ssl"
    n_views = 3
    needs_original = True

    def __init__(self, config, backbone, anchor=None, registry=None):
        super().__init__(config, backbone, anchor, registry)
        self.step_ends = 0

    def required_columns(self):
        return ("site",)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        loss = self.backbone(batch.views[0]).sum() * 0 + 1.0
        return ObjectiveOutput(loss=loss, logs={"loss": 1.0, "extra": 2.0})

    def on_step_end(self):
        self.step_ends += 1


@pytest.fixture(scope="module")
def registry():
    registry = get_registry()
    registry.add("objectives", ConstantSSL)
    return registry


AGE = {"column": "age", "kind": "regression", "weight": 2.0, "mean": 70.0, "std": 10.0}
SEX = {"column": "sex", "kind": "classification", "n_classes": 2, "weight": 0.5}


def hand_objective(registry, tasks, ssl_weight=0.5):
    """Multitask over ConstantSSL with heads set by hand: age = h0 + 2 h1, sex logits = h."""
    objective = registry.create(
        "objectives", "multitask",
        {"ssl": {"name": "constant_ssl"}, "ssl_weight": ssl_weight, "tasks": tasks},
        backbone=IdentityBackbone(), registry=registry)
    with torch.no_grad():
        for task, head in zip(objective.config.tasks, objective.heads, strict=True):
            head.bias.zero_()
            if task.kind == "regression":
                head.weight.copy_(torch.tensor([[1.0, 2.0]]))
            else:
                head.weight.copy_(torch.eye(2))
    return objective


H = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]).view(4, 1, 1, 2)


def hand_batch(age, sex):
    meta = {"age": torch.tensor(age), "sex": torch.tensor(sex, dtype=torch.int64)}
    return Batch(views=[H] * 3, meta=meta, generator=torch.Generator(), original=H)


def test_loss_masks_missing_labels_hand_computed(registry):
    objective = hand_objective(registry, [AGE, SEX])
    out = objective(hand_batch([80.0, float("nan"), 60.0, 90.0], [-1, 1, 0, -1]))
    # age: predictions (1, 2, 3, 2) vs standardised (1, -, -1, 2): squared errors 0, 16, 0
    age_loss = 16.0 / 3
    # sex: labelled rows 1 (logits (0, 1), class 1) and 2 (logits (1, 1), class 0)
    sex_loss = (math.log(1 + math.exp(-1)) + math.log(2)) / 2
    expected = 0.5 * 1.0 + 2.0 * age_loss + 0.5 * sex_loss
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.logs["loss_age"] == pytest.approx(age_loss, rel=1e-6)
    assert out.logs["loss_sex"] == pytest.approx(sex_loss, rel=1e-6)
    assert out.logs["acc_sex"] == 1.0  # row 1: class 1; row 2: a tie, argmax picks class 0
    assert out.logs["loss_ssl"] == 1.0 and out.logs["ssl_extra"] == 2.0


def test_a_task_without_labels_adds_zero(registry):
    objective = hand_objective(registry, [AGE, SEX])
    out = objective(hand_batch([float("nan")] * 4, [-1] * 4))
    assert out.loss.item() == pytest.approx(0.5)
    assert out.logs["loss_age"] == 0.0 and out.logs["loss_sex"] == 0.0
    out.loss.backward()
    for head in objective.heads:  # still in the graph (DDP), with a zero gradient
        assert head.weight.grad is not None and not head.weight.grad.any()


def test_weights(registry):
    batch = hand_batch([80.0, 70.0, 60.0, 90.0], [0, 1, 0, 1])
    full = hand_objective(registry, [AGE, SEX])(batch)
    no_sex = hand_objective(registry, [AGE, {**SEX, "weight": 0.0}])(batch)
    no_ssl = hand_objective(registry, [AGE, SEX], ssl_weight=0.0)(batch)
    assert full.loss.item() == pytest.approx(no_sex.loss.item() + 0.5 * full.logs["loss_sex"])
    assert no_ssl.loss.item() == pytest.approx(full.loss.item() - 0.5)


def test_unstandardised_regression(registry):
    task = {"column": "age", "kind": "regression", "standardize": False}
    objective = hand_objective(registry, [task], ssl_weight=0.0)
    out = objective(hand_batch([1.0, 2.0, 3.0, float("nan")], [0] * 4))
    assert out.loss.item() == pytest.approx((0 + 0 + 0) / 3)  # predictions 1, 2, 3 are exact


def test_running_standardisation_sees_every_label(registry):
    task = {"column": "age", "kind": "regression"}
    objective = hand_objective(registry, [task])
    ages = [[60.0, float("nan"), 70.0, 75.0], [80.0, 81.0, float("nan"), 62.0]]
    for age in ages:
        objective(hand_batch(age, [0] * 4))
    seen = torch.tensor([a for batch in ages for a in batch if not math.isnan(a)],
                        dtype=torch.float64)
    count, mean, m2 = objective.stats_0.tolist()
    assert count == 6 and mean == pytest.approx(seen.mean().item())
    assert (m2 / count) ** 0.5 == pytest.approx(seen.std(unbiased=False).item())
    objective.eval()
    objective(hand_batch([100.0] * 4, [0] * 4))
    assert objective.stats_0[0].item() == 6  # evaluation does not move the statistics


def test_views_original_columns_and_step_end_follow_the_inner_objective(registry):
    objective = hand_objective(registry, [AGE, SEX])
    assert (objective.n_views, objective.needs_original) == (3, True)
    assert objective.required_columns() == ("age", "sex", "site")
    objective.on_step_end()
    assert objective.ssl.step_ends == 1


@pytest.mark.parametrize("ssl,n_views", [({"name": "simclr"}, 2), ({"name": "genesis"}, 1)])
def test_trains_with_real_objectives(registry, ssl, n_views):
    torch.manual_seed(0)
    config = {"ssl": ssl, "tasks": [{"column": "age", "kind": "regression"}, SEX]}
    objective = registry.create("objectives", "multitask", config,
                                backbone=backbone(registry, 2), registry=registry)
    assert objective.n_views == n_views
    meta = {**tiny_meta(8), "sex": torch.tensor([0, 1, -1, 1, 0, 1, 0, 1])}
    losses = pretrain_steps(objective, tiny_volumes(8, 2, 32), meta, steps=12, lr=3e-3)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) < sum(losses[:4])


@pytest.mark.parametrize("params,match", [
    ({"tasks": [{"column": "sex", "kind": "classification"}]}, "n_classes"),
    ({"tasks": [{"column": "age", "kind": "regression", "n_classes": 3}]}, "n_classes"),
    ({"tasks": [{"column": "age", "kind": "regression", "mean": 3.0}]}, "both"),
    ({"tasks": [{"column": "age", "kind": "regression"}] * 2}, "twice"),
    ({"ssl": {"temperature": 0.1}}, "name"),
    ({"tasks": [{"column": "age", "kind": "regresion"}]}, "tasks"),
])
def test_config_errors(registry, params, match):
    with pytest.raises(ConfigError, match=match):
        registry.config("objectives", "multitask", params)


@pytest.mark.parametrize("ssl,match", [
    ({"name": "simclrr"}, "Did you mean 'simclr'"),
    ({"name": "simclr", "temprature": 0.1}, r"multitask\.ssl\.temprature"),
    ({"name": "simclr", "anchor": {"name": "rbf"}}, "takes no anchor"),
    ({"name": "multitask"}, "cannot wrap itself"),
])
def test_inner_objective_errors(registry, ssl, match):
    with pytest.raises(ConfigError, match=match):
        registry.create("objectives", "multitask", {"ssl": ssl},
                        backbone=IdentityBackbone(), registry=registry)


def test_check_nested_reports_the_toml_path(registry):
    cls = registry.get("objectives", "multitask")
    config = registry.config("objectives", "multitask", {"ssl": {"name": "simclr", "tau": 1}})
    with pytest.raises(ConfigError, match=r"pretrain\.objectives\[0\]\.ssl\.tau"):
        cls.check_nested(config, registry, "pretrain.objectives[0]")


def test_class_codes_beyond_n_classes_are_an_error(registry):
    objective = hand_objective(registry, [SEX])
    with pytest.raises(ConfigError, match="n_classes = 2"):
        objective(hand_batch([0.0] * 4, [0, 1, 2, -1]))
